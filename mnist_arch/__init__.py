"""mnist_arch: design, train and compare small CNN architectures on MNIST under hard budgets."""
__version__ = "0.1.0"
