"""`python -m mnist_arch.serve`: the drawing page; the command is mnist_arch/commands/serve.py (this name is the one
users type)."""
from mnist_arch.commands.serve import main

if __name__ == "__main__":
    main()
