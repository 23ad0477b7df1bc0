"""`python -m mnist_arch.report`: the leaderboard; the command is mnist_arch/commands/report.py (this name is the one
users type)."""
from mnist_arch.commands.report import main

if __name__ == "__main__":
    main()
