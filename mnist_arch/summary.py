"""`python -m mnist_arch.summary`: the layer table under its old name; the command is mnist_arch/commands/layers.py."""
from mnist_arch.commands.layers import main

if __name__ == "__main__":
    main()
