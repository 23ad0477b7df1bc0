"""`python -m mnist_arch.data`: the command is mnist_arch/commands/data.py."""
import sys

from mnist_arch.commands.data import main

if __name__ == "__main__":
    sys.exit(main())
