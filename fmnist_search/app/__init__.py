"""The application layer: what each command does, between the command line and the search.

It prints nothing and returns data: messages go to a ``say`` callable and progress to a
``Progress``, both the CLI's. ``options`` declares the option groups the commands share;
``studies`` creates, resumes and works on studies (here or in worker processes);
``results`` reads them back (tables, CSV, the report, plots); ``models`` trains, evaluates
and predicts with one configuration; ``serve`` runs optuna-dashboard.
"""
