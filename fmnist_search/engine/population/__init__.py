"""The training loop: one model, or K models with their own hyperparameters trained as one on the same batches.

Every training run goes through ``fit_population``: a single trial, a teacher and
``fmnist-search train`` are a population of one (``train.fit``), which trains its own module
in place ("plain"), with the same batches, loss, distillation term, SGD update, lr table and
evaluation as K stacked models; only the forward differs.

Why stack K:

One LeNet step at batch 256 is ~90 small kernels; on a GPU it is bound by their launches,
not by arithmetic. Stacking K models (HFTA, Wang et al., MLSys 2021) makes each launch do
K times the work: convolutions become one grouped convolution (a dense one for the first
layer, whose input is shared), linear layers batched matmuls, BatchNorm one layer over K x C
channels (per-model statistics by construction). The loss is the sum of the K models' mean
losses, so model k's gradients are exactly those of training it alone; SGD runs on the
stacked tensors with per-model lr (a per-model schedule table on the device), momentum,
Nesterov and weight decay. Model k of a population equals model k trained alone by ``fit``
with the same seed and data order (tested in float64).

The state is a dict of tensors with a leading model dimension, keyed like the model's own
``state_dict`` (``torch.func.stack_module_state``'s layout), so dropping models is indexing
and a model's weights come back out as a plain module. Two forwards over that state:
``fused`` (explicit grouped ops, for ``nn.Sequential`` models of the layer kinds below) and
``vmap`` (``torch.func.functional_call`` under ``vmap``, any model: the ResNets). What it
buys, by K and device: docs/results.md and benchmarks/results/.

What a population shares (the batch, so batch size and augmentation; precision; the teacher
and the data order) is the caller's to group by: ``shared_key``. Per model: lr, momentum,
Nesterov, weight decay, label smoothing, schedule, warm-up, epochs, flip TTA, distillation
weight and temperature, and the weights' seed.
"""

from ._batches import Batch, GraphedStep, SharedBatches, order_seed
from ._evaluation import evaluate_all, log_probs
from ._forwards import Forward, fused_forward, make_forward, plain_forward, stack, unstack, unwrapped, vmap_forward
from ._loop import DEFAULT_POPULATION, default_population, fit_population, shared_key
from ._members import Diverged, EpochHook, EpochMetrics, FitResult, Member, PopulationStats, Snapshot, SnapshotHook
from ._stack import Stack
from ._update import SGD, LossScale, PerModel, lr_table

__all__ = [
    "DEFAULT_POPULATION",
    "SGD",
    "Batch",
    "Diverged",
    "EpochHook",
    "EpochMetrics",
    "FitResult",
    "Forward",
    "GraphedStep",
    "LossScale",
    "Member",
    "PerModel",
    "PopulationStats",
    "SharedBatches",
    "Snapshot",
    "SnapshotHook",
    "Stack",
    "default_population",
    "evaluate_all",
    "fit_population",
    "fused_forward",
    "log_probs",
    "lr_table",
    "make_forward",
    "order_seed",
    "plain_forward",
    "shared_key",
    "stack",
    "unstack",
    "unwrapped",
    "vmap_forward",
]
