"""`python -m mnist_arch.predict`: digits read by a trained net; the command is mnist_arch/commands/predict.py (this name is the one
users type)."""
from mnist_arch.commands.predict import main

if __name__ == "__main__":
    main()
