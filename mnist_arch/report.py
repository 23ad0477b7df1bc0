"""The leaderboard: every `summary.json` beneath a folder, grouped by setting, seeds averaged.

    python -m mnist_arch.report outputs/multirun/2026-11-22/10-00-00
    python -m mnist_arch.report outputs --csv board.csv

Jobs that differ only in `seed` form one row: model, params, the overrides that differ between jobs,
the seeds, best-epoch and final-epoch val acc as mean ± std over the seeds, how many reached the target
and at which epoch, test acc, mean wall time, statuses. Rows are sorted by mean best val acc, best first;
jobs that failed are listed below with their error. Printed as markdown and written as CSV.

A sweep writes its own (`leaderboard.md`, `leaderboard.csv` in the sweep dir) through `Leaderboard`,
a Hydra callback set in `conf/config.yaml`, which also makes the sweep exit non-zero if a job failed.
"""
import argparse
import csv
import io
import statistics
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from hydra.experimental.callback import Callback

from mnist_arch.record import FILE_NAME, RunRecord

NOT_SHOWN = {"seed"}  # averaged over, not a setting


def load(root: Path) -> List[RunRecord]:
    """Every run record beneath `root` (a sweep, or a whole outputs/ tree), in path order."""
    return [RunRecord.read(path) for path in sorted(Path(root).rglob(FILE_NAME))]


def _settings(record: RunRecord) -> Dict[str, str]:
    pairs = (o.split("=", 1) for o in record.overrides if "=" in o)
    return {key.lstrip("+~"): value for key, value in pairs}


def leaderboard(records: List[RunRecord]) -> Tuple[List[str], List[Dict[str, Any]], List[Dict[str, Any]]]:
    """(the overrides that differ between jobs, one row per setting sorted best first, the failed jobs)."""
    settings = [_settings(r) for r in records]
    keys = sorted({k for st in settings for k in st} - NOT_SHOWN - {"model"})
    differing = [k for k in keys if len({st.get(k) for st in settings}) > 1]
    groups: Dict[tuple, List[RunRecord]] = {}
    failed = []
    for record, st in zip(records, settings):
        if record.status != "completed":
            failed.append({"model": record.model, "setting": {k: st.get(k) for k in differing},
                           "seed": record.seed, "status": record.status, "error": record.error or "",
                           "run_dir": record.run_dir})
            continue
        groups.setdefault((record.model, tuple(st.get(k) for k in differing)), []).append(record)

    rows = []
    for (model, values), jobs in groups.items():
        best = [j.best_val_acc for j in jobs if j.best_val_acc is not None]
        final = [j.final_val_acc for j in jobs if j.final_val_acc is not None]
        test = [j.test_acc for j in jobs if j.test_acc is not None]
        hits = [j.target_epoch for j in jobs if j.target_epoch]
        statuses = [j.status for j in jobs]
        rows.append({
            "model": model, "params": jobs[0].params, "setting": dict(zip(differing, values)),
            "seeds": sorted(j.seed for j in jobs), "best": _mean_std(best), "final": _mean_std(final),
            "test": _mean_std(test), "target": (len(hits), len(jobs), hits), "target_acc": jobs[0].target_acc,
            "wall_time_s": _mean_std([j.wall_time_s or 0 for j in jobs]),
            "status": ", ".join(f"{statuses.count(x)} {x}" for x in sorted(set(statuses))),
        })
    rows.sort(key=lambda r: -(r["best"][0] if r["best"][0] is not None else -1))
    return differing, rows, failed


def _mean_std(values: List[float]) -> Tuple[Optional[float], Optional[float]]:
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def _pct(mean_std) -> str:
    mean, std = mean_std
    if mean is None:
        return "-"
    return f"{mean:.2%}" + (f" ± {std * 100:.2f}" if std is not None else "")


def markdown(differing: List[str], rows: List[Dict[str, Any]], failed: List[Dict[str, Any]]) -> str:
    header = ["#", "model", "params", *differing, "seeds", "best val acc", "final val acc", "target epoch",
              "test acc", "wall s", "status"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for rank, r in enumerate(rows, 1):
        reached, total, epochs = r["target"]
        target = f"{reached}/{total}" + (f" (ep {', '.join(map(str, epochs))})" if epochs else "")
        params = f"{r['params']:,}" if isinstance(r["params"], int) else "-"
        cells = [str(rank), str(r["model"]), params, *(str(r["setting"][k]) for k in differing),
                 ",".join(map(str, r["seeds"])), _pct(r["best"]), _pct(r["final"]), target, _pct(r["test"]),
                 f"{r['wall_time_s'][0]:.0f}" if r["wall_time_s"][0] is not None else "-", r["status"]]
        lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(lines)
    if rows:
        text += ("\n\nbest/final val acc: mean ± std (percentage points) over the seeds; target epoch: "
                 "seeds that reached the target, and the first epoch each did.")
    if failed:
        text += f"\n\n{len(failed)} job(s) did not complete:\n" + "\n".join(
            f"- {' '.join([str(f['model']), *(f'{k}={v}' for k, v in f['setting'].items())])} seed {f['seed']}: "
            f"{f['status']}: {f['error']} ({f['run_dir']})" for f in failed)
    return text


def csv_text(differing: List[str], rows: List[Dict[str, Any]], failed: List[Dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["model", "params", *differing, "n_seeds", "seeds", "best_val_acc_mean", "best_val_acc_std",
                     "final_val_acc_mean", "final_val_acc_std", "target_reached", "target_epochs", "test_acc_mean",
                     "test_acc_std", "wall_time_s_mean", "status", "error"])
    for r in rows:
        writer.writerow([r["model"], r["params"], *(r["setting"][k] for k in differing), len(r["seeds"]),
                         " ".join(map(str, r["seeds"])), *r["best"], *r["final"], r["target"][0],
                         " ".join(map(str, r["target"][2])), *r["test"], r["wall_time_s"][0], r["status"], ""])
    for f in failed:
        writer.writerow([f["model"], "", *(f["setting"][k] for k in differing), 1, f["seed"], *[""] * 9,
                         f["status"], f["error"]])
    return out.getvalue()


def write(root: Path, csv_path: Optional[Path] = None) -> Tuple[str, List[Dict[str, Any]]]:
    """Build the leaderboard of `root`, write its CSV (default: <root>/leaderboard.csv) and markdown."""
    differing, rows, failed = leaderboard(load(root))
    text = markdown(differing, rows, failed)
    (csv_path or root / "leaderboard.csv").write_text(csv_text(differing, rows, failed))
    if csv_path is None:
        (root / "leaderboard.md").write_text(text + "\n")
    return text, failed


class Leaderboard(Callback):
    """Hydra callback: when a sweep ends, write its leaderboard into the sweep dir and print it; exit
    non-zero if any job did not complete."""

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        text, failed = write(sweep_dir)
        print(f"\nleaderboard ({sweep_dir / 'leaderboard.md'}):\n{text}")
        if failed:
            sys.exit(f"{len(failed)} job(s) of the sweep did not complete (see the leaderboard)")


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mnist_arch.report", description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="a sweep dir, or any folder with run dirs beneath it")
    parser.add_argument("--csv", type=Path, default=None, help="where the CSV goes (default: <root>/leaderboard.csv)")
    args = parser.parse_args(argv)
    if not args.root.is_dir():
        sys.exit(f"error: {args.root} is not a folder")
    if not load(args.root):
        sys.exit(f"error: no summary.json beneath {args.root}")
    text, _ = write(args.root, args.csv)
    print(text)


if __name__ == "__main__":
    main()
