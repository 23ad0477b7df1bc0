"""The leaderboard of every `summary.json` beneath a folder (mnist_arch/results/leaderboard.py), as markdown and CSV.

    python -m mnist_arch.report outputs/multirun/2026-11-22/10-00-00
    python -m mnist_arch.report outputs --csv board.csv
    python -m mnist_arch.report outputs --plot pareto.png        # accuracy against parameters
    python -m mnist_arch.report outputs --plot pareto.png --ymin 98.8   # the axis from 98.8%
    python -m mnist_arch.report outputs/search/speedrun --plot front.png --x train_seconds

Jobs that differ only in `seed` form one row, best first; jobs that did not complete are listed below the
table. A summary.json that cannot be read is named on stderr, and the command exits 1.
"""
import sys
from pathlib import Path
from typing import List, Optional

from mnist_arch.cli import Parser, command
from mnist_arch.errors import ConfigError
from mnist_arch.results.leaderboard import METRICS, X_AXES, load, write
from mnist_arch.results.record import FILE_NAME


@command
def main(argv: Optional[List[str]] = None) -> None:
    parser = Parser(prog="python -m mnist_arch.report", description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="a sweep dir, or any folder with run dirs beneath it")
    parser.add_argument("--csv", type=Path, default=None, help="where the CSV goes (default: <root>/leaderboard.csv)")
    parser.add_argument("--plot", type=Path, default=None, help="also draw accuracy against parameters (a PNG)")
    parser.add_argument("--metric", choices=list(METRICS), default="test",
                        help="the accuracy the plot shows (default: test acc, the final score of each run)")
    parser.add_argument("--ymin", type=float, default=None,
                        help="bottom of the plot's accuracy axis, in percent (points below it sit on the edge)")
    parser.add_argument("--x", choices=list(X_AXES), default="params", help="the plot's cost axis (default: params)")
    args = parser.parse_args(argv)
    if not args.root.is_dir():
        raise ConfigError(f"{args.root}: not a folder")
    records = load(args.root)
    if not records:
        raise ConfigError(f"{args.root}: no {FILE_NAME} beneath it")
    text, _ = write(args.root, args.csv, args.plot, args.metric, args.ymin, args.x)
    print(text + (f"\n\nplot: {args.plot}" if args.plot else ""))
    unreadable = [r for r in records if r.status == "unreadable"]
    for record in unreadable:  # listed on the board too; here each is one line, and the exit says so
        print(f"error: {record.error}", file=sys.stderr)
    if unreadable:
        sys.exit(1)


if __name__ == "__main__":
    main()
