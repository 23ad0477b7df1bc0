"""`python -m mnist_arch.search`: the command is mnist_arch/commands/search.py."""
from mnist_arch.commands.search import main

if __name__ == "__main__":
    main()
