"""The architecture search: a space turned into a trial's overrides (space.py), an Optuna study shared by
workers (study.py), one trial and the confirm runs (objective.py), the command (command.py; python -m
mnist_arch.search)."""
