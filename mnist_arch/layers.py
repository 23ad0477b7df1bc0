"""`python -m mnist_arch.layers`: the layer table; the command is mnist_arch/commands/layers.py (this name is the one
users type)."""
from mnist_arch.commands.layers import main

if __name__ == "__main__":
    main()
