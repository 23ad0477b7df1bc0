"""`python -m mnist_arch.evaluate`: a trained net scored again; the command is mnist_arch/commands/evaluate.py (this name is the one
users type)."""
from mnist_arch.commands.evaluate import main

if __name__ == "__main__":
    main()
