"""Score a trained net again: accuracy, per-class accuracy and the confusion matrix, from the checkpoint alone.

    python -m mnist_arch.evaluate outputs/2026-11-23/10-00-00_s4            # the 10k test set
    python -m mnist_arch.evaluate outputs/.../checkpoints/last.ckpt data.val=holdout

The first argument is a run dir (its tested checkpoint) or a .ckpt file; the rest are `data.*` overrides
(the run's own config.yaml gives the rest of the data settings when there is one). Writes
`evaluate.json` into the run dir (or beside the checkpoint).
"""
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mnist_arch.errors import RunError

EVALUATE_VERSION = 1


def data_settings(run_dir: Optional[Path], overrides: List[str]):
    """The data group: the run's config.yaml when there is one, else the defaults; then the overrides."""
    from mnist_arch.config import ConfigError, DataConf, compose

    bad = [o for o in overrides if not o.startswith("data.")]
    if bad:
        raise ConfigError(f"{bad[0]}: evaluate takes data.* overrides only (e.g. data.val=holdout)")
    saved = run_dir / "config.yaml" if run_dir else None
    base = OmegaConf.load(saved).data if saved and saved.is_file() else compose().data
    merged = OmegaConf.merge(OmegaConf.structured(DataConf), base,
                             OmegaConf.from_dotlist([o[len("data."):] for o in overrides]))
    return OmegaConf.to_object(merged)


def score(trained, data) -> Dict[str, Any]:
    """Predictions over the split `data.val` names (test: the 10k test set; holdout: the held-out 60k part)."""
    from mnist_arch.data import MNISTDataModule

    # The resident-tensor pipeline whatever the run trained with: without augmentation both pipelines give
    # the same normalised images, and its splits are plain tensors.
    datamodule = MNISTDataModule(**{**asdict(data), "pipeline": "tensor"})
    datamodule.setup("test")
    images, labels = datamodule.splits["test" if data.val == "test" else "val"]
    predicted = trained.probabilities(images.unsqueeze(1).float() / 255, data.eval_batch_size).argmax(dim=1)
    confusion = torch.bincount(labels * 10 + predicted, minlength=100).reshape(10, 10)  # [true, predicted]
    per_class = (confusion.diag() / confusion.sum(dim=1).clamp(min=1)).tolist()
    return {"version": EVALUATE_VERSION, "checkpoint": str(trained.path), "model": trained.name,
            "net_spec": trained.checkpoint["net_spec"], "split": "10k test" if data.val == "test" else "holdout",
            "images": int(confusion.sum()), "correct": int(confusion.diag().sum()),
            "accuracy": round(confusion.diag().sum().item() / max(1, confusion.sum().item()), 6),
            "per_class": [round(a, 6) for a in per_class], "confusion": confusion.tolist()}


def report(result: Dict[str, Any]) -> str:
    lines = [f"{result['model']} · {result['checkpoint']} · {result['split']}: {result['accuracy']:.2%} "
             f"({result['correct']:,}/{result['images']:,})",
             "per class: " + " · ".join(f"{k} {a:.1%}" for k, a in enumerate(result["per_class"])),
             "confusion (rows: true digit, columns: predicted):",
             "     " + "".join(f"{p:>6}" for p in range(10))]
    lines += [f"  {t}  " + "".join(f"{n:>6}" for n in row) for t, row in enumerate(result["confusion"])]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> None:
    from mnist_arch import trained as trained_nets

    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(__doc__.strip())
        sys.exit(0 if args else 2)
    try:
        trained = trained_nets.load(args[0])
        result = score(trained, data_settings(trained.run_dir, args[1:]))
    except (RunError, OmegaConfBaseException) as e:
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        sys.exit(2)
    out = trained.out_dir / "evaluate.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{report(result)}\nwritten: {out}")


if __name__ == "__main__":
    main()
