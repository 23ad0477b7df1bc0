"""One training run: the LightningModule (module.py), the callbacks that enforce the rules and keep the run
(callbacks.py), and the run itself, from a config to its record (job.py)."""
