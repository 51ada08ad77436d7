"""fmnist-search: hyperparameter search for Fashion-MNIST classifiers on Optuna."""

__version__ = "0.1.0"
