"""Is design A better than design B? A paired answer from the predictions every run keeps.

Two sources of noise decide the game at ~0.1 point: which images the validation (or test) set happens to hold,
and which seed a run happened to get. Each run keeps its final-epoch predictions on every validation and test
image (`predictions.npz`, written by the `Predictions` callback), so two designs are compared on the same images
and, where they share them, the same seeds: a design's run of seed s against the other's run of seed s, image i
against image i. Pairing removes what both share (the hard images, the seed's data order); what is left is the
difference itself.

The method (docs/selection.md): the per-seed, per-image differences d[s, i] = right_A[s, i] - right_B[s, i] are
a two-way crossed layout of random seeds and random images, and the variance of their mean is estimated from
its three mean squares, Var = (MS_seeds + MS_images - MS_residual) / (S N), with Satterthwaite's degrees of
freedom (F. E. Satterthwaite 1946, "An approximate distribution of estimates of variance components",
Biometrics Bulletin 2; H. H. Clark 1973, "The language-as-fixed-effect fallacy", J. Verbal Learning and Verbal
Behavior 12, on treating both subjects and items as random). Each source is counted once: the two-level
bootstrap it replaces resampled seeds and images both, counting the residual (a run's own image-by-image
noise) twice, and was 1.55-1.6x too wide (issue 46). The p-value and 95% CI are Student's t on that estimate.
Where the runs validate on different images (folds), each fold is a cluster: its mean difference over its own
images (and the seeds that ran it) is one replicate, and the folds' mean is tested with Student's t over them.
With one seed on one image set the only noise left to measure is the images': McNemar's exact test on the
images the two runs disagree on (Q. McNemar 1947, Psychometrika 12). Calibration and power, measured by
simulation: tests/test_calibration.py and docs/selection.md.
"""
import math
import zipfile
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from scipy import stats

from mnist_arch.errors import BadFile, ConfigError
from mnist_arch.files import check_file, replacing

FILE_NAME = "predictions.npz"
MAX_PREDICTIONS_BYTES = 1 << 20  # a run's file is ~10-30 KB; one from elsewhere is read as data, never pickled
MAX_PREDICTIONS_EXPANDED = 16 << 20  # its arrays inflated: 60k validation + 10k test images are ~0.6 MB
MAX_PREDICTIONS_RECORDS = 64  # four arrays per split


@dataclass
class Predictions:
    """One run's final-epoch predictions: for each split, the images' indices in their source set (`train`: the
    60k training set, `test`: the 10k test set), their labels and the predicted classes, all in index order."""

    seed: Optional[int]
    splits: Dict[str, Tuple[str, np.ndarray, np.ndarray, np.ndarray]]  # split -> (source, index, label, predicted)

    def correct(self, split: str) -> Tuple[Tuple[str, bytes], np.ndarray]:
        """((source, the index's bytes) to pair on, right/wrong per image)."""
        source, index, label, predicted = self.splits[split]
        return (source, index.tobytes()), label == predicted


def save(path: Path, splits: Dict[str, Tuple[str, np.ndarray, np.ndarray, np.ndarray]]) -> Path:
    """Each split's arrays, sorted by index, compressed: a few KB a run."""
    arrays = {}
    for split, (source, index, label, predicted) in splits.items():
        order = np.argsort(index, kind="stable")
        arrays.update({f"{split}_source": np.array(source), f"{split}_index": index[order].astype(np.int32),
                       f"{split}_label": label[order].astype(np.uint8),
                       f"{split}_predicted": predicted[order].astype(np.uint8)})
    with replacing(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)
    return path


def read_predictions(path: Path, seed: Optional[int] = None) -> Predictions:
    """A run's predictions.npz, read as data: every split's four arrays, of one length. What it expands to is
    judged before it is read (the zip's records and each array's header: MAX_PREDICTIONS_EXPANDED in all, plain
    numbers and one string per split, never a pickled or structured array)."""
    check_file(path, FILE_NAME, MAX_PREDICTIONS_BYTES)
    splits = {}
    try:
        arrays = _arrays(path)
        for split in sorted({key.rsplit("_", 1)[0] for key in arrays}):
            source, index, label, predicted = (arrays[f"{split}_{part}"] for part in
                                               ("source", "index", "label", "predicted"))
            if not (index.ndim == label.ndim == predicted.ndim == 1 and len(index) == len(label) == len(predicted)):
                raise ValueError(f"the {split} arrays differ in length")
            if source.dtype.kind != "U" or source.size != 1 or index.dtype.kind not in "iu" or \
                    label.dtype.kind not in "iu" or predicted.dtype.kind not in "iu":
                raise ValueError(f"the {split} arrays are not a source name and three integer arrays")
            splits[split] = (str(source), index, label, predicted)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise BadFile(f"{path}: not a run's {FILE_NAME} ({(str(e).splitlines() or [type(e).__name__])[0][:200]})") \
            from None
    return Predictions(seed, splits)


def _arrays(path: Path) -> Dict[str, np.ndarray]:
    """The .npz's arrays, each checked from its zip record and its .npy header before it is read."""
    arrays, total = {}, 0
    with zipfile.ZipFile(path) as archive:
        records = archive.infolist()
        if len(records) > MAX_PREDICTIONS_RECORDS:
            raise ValueError(f"{len(records)} records, over the {MAX_PREDICTIONS_RECORDS} it may hold")
        for record in records:
            total += record.file_size  # zipfile never inflates a record past its declared size
            if total > MAX_PREDICTIONS_EXPANDED or not record.filename.endswith(".npy"):
                raise ValueError(f"{record.filename[:60]!r}: more than the {MAX_PREDICTIONS_EXPANDED >> 20} MiB of .npy "
                                 "arrays a run's predictions expand to")
            with archive.open(record) as f:
                version = np.lib.format.read_magic(f)
                header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
                if version not in header:
                    raise ValueError(f"{record.filename[:60]!r}: .npy format {version}, not 1.0 or 2.0")
                shape, fortran, dtype = header[version](f)
                if dtype.hasobject or dtype.fields is not None or dtype.kind not in "iuU":
                    raise ValueError(f"{record.filename[:60]!r}: an array of {dtype}, not plain integers or text")
                if math.prod(shape) * dtype.itemsize > record.file_size:
                    raise ValueError(f"{record.filename[:60]!r}: its header declares {shape}, more than the record holds")
            with archive.open(record) as f:
                arrays[record.filename[:-4]] = np.lib.format.read_array(f, allow_pickle=False)
    return arrays


@dataclass
class Comparison:
    difference: float  # accuracy of A minus accuracy of B (a fraction; x100 for points)
    ci_low: float
    ci_high: float
    p: float
    separated: bool  # the 95% CI excludes zero
    acc_a: float
    acc_b: float
    split: str
    seeds: List[Tuple[Optional[int], Optional[int]]]  # the pairs of seeds compared
    images: int
    paired_seeds: bool  # False: the seed lists differ, so runs were paired in sorted order
    method: str = "seeds x images, crossed random effects (Satterthwaite t)"
    df: Optional[float] = None  # the t test's degrees of freedom (None: McNemar's exact test on one run each)
    folds: Optional[int] = None  # where the runs validated on K folds: the clusters tested over

    def as_dict(self) -> dict:
        return asdict(self)

    def sentence(self, a: str = "A", b: str = "B") -> str:
        better, worse = (a, b) if self.difference >= 0 else (b, a)
        seeds = f"{len(self.seeds)} seed{'s' if len(self.seeds) > 1 else ''}"
        where = (f"{self.split} split, {self.images:,} images x {seeds}"
                 + ("" if self.paired_seeds else ", runs paired in seed order: the seed lists differ"))
        numbers = (f"{a} {self.acc_a:.2%} vs {b} {self.acc_b:.2%}: difference {100 * self.difference:+.3f} points, "
                   f"95% CI [{100 * self.ci_low:+.3f}, {100 * self.ci_high:+.3f}], p = {self.p:.3g} ({where})")
        verdict = (f"the data separate them: {better} is better" if self.separated else
                   "the data do not separate them (the CI includes zero)")
        single = "; with one seed the CI covers image sampling only, not seed-to-seed variance" \
            if len(self.seeds) == 1 else ""
        return f"{numbers}: {verdict}{single}."


ALPHA = 0.05  # a comparison's level: the CI is 1 - ALPHA


@dataclass(frozen=True)
class Estimate:
    mean: float
    se: float  # its standard error
    df: Optional[float]  # Student's t degrees of freedom; None: McNemar (one run each)
    p: float  # two-sided, against a mean of 0

    def ci(self, alpha: float = ALPHA) -> Tuple[float, float]:
        if self.df is None or not self.se > 0:
            half = stats.norm.ppf(1 - alpha / 2) * self.se
        else:
            half = stats.t.ppf(1 - alpha / 2, self.df) * self.se
        return self.mean - half, self.mean + half


def crossed(d: np.ndarray) -> Estimate:
    """The mean of d (seeds x images) with its standard error and t test under crossed random seeds and images
    (the module's docstring); one seed: McNemar's exact test on the images where d is not 0 (image sampling only).

    Var(mean) = sigma_s^2 / S + sigma_i^2 / N + sigma_e^2 / (S N), each component estimated from the mean squares
    (sigma_s^2 = (MS_seeds - MS_residual) / N, sigma_i^2 = (MS_images - MS_residual) / S, sigma_e^2 = MS_residual)
    and a negative one taken as 0, as variance components are; Satterthwaite's df for the sum. The truncation
    matters at two or three seeds: two runs whose accuracies are the same count of images give MS_seeds = 0,
    and the plain sum MS_seeds + MS_images - MS_residual would then claim any difference (p < 0.005 five times
    too often, measured)."""
    d = np.asarray(d, dtype=np.float64)
    n_seeds, n_images = d.shape
    mean = float(d.mean())
    if n_seeds == 1:
        return _mcnemar(d[0])
    rows, columns = d.mean(axis=1), d.mean(axis=0)
    ss_seeds = n_images * float(np.square(rows - mean).sum())
    ss_images = n_seeds * float(np.square(columns - mean).sum())
    ss_residual = max(float(np.square(d - mean).sum()) - ss_seeds - ss_images, 0.0)
    dfs = (n_seeds - 1, n_images - 1, (n_seeds - 1) * (n_images - 1))
    ms = (ss_seeds / dfs[0], ss_images / dfs[1], ss_residual / dfs[2])
    use_seeds, use_images = ms[0] > ms[2], ms[1] > ms[2]
    weights = (float(use_seeds), float(use_images), 1.0 - use_seeds - use_images)  # of MS_seeds, MS_images, MS_resid
    combined = sum(w * m for w, m in zip(weights, ms))
    if combined <= 0:  # every difference the same: nothing varies
        return Estimate(mean, 0.0, float(dfs[0]), 1.0 if mean == 0 else 0.0)
    df = combined ** 2 / sum((w * m) ** 2 / f for w, m, f in zip(weights, ms, dfs) if w)
    return _t(mean, math.sqrt(combined / (n_seeds * n_images)), max(df, 1.0))


def clusters(means: Sequence[float], within: Sequence[float]) -> Estimate:
    """Student's t over independent clusters' mean differences (folds, each on its own images). `within`: each
    mean's own sampling variance (its images' and seeds' noise), which the clusters' spread is never taken below:
    two folds with the same difference would otherwise claim any mean (as in `crossed`)."""
    x = np.asarray(means, dtype=np.float64)
    spread, floor = float(x.var(ddof=1)), float(np.mean(within))
    if spread >= floor:
        se, df = math.sqrt(spread / len(x)), float(len(x) - 1)
    else:  # no spread between clusters beyond their own noise: that noise, measured on many images
        se, df = math.sqrt(floor / len(x)), 1e6
    if not se > 0:
        return Estimate(float(x.mean()), 0.0, float(len(x) - 1), 1.0 if x.mean() == 0 else 0.0)
    return _t(float(x.mean()), se, df)


def _t(mean: float, se: float, df: float) -> Estimate:
    return Estimate(mean, se, df, float(2 * stats.t.sf(abs(mean) / se, df)))


def _mcnemar(d: np.ndarray) -> Estimate:
    better, worse = int((d > 0).sum()), int((d < 0).sum())
    p = float(stats.binomtest(better, better + worse).pvalue) if better + worse else 1.0
    n = len(d)
    se = math.sqrt(max((better + worse) / n - ((better - worse) / n) ** 2, 0.0) / n)
    return Estimate((better - worse) / n, se, None, p)


def interval(correct: np.ndarray) -> Tuple[float, float]:
    """95% CI of one design's accuracy (seeds x images right/wrong): crossed random seeds and images, as above
    (one seed: the images' binomial interval)."""
    return crossed(correct.astype(np.float64)).ci()


@lru_cache(maxsize=64)
def race_level(designs: int, rounds: int, first: int, alpha: float = ALPHA) -> float:
    """The level at which a race compares its leader with each other design (Holm over a round's comparisons),
    such that a race of `designs` equal designs, looking from round `first` to `rounds`, drops one in at most
    `alpha` of races: the race looks several times and its leader is the data's pick, so `alpha` at each look
    drops an equal design in 13-23% of races (2-6 designs, 4 looks). Found by simulation (20,000 races a level,
    common random numbers, bisection) of each design's per-round accuracy as an independent normal: the
    comparisons' t statistics do not depend on the noise's size, so neither does the level."""
    rng = np.random.default_rng(0)
    draws = rng.standard_normal((20_000, designs, rounds))
    if _race_drop_rate(draws, first, alpha) <= alpha:
        return alpha
    low, high = 0.0, alpha
    for _ in range(14):  # to within alpha / 16,000
        middle = (low + high) / 2
        low, high = (middle, high) if _race_drop_rate(draws, first, middle) <= alpha else (low, middle)
    return low


def race_drops(runs: Dict[str, List[Predictions]], level: float) -> Tuple[str, Dict[str, Tuple[Comparison, float]]]:
    """One round's judgement: (the leader, the best mean val acc; {design it beats: (the comparison, the Holm
    threshold it fell under)}), each design's runs so far on the validation side, every other design compared
    with the leader, Holm at `level` over those comparisons."""
    means = {name: float(np.mean([float(np.mean(r.correct("val")[1])) for r in kept])) for name, kept in runs.items()}
    leader = max(means, key=lambda name: means[name])
    tests = sorted(((compare(runs[leader], runs[name], "val"), name) for name in runs if name != leader),
                   key=lambda pair: pair[0].p)
    dropped = {}
    for k, (result, name) in enumerate(tests):  # Holm: the k-th smallest p against level / (m - k)
        threshold = level / (len(tests) - k)
        if result.p >= threshold or result.difference <= 0:
            break
        dropped[name] = (result, threshold)
    return leader, dropped


def _race_drop_rate(draws: np.ndarray, first: int, level: float) -> float:
    """The share of simulated races (draws: races x designs x rounds, all designs equal) that drop a design."""
    races, designs, rounds = draws.shape
    alive = np.ones((races, designs), bool)
    dropped = np.zeros(races, bool)
    everyone = np.arange(races)
    for r in range(first, rounds + 1):
        x = draws[:, :, :r]
        leader = np.where(alive, x.mean(axis=2), -np.inf).argmax(axis=1)
        d = x[everyone, leader][:, None, :] - x
        t = d.mean(axis=2) / np.maximum(d.std(axis=2, ddof=1) / math.sqrt(r), 1e-300)
        others = alive.copy()
        others[everyone, leader] = False
        p = np.where(others, 2 * stats.t.sf(np.abs(t), r - 1), np.inf)
        order = np.argsort(p, axis=1)
        ranked = np.take_along_axis(p, order, axis=1)
        holm = level / np.maximum(others.sum(axis=1, keepdims=True) - np.arange(designs), 1)
        reject = np.cumprod(ranked <= holm, axis=1).astype(bool)
        drop = np.zeros_like(alive)
        np.put_along_axis(drop, order, reject, axis=1)
        dropped |= drop.any(axis=1)
        alive &= ~drop
    return float(dropped.mean())


def compare(a: Sequence[Predictions], b: Sequence[Predictions], split: str) -> Comparison:
    """A's runs against B's on `split` (val or test): the same images required; seeds paired by number where the
    two lists agree, else in sorted order (independent runs either way); fold runs (each on its fold's images,
    not pooled) paired by seed and fold, and tested over folds as clusters."""
    for name, runs in (("A", a), ("B", b)):
        if not runs:
            raise ConfigError(f"{name} holds no run with predictions ({FILE_NAME}; runs before this version kept none)")
        missing = [r.seed for r in runs if split not in r.splits]
        if missing:
            raise ConfigError(f"{name}'s run(s) of seed {', '.join(map(str, missing))} kept no {split} predictions "
                              f"(the test split exists only where the run tested; try --split val)")
    # each run's (images, right/wrong) once: paired by seed, then by the fold its images are
    scored_a = sorted(((r, *r.correct(split)) for r in a), key=lambda t: (t[0].seed is None, t[0].seed or 0, t[1]))
    scored_b = sorted(((r, *r.correct(split)) for r in b), key=lambda t: (t[0].seed is None, t[0].seed or 0, t[1]))
    if len(scored_a) != len(scored_b):
        raise ConfigError(f"A has {len(a)} run(s), B {len(b)}: a paired comparison needs as many runs on each "
                          "side (the same seeds, ideally)")
    pairs = [(x, y) for (x, _, _), (y, _, _) in zip(scored_a, scored_b)]
    paired_seeds = [x.seed for x, _ in pairs] == [y.seed for _, y in pairs]
    if any(key_a != key_b for (_, key_a, _), (_, key_b, _) in zip(scored_a, scored_b)):
        raise ConfigError(f"the runs' {split} images differ (another split, holdout or fold): a paired comparison "
                          "needs the same images on both sides")
    right_a, right_b = [right for _, _, right in scored_a], [right for _, _, right in scored_b]
    by_set: Dict[Tuple[str, bytes], List[np.ndarray]] = {}
    for (_, key, ra), rb in zip(scored_a, right_b):
        by_set.setdefault(key, []).append(ra.astype(np.int8) - rb.astype(np.int8))
    if len(by_set) == 1:  # every run on the same images: seeds x images
        d = np.stack(next(iter(by_set.values())))
        estimate, folds, images = crossed(d), None, d.shape[1]
    else:  # folds: each set of images a cluster, its seeds' runs averaged within it
        fold_estimates = [crossed(np.stack(v)) for v in by_set.values()]
        estimate = clusters([e.mean for e in fold_estimates], [e.se ** 2 for e in fold_estimates])
        folds, images = len(by_set), sum(v[0].shape[0] for v in by_set.values())
    low, high = estimate.ci()
    acc_a = float(np.mean([r.mean() for r in right_a]))
    acc_b = float(np.mean([r.mean() for r in right_b]))
    method = ("McNemar's exact test (one run each: image sampling only)" if estimate.df is None else
              f"{folds} folds as clusters (Student's t over folds)" if folds else
              "seeds x images, crossed random effects (Satterthwaite t)")
    return Comparison(difference=estimate.mean, ci_low=low, ci_high=high, p=estimate.p,
                      separated=bool(estimate.p < ALPHA and (low > 0 or high < 0)), acc_a=acc_a, acc_b=acc_b,
                      split=split, seeds=[(x.seed, y.seed) for x, y in pairs], images=images,
                      paired_seeds=paired_seeds, method=method, df=estimate.df, folds=folds)


def runs_of(records, partial_folds: bool = False, pooled: bool = True) -> Tuple[List[Predictions], List[str]]:
    """The predictions of one design's runs (the records of one leaderboard row), one per seed: a seed's K fold
    runs pooled into one out-of-fold run over the whole training set (val only: each fold tested separately;
    `partial_folds`: the folds run so far, as a race has them). pooled=False keeps each fold's run on its own
    images, for `compare` to test over folds as clusters (a pooled run is one seed's worth of evidence,
    whatever the number of folds). With the problems that left runs out (no predictions kept, folds missing or
    repeated), in words."""
    together, separate, unread, left_out = pooled_and_separate(records, partial_folds)
    return (together, unread + left_out) if pooled else (separate, unread)


def pooled_and_separate(records, partial_folds: bool = False) \
        -> Tuple[List[Predictions], List[Predictions], List[str], List[str]]:
    """Both of runs_of's answers from one reading of the runs' files: (pooled, each fold on its own, the runs that
    could not be read, the seeds whose folds could not be pooled)."""
    problems, left_out, by_seed = [], [], {}
    for record in records:
        if record.predictions != FILE_NAME:  # the run dir's own file, never a path a record from elsewhere names
            problems.append(f"{record.run_dir}: no {FILE_NAME} (a run before this version, or under DDP)")
            continue
        try:
            kept = read_predictions(Path(record.run_dir) / record.predictions, record.seed)
        except (BadFile, ConfigError) as e:
            problems.append(str(e))
            continue
        by_seed.setdefault(record.seed, []).append((record, kept))
    together, separate = [], []
    for seed, members in sorted(by_seed.items(), key=lambda item: (item[0] is None, item[0] or 0)):
        separate += [kept for _, kept in members]
        folds = {record.folds for record, _ in members}
        if folds == {None}:
            together += [kept for _, kept in members]
            continue
        k = folds.pop() if len(folds) == 1 else None
        seen = sorted(record.fold for record, _ in members)
        whole = seen == list(range(k)) if k else False
        if k is None or not (whole or (partial_folds and len(set(seen)) == len(seen) and set(seen) <= set(range(k)))):
            left_out.append(f"seed {seed}: folds {seen} of {k or sorted(folds)} (a fold missing or repeated): left out")
            continue
        parts = [kept.splits["val"] for _, kept in members]
        index = np.concatenate([p[1] for p in parts])
        if len(np.unique(index)) != len(index):
            left_out.append(f"seed {seed}: its folds' images overlap: left out")
            continue
        order = np.argsort(index)
        together.append(Predictions(seed, {"val": (parts[0][0], index[order],
                                                   *(np.concatenate([p[i] for p in parts])[order] for i in (2, 3)))}))
    return together, separate, problems, left_out


def stack(runs: List[Predictions], split: str = "val") -> Optional[np.ndarray]:
    """Seeds x images right/wrong on `split`, when every run kept it for the same images; else None."""
    if not runs or any(split not in r.splits for r in runs) or len({r.correct(split)[0] for r in runs}) != 1:
        return None
    return np.stack([r.correct(split)[1] for r in runs])
