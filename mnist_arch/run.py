"""`python -m mnist_arch.run`: training: one run, or a sweep with -m; the command is mnist_arch/commands/run.py (this name is the one
users type)."""
from mnist_arch.commands.run import main

if __name__ == "__main__":
    main()
