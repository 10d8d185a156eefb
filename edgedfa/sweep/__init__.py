"""Design-space sweeps (``edgedfa sweep``): a spec of axes, trials on a process pool or a
Dask cluster, results appended one line per finished trial, resumable.

``spec`` parses the spec and plans the trials, ``trial`` runs one (train, then emulate),
``results`` holds the results file, ``executors`` the local pool and the Dask client,
``search`` the random and model-based (Optuna) searches, ``run`` the driver.
"""
