"""`python -m mnist_arch.summary <overrides>`: the layer table of a net (mnist_arch/layers.py), under
the name the command has always had. Trains nothing, writes nothing; exits 1 when the net breaks a rule."""
from mnist_arch.layers import main

if __name__ == "__main__":
    main()
