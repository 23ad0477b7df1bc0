"""Is design A better than design B? A paired answer from the predictions every run keeps.

Two sources of noise decide the game at ~0.1 point: which images the validation (or test) set happens to hold,
and which seed a run happened to get. Each run keeps its final-epoch predictions on every validation and test
image (`predictions.npz`, written by the `Predictions` callback), so two designs are compared on the same images
and, where they share them, the same seeds: a design's run of seed s against the other's run of seed s, image i
against image i. Pairing removes what both share (the hard images, the seed's data order); what is left is the
difference itself.

The method (docs/selection.md): the paired two-level bootstrap. The per-seed, per-image differences
d[s, i] = correct_A[s, i] - correct_B[s, i] are resampled, images and seeds both with replacement, 4,000 times;
the difference of accuracies is the mean of d, its 95% CI the 2.5th and 97.5th percentiles of the resampled
means, and the two-sided p-value twice the smaller tail's share of resampled means at or beyond zero (Efron &
Tibshirani 1993, An Introduction to the Bootstrap, ch. 13 and 16; the paired bootstrap over test items of
Koehn 2004, "Statistical significance tests for machine translation evaluation", here with seeds resampled
too, as Bouthillier et al. 2021, "Accounting for variance in machine learning benchmarks", ask). The data
separate A and B when the CI excludes zero.
"""
import math
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from mnist_arch.errors import BadFile, ConfigError
from mnist_arch.files import check_file, replacing

FILE_NAME = "predictions.npz"
RESAMPLES = 4000
BOOTSTRAP_SEED = 0  # the same data give the same interval, every time
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


def load(path: Path, seed: Optional[int] = None) -> Predictions:
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
    method: str = "paired two-level bootstrap (seeds and images resampled with replacement)"

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


def bootstrap(d: np.ndarray, resamples: int = RESAMPLES, seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """The resampled means of d (seeds x images): images and seeds drawn with replacement, each resample's
    image draw shared by every seed of it (the same images for every run, as in the data). Images with the same
    column of values across seeds are interchangeable, so the draw is made over those few distinct columns
    (a multinomial of the images over them): the same distribution as drawing images one by one, in
    milliseconds for any number of images."""
    rng = np.random.default_rng(seed)
    n_seeds, n_images = d.shape
    columns, counts = np.unique(d.T, axis=0, return_counts=True)  # distinct columns x seeds; how many images each
    image_draws = rng.multinomial(n_images, counts / n_images, size=resamples)  # resamples x distinct columns
    per_seed = image_draws @ columns.astype(np.float64) / n_images  # resamples x seeds
    seed_weights = rng.multinomial(n_seeds, np.full(n_seeds, 1 / n_seeds), size=resamples)
    return (seed_weights * per_seed).sum(axis=1) / n_seeds


def interval(correct: np.ndarray, resamples: int = RESAMPLES) -> Tuple[float, float]:
    """95% CI of one design's accuracy (seeds x images right/wrong), by the same two-level bootstrap."""
    means = bootstrap(correct.astype(np.int8), resamples)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def compare(a: Sequence[Predictions], b: Sequence[Predictions], split: str) -> Comparison:
    """A's runs against B's on `split` (val or test): the same images required; seeds paired by number where the
    two lists agree, else in sorted order (independent runs either way)."""
    for name, runs in (("A", a), ("B", b)):
        if not runs:
            raise ConfigError(f"{name} holds no run with predictions ({FILE_NAME}; runs before this version kept none)")
        missing = [r.seed for r in runs if split not in r.splits]
        if missing:
            raise ConfigError(f"{name}'s run(s) of seed {', '.join(map(str, missing))} kept no {split} predictions "
                              f"(the test split exists only where the run tested; try --split val)")
    a, b = sorted(a, key=lambda r: (r.seed is None, r.seed or 0)), sorted(b, key=lambda r: (r.seed is None, r.seed or 0))
    if len(a) != len(b):
        raise ConfigError(f"A has {len(a)} run(s), B {len(b)}: a paired comparison needs as many runs on each "
                          "side (the same seeds, ideally)")
    keys = {r.correct(split)[0] for r in [*a, *b]}
    if len(keys) != 1:
        raise ConfigError(f"the runs' {split} images differ (another split, holdout or fold): a paired comparison "
                          "needs the same images on both sides")
    paired_seeds = [r.seed for r in a] == [r.seed for r in b]
    right_a = np.stack([r.correct(split)[1] for r in a]).astype(np.int8)
    right_b = np.stack([r.correct(split)[1] for r in b]).astype(np.int8)
    d = right_a - right_b
    means = bootstrap(d)
    difference = float(d.mean())
    low, high = float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))
    tail = min((means <= 0).sum(), (means >= 0).sum())
    p = min(1.0, 2 * float(tail + 1) / (len(means) + 1))
    return Comparison(difference=difference, ci_low=low, ci_high=high, p=p, separated=bool(low > 0 or high < 0),
                      acc_a=float(right_a.mean()), acc_b=float(right_b.mean()), split=split,
                      seeds=[(x.seed, y.seed) for x, y in zip(a, b)], images=d.shape[1], paired_seeds=paired_seeds)


def runs_of(records, partial_folds: bool = False) -> Tuple[List[Predictions], List[str]]:
    """The predictions of one design's runs (the records of one leaderboard row), one per seed: a seed's K fold
    runs pooled into one out-of-fold run over the whole training set (val only: each fold tested separately;
    `partial_folds`: the folds run so far, as a race has them). With the problems that left runs out (no
    predictions kept, folds missing or repeated), in words."""
    problems, by_seed = [], {}
    for record in records:
        if record.predictions != FILE_NAME:  # the run dir's own file, never a path a record from elsewhere names
            problems.append(f"{record.run_dir}: no {FILE_NAME} (a run before this version, or under DDP)")
            continue
        try:
            kept = load(Path(record.run_dir) / record.predictions, record.seed)
        except (BadFile, ConfigError) as e:
            problems.append(str(e))
            continue
        by_seed.setdefault(record.seed, []).append((record, kept))
    runs = []
    for seed, members in sorted(by_seed.items(), key=lambda item: (item[0] is None, item[0] or 0)):
        folds = {record.folds for record, _ in members}
        if folds == {None}:
            runs += [kept for _, kept in members]
            continue
        k = folds.pop() if len(folds) == 1 else None
        seen = sorted(record.fold for record, _ in members)
        whole = seen == list(range(k)) if k else False
        if k is None or not (whole or (partial_folds and len(set(seen)) == len(seen) and set(seen) <= set(range(k)))):
            problems.append(f"seed {seed}: folds {seen} of {k or sorted(folds)} (a fold missing or repeated): left out")
            continue
        parts = [kept.splits["val"] for _, kept in members]
        index = np.concatenate([p[1] for p in parts])
        if len(np.unique(index)) != len(index):
            problems.append(f"seed {seed}: its folds' images overlap: left out")
            continue
        order = np.argsort(index)
        runs.append(Predictions(seed, {"val": (parts[0][0], index[order], *(np.concatenate([p[i] for p in parts])[order]
                                                                            for i in (2, 3)))}))
    return runs, problems


def stack(runs: List[Predictions], split: str = "val") -> Optional[np.ndarray]:
    """Seeds x images right/wrong on `split`, when every run kept it for the same images; else None."""
    if not runs or any(split not in r.splits for r in runs) or len({r.correct(split)[0] for r in runs}) != 1:
        return None
    return np.stack([r.correct(split)[1] for r in runs])
