"""`python -m mnist_arch.summary`: the layer table's command under its old name (mnist_arch/layers.py)."""
from mnist_arch.layers import main

if __name__ == "__main__":
    main()
