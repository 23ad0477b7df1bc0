"""`python -m mnist_arch.search`: the command is mnist_arch/commands/search.py."""
from mnist_arch.commands.search import main

main()
