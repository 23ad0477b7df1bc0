"""The leaderboard: every `summary.json` beneath a folder, grouped by setting, seeds averaged; and the
Pareto picture. Printed by `python -m mnist_arch.report` (mnist_arch/commands/report.py), written when a sweep
ends (the `Leaderboard` Hydra callback, mnist_arch/train/hydra_callbacks.py), drawn by a search (mnist_arch/commands/search.py).

Jobs that differ only in `seed` form one row: model, params, the overrides that differ between jobs,
the seeds, best-epoch and final-epoch val acc as mean ± std over the seeds, how many reached the target
and at which epoch, test acc, mean wall time, statuses. Rows are sorted by mean best val acc, best first;
jobs that failed are listed below with their error. Printed as markdown and written as CSV.

A sweep writes its own (`leaderboard.md`, `leaderboard.csv` in the sweep dir) through `Leaderboard`,
a Hydra callback set in `conf/config.yaml`, which also makes the sweep exit non-zero if a job failed.
"""
import csv
import io
import statistics
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple


from mnist_arch.config.compose import override_pairs
from mnist_arch.files import replacing, write_atomic
from mnist_arch.results import compare
from mnist_arch.results.record import FILE_NAME, RunRecord

NOT_SHOWN = {"seed", "data.fold"}  # averaged (seeds) or pooled (folds) over, not a setting
# How a run was executed, not what it trained: seeds of one design run by a search's one-thread workers and
# by hand with the default threads are one setting
HOW_IT_RAN = {"threads", "trainer.enable_progress_bar", "callbacks.progress", "callbacks.progress_refresh"}


def read_records(root: Path) -> List[RunRecord]:
    """Every run record beneath `root` (a sweep, or a whole outputs/ tree), in path order."""
    return [RunRecord.read(path) for path in sorted(Path(root).rglob(FILE_NAME))]


VAL_NAMES = {"test": "test-set", "holdout": "holdout", "fold": "fold"}  # what a run's validation images were


def stopped_at_target(record: RunRecord) -> bool:
    """Whether callbacks.stop_at_target ended the run before its planned last epoch. A record before version 4
    does not say: a run whose last epoch is the first to reach its target is taken as stopped there, the cautious
    way."""
    if record.version >= 4:
        return record.stopped_at_target is not None
    return record.target_epoch is not None and record.target_epoch == record.epochs_run


def protocol(records: List[RunRecord], split: str) -> Tuple[str, Optional[str]]:
    """(how these runs were scored on `split`, in words; why a comparison on `split` would be biased, or None).
    `split` val: each run's final-epoch predictions on its validation images; test: its test's. Biased when the
    compared images chose the stopping epoch (stop_at_target on them) or the weights (best-epoch weights tested
    on the images that picked them)."""
    vals = sorted({r.val_split or "?" for r in records})
    weights = sorted({r.test_ckpt or "final" for r in records}) if split == "test" else ["final"]
    stopped = [r for r in records if stopped_at_target(r)]
    said = (f"{split} split ({'the 10k test set' if split == 'test' else '/'.join(VAL_NAMES.get(v, v) for v in vals)}"
            f" images), {'/'.join(weights)}-epoch weights, validated on {'/'.join(VAL_NAMES.get(v, v) for v in vals)}"
            + (f", {len(stopped)} of {len(records)} stopped at the target by the validation score" if stopped else ""))
    on_val_images = split == "val" or vals == ["test"]  # the images compared are the ones that validated
    if on_val_images and stopped:
        chose = "the 10k test set" if vals == ["test"] else "these validation images"
        return said, (f"{chose} chose when {len(stopped)} of these {len(records)} runs stopped (callbacks.stop_at_target:"
                      f" each ended at the first epoch its score reached the target), so comparing them on it measures "
                      f"that choice; run them with callbacks.stop_at_target=false, or compare on a split that chose "
                      f"nothing")
    return said, None


def _settings(record: RunRecord) -> Dict[str, str]:
    return {key: value for key, value in override_pairs(record.overrides).items()
            if value is not None and key not in HOW_IT_RAN}


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
        folds = next((j.folds for j in jobs if j.folds), None)
        runs, _ = compare.runs_of(jobs)
        correct = compare.stack(runs)
        if folds:  # a seed's final val acc is its out-of-fold accuracy over the whole training set
            final = [float(c.mean()) for c in correct] if correct is not None else []
        taught = jobs[0].distilled_from  # a distilled design is never one row with a plain one: its setting differs
        rows.append({
            "model": model if not taught else
            f"{model} (distilled from {', '.join(str(t.get('model')) for t in taught.get('teachers', []))})",
            "params": jobs[0].params, "macs": jobs[0].macs_per_image,
            "train_seconds": mean_std([sum(j.epoch_time_s) for j in jobs])[0], "run_dirs": [j.run_dir for j in jobs],
            "setting": dict(zip(differing, values)),
            "seeds": sorted({j.seed for j in jobs} if folds else [j.seed for j in jobs], key=seed_order), "folds": folds,
            "best": mean_std(best) if not folds else (None, None), "final": mean_std(final),
            "final_ci": compare.interval(correct) if correct is not None else None,
            "test": mean_std(test), "target": (len(hits), len(jobs), hits), "target_acc": jobs[0].target_acc,
            "max_params": (jobs[0].budget or {}).get("max_params"), "max_macs": (jobs[0].budget or {}).get("max_macs"),
            "wall_time_s": mean_std([j.wall_time_s or 0 for j in jobs]),
            "status": ", ".join(f"{statuses.count(x)} {x}" for x in sorted(set(statuses))),
            "final_tta": mean_std([j.val_acc_tta[-1] for j in jobs if j.val_acc_tta]),
            "test_tta": mean_std([j.test_acc_tta for j in jobs if j.test_acc_tta is not None]),
            "val_splits": sorted({j.val_split or "?" for j in jobs}),
            "test_weights": sorted({j.test_ckpt for j in jobs if j.test_ckpt}),
        })
    rows.sort(key=lambda r: -(r["best"][0] if r["best"][0] is not None else -1))
    return differing, rows, failed


def seed_order(seed: Optional[int]) -> Tuple[bool, int]:
    """Seeds in order, a run without one (seed=null: drawn at random) last."""
    return seed is None, seed or 0


def mean_std(values: List[float]) -> Tuple[Optional[float], Optional[float]]:
    """The mean and the sample std (None for a single value) of the seeds' numbers."""
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def _pct(mean_std) -> str:
    mean, std = mean_std
    if mean is None:
        return "-"
    return f"{mean:.2%}" + (f" ± {std * 100:.2f}" if std is not None else "")


def markdown(differing: List[str], rows: List[Dict[str, Any]], failed: List[Dict[str, Any]]) -> str:
    val = "/".join(VAL_NAMES.get(v, v) for v in sorted({v for r in rows for v in r["val_splits"]})) or "val"
    tested = "/".join(sorted({w for r in rows for w in r["test_weights"]})) or "final"
    # test-time augmentation: columns of its own, beside the plain ones it never replaces
    tta = any(r["final_tta"][0] is not None or r["test_tta"][0] is not None for r in rows)
    header = ["#", "model", "params", *differing, "seeds", f"best-epoch {val} acc (ranked by)",
              f"final-epoch {val} acc", *([f"final-epoch {val} acc, TTA"] if tta else []), f"final {val} 95% CI",
              "target epoch", f"test acc ({tested} weights)", *(["test acc, TTA"] if tta else []), "wall s", "status"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for rank, r in enumerate(rows, 1):
        reached, total, epochs = r["target"]
        target = f"{reached}/{total}" + (f" (ep {', '.join(map(str, epochs))})" if epochs else "")
        params = f"{r['params']:,}" if isinstance(r["params"], int) else "-"
        seeds = ",".join(map(str, r["seeds"])) + (f" × {r['folds']} folds" if r.get("folds") else "")
        ci = f"{r['final_ci'][0]:.2%} to {r['final_ci'][1]:.2%}" if r.get("final_ci") else "-"
        cells = [str(rank), str(r["model"]), params, *(str(r["setting"][k]) for k in differing),
                 seeds, _pct(r["best"]), _pct(r["final"]), *([_pct(r["final_tta"])] if tta else []), ci, target,
                 _pct(r["test"]), *([_pct(r["test_tta"])] if tta else []),
                 f"{r['wall_time_s'][0]:.0f}" if r["wall_time_s"][0] is not None else "-", r["status"]]
        lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(lines)
    on_test = sum("test" in r["val_splits"] for r in rows)
    if on_test:  # said loudly: a board ranked by the test set is not a held-out choice
        text += (f"\n\n**val = the 10k test set in {on_test} of {len(rows)} row(s)**: their best-epoch column is the "
                 "test set's own choice of epoch, the order of this board is chosen on the test set, and a run that "
                 "stopped at its target stopped where the test said; select on data.val=holdout, keep the test for "
                 "last.")
    if rows:
        text += ("\n\nbest/final val acc: mean ± std (percentage points) over the seeds; final 95% CI: of the final "
                 "val acc, seeds and validation images as crossed random effects (docs/selection.md), where the "
                 "runs kept their predictions; a row of folds: each seed's out-of-fold accuracy over the 60k "
                 "training images; target epoch: seeds that reached the target, and the first epoch each did.")
    pruned = [f for f in failed if f["status"] == "pruned"]
    failed = [f for f in failed if f["status"] != "pruned"]
    if pruned:  # a search's pruner stopping hopeless trials is the search working, not a failure: one line
        text += f"\n\n{len(pruned)} trial(s) pruned by the search (stopped early, not ranked)."
    if failed:
        text += f"\n\n{len(failed)} job(s) did not complete:\n" + "\n".join(
            f"- {' '.join([str(f['model']), *(f'{k}={v}' for k, v in f['setting'].items())])} seed {f['seed']}: "
            f"{f['status']}: {f['error']} ({f['run_dir']})" for f in failed)
    return text


def csv_text(differing: List[str], rows: List[Dict[str, Any]], failed: List[Dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["model", "params", *differing, "n_seeds", "seeds", "folds", "best_val_acc_mean", "best_val_acc_std",
                     "final_val_acc_mean", "final_val_acc_std", "final_val_acc_ci_low", "final_val_acc_ci_high",
                     "target_reached", "target_epochs", "test_acc_mean",
                     "test_acc_std", "wall_time_s_mean", "status", "error"])
    for r in rows:
        writer.writerow([r["model"], r["params"], *(r["setting"][k] for k in differing), len(r["seeds"]),
                         " ".join(map(str, r["seeds"])), r["folds"] or "", *r["best"], *r["final"],
                         *(r["final_ci"] or ("", "")), r["target"][0],
                         " ".join(map(str, r["target"][2])), *r["test"], r["wall_time_s"][0], r["status"], ""])
    for f in failed:
        writer.writerow([f["model"], "", *(f["setting"][k] for k in differing), 1, f["seed"], *[""] * 12,
                         f["status"], f["error"]])
    return out.getvalue()


def write(root: Path, csv_path: Optional[Path] = None, plot_path: Optional[Path] = None,
          metric: str = "test", ymin: Optional[float] = None, x: str = "params") -> Tuple[str, List[Dict[str, Any]]]:
    """Build the leaderboard of `root`, write its CSV (default: <root>/leaderboard.csv) and markdown, and
    the Pareto plot when `plot_path` is given."""
    differing, rows, failed = leaderboard(read_records(root))
    text = markdown(differing, rows, failed)
    # by a rename: a sweep dir from elsewhere may hold links where these go (mnist_arch/files.py)
    write_atomic(csv_path or root / "leaderboard.csv", csv_text(differing, rows, failed))
    if csv_path is None:
        write_atomic(root / "leaderboard.md", text + "\n")
    if plot_path is not None:
        with replacing(plot_path) as tmp:
            pareto(rows, differing, metric, ymin, x).savefig(tmp, dpi=100, format=Path(plot_path).suffix[1:] or "png")
    return text, failed


METRICS = {"test": "test acc", "final": "final-epoch val acc", "best": "best-epoch val acc"}


X_AXES = {"params": ("trainable parameters", "max_params", "params"), "macs": ("MACs per image", "max_macs", "MACs"),
          "train_seconds": ("training seconds (train + val epochs)", None, "s")}


CROWDED = 12  # more points than this: only the front's are labelled


def pareto(rows: List[Dict[str, Any]], differing: List[str], metric: str = "test", ymin: Optional[float] = None,
           x: str = "params", label: Optional[Callable[[Dict[str, Any]], str]] = None):
    """Accuracy against parameters (or `x`: macs, train_seconds), one point per setting: the mean over its
    seeds with ± std error bars, labelled; dashed lines at each budget's limit and target accuracy. The
    settings no other setting beats at a lower cost (the Pareto front) are joined by a line. `ymin` (percent)
    cuts the axis so that one failed seed does not flatten the rest; a point under it is drawn on the bottom
    edge as a down-pointing triangle, its mean ± std written in its label, never left out. `label` names a
    point (default: its model, and its settings where the model appears more than once)."""
    # Deferred: matplotlib costs 0.4 s past the report command's imports, paid only when a plot is drawn
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    figure = Figure(figsize=(8, 5), layout="constrained")
    ax = figure.add_subplot()
    points = []
    # A point is labelled by its model alone where that tells it apart. Where the model appears more than
    # once (several convnet designs), by the folder its seeds share (a confirm's design, a sweep's name) when
    # that folder is its own; else by its settings, which for runs gathered from several sweeps are many.
    x_label, limit_key, unit = X_AXES[x]
    shown = [r for r in rows if r[metric][0] is not None and isinstance(r.get(x), (int, float))]
    repeated = {m for m, n in Counter(r["model"] for r in shown).items() if n > 1}
    parents = [{Path(d).parent.name for d in r["run_dirs"] if d} for r in shown]
    folders = [next(iter(names)) if len(names) == 1 else None for names in parents]
    own = {name for name, n in Counter(folders).items() if name and n == 1}
    for r, folder in zip(shown, folders):
        mean, std = r[metric]
        if r["model"] not in repeated:
            settings = []
        elif folder in own:
            settings = [folder]
        else:
            settings = [f"{k.split('.')[-1]}={v}" for k, v in r["setting"].items() if k != "experiment"]
        name = label(r) if label else " ".join([str(r["model"]), *settings])
        points.append((r[x], mean, std or 0.0, name, len(r["seeds"])))
    front, best = [], -1.0
    for params, mean, *_ in sorted(points):
        if mean > best:
            front.append((params, 100 * mean))
            best = mean
    # a study's dozens of trials: their labels would cover each other, so only the front's are written
    crowded = len(points) > CROWDED
    for params, mean, std, label, n in points:
        if ymin is not None and 100 * mean < ymin:
            ax.plot(params, ymin, "v", markersize=7, clip_on=False)
            ax.annotate(f"{label} (n={n}): {100 * mean:.2f}% ± {100 * std:.2f}, below the axis", (params, ymin),
                        textcoords="offset points", xytext=(-60, 8), fontsize=7, parse_math=False)
            continue
        ax.errorbar(params, 100 * mean, yerr=100 * std, fmt="o", capsize=3, markersize=4)
        if not crowded or (params, 100 * mean) in front:
            # a label is a name from a record: text, never mathtext ("$\\frac{$" would not parse)
            ax.annotate(f"{label} (n={n})", (params, 100 * mean), textcoords="offset points", xytext=(5, 4),
                        fontsize=7, parse_math=False)
    if len(front) > 1:
        ax.plot(*zip(*front), "-", color="gray", linewidth=1, alpha=0.6, label="Pareto front")
    for limit in sorted({r[limit_key] for r in rows if limit_key and r.get(limit_key)}):
        ax.axvline(limit, color="red", linestyle="--", linewidth=0.8, alpha=0.6)
        ax.annotate(f"≤{limit:,} {unit}", (limit, 0), xycoords=("data", "axes fraction"), rotation=90,
                    fontsize=7, color="red", xytext=(-10, 5), textcoords="offset points")
    for target in sorted({r["target_acc"] for r in rows if r.get("target_acc")}):
        ax.axhline(100 * target, color="green", linestyle="--", linewidth=0.8, alpha=0.6)
        ax.annotate(f"target {target:.2%}", (0, 100 * target), xycoords=("axes fraction", "data"), fontsize=7,
                    color="green", xytext=(4, 2), textcoords="offset points")
    if ymin is not None:
        ax.set_ylim(bottom=ymin)
    ax.set_xlabel(x_label)
    ax.set_ylabel(f"{METRICS[metric]} (%), mean ± std over seeds")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:,.0f}"))
    ax.grid(alpha=0.3)
    ax.set_title(f"{METRICS[metric]} against {x_label.split(' (')[0]} ({len(points)} settings"
                 f"{'; the front labelled' if crowded else ''})", fontsize=9)
    return figure
