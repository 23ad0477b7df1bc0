"""Find a learning rate: Lightning's range test on the same config a run would use.

    python -m mnist_arch.lr_find model=s6 optimizer=sgd data.batch_size=128

Composes the config exactly as `python -m mnist_arch.run` does (any overrides, experiments included),
trains for up to NUM_TRAINING steps while the lr grows exponentially from MIN_LR to MAX_LR (Lightning's
`Tuner.lr_find`; the recipe's scheduler is set aside for the test), writes `lr_find.png` (loss against
lr, the suggestion marked) and `lr_find.json` into its run dir, and prints the suggestion as the override
to paste: `optimizer.lr=0.0123`. The suggestion is the steepest descent of the smoothed loss, a starting
point for a run, not a tuned value.
"""
import json
import logging
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from mnist_arch.cli import hydra_command
from mnist_arch.config.compose import register_schema
from mnist_arch.errors import RunError
from mnist_arch.files import replacing, write_atomic

MIN_LR, MAX_LR, NUM_TRAINING = 1e-5, 1.0, 100
log = logging.getLogger("mnist_arch")
register_schema()


def find(cfg: DictConfig, run_dir: Path) -> float:
    # Deferred: Lightning (2.8 s past this module's imports; BENCHMARKS.md, "Start-up") once Hydra has composed
    # the config, so that a refused override is one line without it
    import pytorch_lightning as pl
    from pytorch_lightning.tuner import Tuner

    from mnist_arch.train.job import setup, trainer_arguments

    constant = {"_target_": None, "name": "none", "interval": "epoch"}  # the range test drives the lr itself
    run = setup(cfg, scheduler=constant)
    conf = run.conf
    trainer_kwargs = {**trainer_arguments(conf.trainer, run_dir), "enable_progress_bar": False, "enable_model_summary": False}
    trainer = pl.Trainer(**trainer_kwargs, logger=False, enable_checkpointing=False, default_root_dir=run_dir)
    finder = Tuner(trainer).lr_find(run.model, datamodule=run.datamodule, min_lr=MIN_LR, max_lr=MAX_LR,
                                    num_training=NUM_TRAINING, update_attr=False)
    suggestion = finder.suggestion()
    if suggestion is None:
        raise RunError("the range test found no descent to suggest from (too few steps? try more batches)")
    run_dir.mkdir(parents=True, exist_ok=True)
    figure = finder.plot(suggest=True)
    figure.axes[0].set_title(f"{conf.model.name}, {conf.optimizer.name}, batch {conf.data.batch_size}: "
                             f"suggested lr {suggestion:.3g}", fontsize=9)
    with replacing(run_dir / "lr_find.png") as tmp:  # by a rename: a link planted at a name is not followed
        figure.savefig(tmp, dpi=90, format="png")
    write_atomic(run_dir / "lr_find.json", json.dumps(
        {"suggestion": suggestion, "lr": finder.results["lr"], "loss": finder.results["loss"]}, indent=2) + "\n")
    return suggestion


@hydra_command("config")  # the run's config: the same overrides as a run
def main(cfg: DictConfig) -> None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    suggestion = find(cfg, run_dir)
    print(f"plot: {run_dir / 'lr_find.png'}\nsuggested: optimizer.lr={suggestion:.3g}")


if __name__ == "__main__":
    main()
