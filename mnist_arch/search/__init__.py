"""The architecture search: an Optuna study shared by workers (study.py), one trial and the confirm runs
(objective.py), the command (command.py; python -m mnist_arch.search). The space itself is config
(mnist_arch/search/space.py)."""
