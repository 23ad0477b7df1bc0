"""What a run adds to TensorBoard beyond Lightning's scalars: the layer table (TEXT), the traced net
(GRAPHS) and one HPARAMS row with the recipe and the results, read from the run record."""
import logging
import warnings
from typing import Any, Dict

import torch
from pytorch_lightning.loggers import TensorBoardLogger

from mnist_arch.models.probe import device_of
from mnist_arch.results.record import RunRecord

log = logging.getLogger("mnist_arch")


def add_model(logger: TensorBoardLogger, net: torch.nn.Module, layers: str, graph: bool) -> None:
    """The layer table (TEXT tab) and the traced graph (GRAPHS tab); a net that cannot be traced
    (data-dependent control flow) only loses its graph, with a warning."""
    logger.experiment.add_text("model/layers", "\n".join("    " + line for line in layers.splitlines()))
    if not graph:
        return
    try:
        with warnings.catch_warnings():  # add_graph uses torch.jit.trace, deprecated in torch 2.14 (no action for us)
            warnings.filterwarnings("ignore", category=FutureWarning, message=".*torch.jit.trace.*")
            logger.experiment.add_graph(net, torch.zeros(1, 1, 28, 28, device=device_of(net)))
    except Exception as e:  # noqa: BLE001 - tracing is best effort; the run must not die for a picture
        log.warning("TensorBoard graph not written: the net could not be traced (%s: %s)", type(e).__name__, e)


def add_hparams(logger: TensorBoardLogger, config: Dict[str, Any], record: RunRecord) -> None:
    """The HPARAMS tab: one row per run with its recipe and results, so a sweep compares there. `config`: the
    config as recorded (mnist_arch/results/provenance.py: an interpolation that reads the environment as
    written, never its value). Metrics that do not exist (no test, target never reached) are NaN, shown
    blank/NaN there."""
    data, opt = config["data"], config["optimizer"]
    aug = {key: data[key] for key in ("rotation", "translate", "scale", "brightness", "contrast", "erasing")}
    hparams = {"model": record.model, "params": record.params, "optimizer": opt["name"], "lr": opt["lr"],
               "momentum": opt["momentum"] if opt.get("momentum") is not None else float("nan"),
               "weight_decay": opt["weight_decay"], "scheduler": config["scheduler"]["name"],
               "batch_size": data["batch_size"], "max_epochs": config["trainer"]["max_epochs"],
               "augmentation": ", ".join(f"{k} {v:g}" if isinstance(v, (int, float)) else f"{k} {v}"
                                         for k, v in aug.items() if v) or "none",
               "val_split": data["val"], "seed": record.seed, "status": record.status}
    metrics = {"hp/best_val_acc": record.best_val_acc, "hp/final_val_acc": record.final_val_acc,
               "hp/target_epoch": record.target_epoch, "hp/test_acc": record.test_acc,
               "hp/epochs_run": record.epochs_run}
    logger.log_hyperparams(hparams, metrics={k: float("nan") if v is None else v for k, v in metrics.items()})
    logger.finalize("success")  # Lightning closed the writer after test; flush what was just written
