"""Score a trained net again: accuracy, per-class accuracy and the confusion matrix, from the checkpoint alone.

The command is mnist_arch/commands/evaluate.py (python -m mnist_arch.evaluate); this is what it calls.
"""
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Dict, List, Optional

from torchmetrics.functional.classification import multiclass_confusion_matrix

from mnist_arch.config.compose import load, override_pairs
from mnist_arch.config.schema import VAL_SPLITS
from mnist_arch.data import MNISTDataModule
from mnist_arch.data.device_loader import tta_mean
from mnist_arch.data.fetch import MD5, raw_folder
from mnist_arch.errors import BadFile, ConfigError
from mnist_arch.inference.trained import run_data_config

EVALUATE_VERSION = 1
FROM_THE_RUN = ("val", "holdout_size", "folds", "fold")  # data settings a run dir's config.yaml decides, unless overridden


def data_settings(run_dir: Optional[Path], overrides: List[str]):
    """This machine's data group with the overrides, and the run's split where the overrides leave it."""
    bad = [o for o in overrides if not o.startswith("data.")]
    if bad:
        raise ConfigError(f"{bad[0]}: evaluate takes data.* overrides only (e.g. data.val=holdout)")
    data = load(overrides).data
    run_data = run_data_config(run_dir) if run_dir else None  # raw values: nothing in it is resolved
    if run_data is None:
        return data
    saved = run_dir / "config.yaml"
    given = {key[len("data."):] for key in override_pairs(overrides)}
    split = {key: run_data[key] for key in FROM_THE_RUN if key not in given and key in run_data}
    root = run_data.get("root")
    if "root" not in given and isinstance(root, str) and all((raw_folder(root) / name).is_file() for name in MD5):
        split["root"] = root  # only a folder that already holds the data: nothing is fetched into it
    if split.get("val", "test") not in VAL_SPLITS or \
            any(type(split.get(key, 1)) is not int for key in ("holdout_size", "folds", "fold")):
        raise BadFile(f"{saved}: its data.val / data.holdout_size / data.folds / data.fold are not a split ({split})")
    try:
        return replace(data, **split)  # the schema's checks run again on the new values
    except ConfigError as e:
        raise BadFile(f"{saved}: its data settings do not hold: {e}") from None


SPLIT_NAMES = {"test": lambda data: "10k test", "holdout": lambda data: "holdout",
               "fold": lambda data: f"fold {data.fold} of {data.folds}"}


def score(trained, data, tta: str = "none") -> Dict[str, Any]:
    """Predictions over the split `data.val` names (test: the 10k test set; holdout: the held-out part of the 60k;
    fold: that fold of the 60k). tta="shifts": also `accuracy_tta`, the same images scored on the image and its
    four one-pixel shifts, their probabilities averaged (as a run's tta=shifts does), beside the plain score."""
    # The resident-tensor pipeline whatever the run trained with: without augmentation both pipelines give
    # the same normalised images, and its splits are plain tensors.
    datamodule = MNISTDataModule(**{**asdict(data), "pipeline": "tensor"}, seed=0)  # the seed shuffles nothing here
    datamodule.setup("test")
    images, labels = datamodule.splits["test" if data.val == "test" else "val"]
    pixels = images.unsqueeze(1).float() / 255
    predicted = trained.probabilities(pixels, data.eval_batch_size).argmax(dim=1)
    confusion = multiclass_confusion_matrix(predicted, labels, num_classes=10)  # [true, predicted], as in training
    per_class = (confusion.diag() / confusion.sum(dim=1).clamp(min=1)).tolist()
    return {"version": EVALUATE_VERSION, "checkpoint": str(trained.path), "model": trained.name,
            "net_spec": trained.checkpoint["net_spec"], "split": SPLIT_NAMES[data.val](data),
            "images": int(confusion.sum()), "correct": int(confusion.diag().sum()),
            "accuracy": round(confusion.diag().sum().item() / max(1, confusion.sum().item()), 6),
            "per_class": [round(a, 6) for a in per_class], "confusion": confusion.tolist(),
            **({"tta": tta, "accuracy_tta": _tta_accuracy(trained, pixels, labels, data.eval_batch_size)}
               if tta != "none" else {})}


def _tta_accuracy(trained, pixels, labels, batch_size: int) -> float:
    """Accuracy of the mean probabilities over TTA_SHIFTS, as a run's tta=shifts scores (tta_mean)."""
    mean = tta_mean(lambda view: trained.probabilities(view, batch_size), pixels)
    return round((mean.argmax(dim=1) == labels).float().mean().item(), 6)


def report(result: Dict[str, Any]) -> str:
    tta = f" · with TTA ({result['tta']}) {result['accuracy_tta']:.2%}" if "accuracy_tta" in result else ""
    lines = [f"{result['model']} · {result['checkpoint']} · {result['split']}: {result['accuracy']:.2%} "
             f"({result['correct']:,}/{result['images']:,}){tta}",
             "per class: " + " · ".join(f"{k} {a:.1%}" for k, a in enumerate(result["per_class"])),
             "confusion (rows: true digit, columns: predicted):",
             "     " + "".join(f"{p:>6}" for p in range(10))]
    lines += [f"  {t}  " + "".join(f"{n:>6}" for n in row) for t, row in enumerate(result["confusion"])]
    return "\n".join(lines)
