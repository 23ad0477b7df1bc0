"""`python -m mnist_arch.lr_find`: the learning-rate range test; the command is mnist_arch/commands/lr_find.py (this name is the one
users type)."""
from mnist_arch.commands.lr_find import main

if __name__ == "__main__":
    main()
