"""python -m mnist_arch.search: the command (mnist_arch/search/command.py)."""
from mnist_arch.search.command import main

main()
