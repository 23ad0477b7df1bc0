"""`python -m mnist_arch.export`: a trained net shipped; the command is mnist_arch/commands/export.py (this name is the one
users type)."""
from mnist_arch.commands.export import main

if __name__ == "__main__":
    main()
