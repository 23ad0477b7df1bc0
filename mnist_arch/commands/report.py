"""The leaderboard of every `summary.json` beneath a folder (mnist_arch/results/leaderboard.py), as markdown and CSV.

    python -m mnist_arch.report outputs/multirun/2026-11-22/10-00-00
    python -m mnist_arch.report outputs --csv board.csv
    python -m mnist_arch.report outputs --plot pareto.png        # accuracy against parameters
    python -m mnist_arch.report outputs --plot pareto.png --ymin 98.8   # the axis from 98.8%
    python -m mnist_arch.report outputs/search/speedrun --plot front.png --x train_seconds
    python -m mnist_arch.report --compare outputs/multirun/A outputs/multirun/B   # is A better than B?
    python -m mnist_arch.report --compare outputs/multirun/sweep#1 outputs/multirun/sweep#2 --json

--compare takes two run dirs or sweep dirs (a sweep's seeds of one setting; `DIR#N` is row N of DIR's
leaderboard) and answers with a paired test on the same images and seeds (docs/selection.md).

Jobs that differ only in `seed` form one row, best first; jobs that did not complete are listed below the
table. A summary.json that cannot be read is named on stderr, and the command exits 1.
"""
import json
import sys
from pathlib import Path
from typing import List, Optional

from mnist_arch.cli import Parser, command
from mnist_arch.errors import ConfigError, printable
from mnist_arch.results import compare
from mnist_arch.results.leaderboard import METRICS, X_AXES, leaderboard, protocol, read_records, write
from mnist_arch.results.record import FILE_NAME, RunRecord


@command
def main(argv: Optional[List[str]] = None) -> None:
    parser = Parser(prog="python -m mnist_arch.report", description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, nargs="?", help="a sweep dir, or any folder with run dirs beneath it")
    parser.add_argument("--compare", nargs=2, metavar=("A", "B"), default=None,
                        help="compare two designs: run dirs, sweep dirs of one setting, or DIR#N (row N of DIR's board)")
    parser.add_argument("--split", choices=["val", "test"], default="val",
                        help="--compare on the validation images (default: selection never reads a test score) or "
                             "the 10k test set (a confirm table)")
    parser.add_argument("--json", action="store_true", help="--compare: print one JSON object instead of the sentence")
    parser.add_argument("--csv", type=Path, default=None, help="where the CSV goes (default: <root>/leaderboard.csv)")
    parser.add_argument("--plot", type=Path, default=None, help="also draw accuracy against parameters (a PNG)")
    parser.add_argument("--metric", choices=list(METRICS), default="test",
                        help="the accuracy the plot shows (default: test acc, the final score of each run)")
    parser.add_argument("--ymin", type=float, default=None,
                        help="bottom of the plot's accuracy axis, in percent (points below it sit on the edge)")
    parser.add_argument("--x", choices=list(X_AXES), default="params", help="the plot's cost axis (default: params)")
    args = parser.parse_args(argv)
    if args.compare:
        if args.root is not None:
            raise ConfigError("--compare A B takes no other folder (see python -m mnist_arch.report --help)")
        print(printable(compare_command(*args.compare, split=args.split, as_json=args.json)))
        return
    if args.root is None:
        raise ConfigError("a folder is needed: python -m mnist_arch.report <folder> (or --compare A B)")
    if not args.root.is_dir():
        raise ConfigError(f"{args.root}: not a folder")
    records = read_records(args.root)
    if not records:
        raise ConfigError(f"{args.root}: no {FILE_NAME} beneath it")
    text, _ = write(args.root, args.csv, args.plot, args.metric, args.ymin, args.x)
    print(printable(text) + (f"\n\nplot: {args.plot}" if args.plot else ""))  # a record's text may hold escapes
    unreadable = [r for r in records if r.status == "unreadable"]
    for record in unreadable:  # listed on the board too; here each is one line, and the exit says so
        print(f"error: {printable(record.error)}", file=sys.stderr)
    if unreadable:
        sys.exit(1)


def design(given: str) -> List[RunRecord]:
    """The completed runs of one design: a run dir, a sweep dir whose runs share one setting, or DIR#N."""
    folder, _, row = given.rpartition("#") if "#" in given else (given, "", "")
    path = Path(folder)
    if not path.is_dir():
        raise ConfigError(f"{given}: not a folder")
    records = [r for r in read_records(path) if r.status == "completed"]
    if not records:
        raise ConfigError(f"{given}: no completed run ({FILE_NAME}) beneath it")
    differing, rows, _ = leaderboard(records)
    if row:
        if not row.isdigit() or not 1 <= int(row) <= len(rows):
            raise ConfigError(f"{given}: its leaderboard has rows 1..{len(rows)}")
        rows = [rows[int(row) - 1]]
    if len(rows) > 1:
        settings = "; ".join(f"#{i} " + " ".join(f"{k}={v}" for k, v in r["setting"].items()) or f"#{i} {r['model']}"
                             for i, r in enumerate(rows, 1))
        raise ConfigError(f"{given} holds {len(rows)} settings ({settings}): name one as {given}#N")
    wanted = set(rows[0]["run_dirs"])
    return [r for r in records if r.run_dir in wanted]


def compare_command(a: str, b: str, split: str, as_json: bool) -> str:
    """The comparison's sentence (or JSON), after each side's protocol is checked: a side whose compared images
    chose its stopping epoch or its weights is refused in one line (leaderboard.protocol)."""
    sides, said = [], {}
    for name, given in (("A", a), ("B", b)):
        records = design(given)
        said[name], biased = protocol(records, split)
        if biased:
            raise ConfigError(f"{name} ({given}): {biased}")
        runs, problems = compare.runs_of(records, pooled=False)
        if problems:
            raise ConfigError(f"{name} ({given}): " + "; ".join(problems))
        sides.append(runs)
    result = compare.compare(*sides, split=split)
    if as_json:
        return json.dumps({"a": a, "b": b, "protocol": said, **result.as_dict()})
    return f"{result.sentence(a, b)}\nA: {said['A']}.\nB: {said['B']}."


if __name__ == "__main__":
    main()
