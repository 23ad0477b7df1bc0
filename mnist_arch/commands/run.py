"""Train one architecture under a Hydra config, test it, and write its record (`summary.json`).

    python -m mnist_arch.run model=s6 optimizer.lr=0.05 trainer.max_epochs=20
    python -m mnist_arch.run -m model=s4,s6 seed=1,2,3      # a sweep, one run dir per job

The run itself is `mnist_arch.train.job.train` (config -> seed -> data -> net -> module -> callbacks ->
trainer -> fit -> test -> record). `main` is the command: it maps what went wrong to one line (or, in a
sweep, to the job's record) and prints the headline.
"""
import logging
import sys
from pathlib import Path
from typing import Optional

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from mnist_arch.cli import hydra_command
from mnist_arch.config.compose import register_schema
from mnist_arch.config.schema import validate
from mnist_arch.errors import RunError, printable
from mnist_arch.results import provenance
from mnist_arch.results.record import RunRecord

log = logging.getLogger("mnist_arch")
register_schema()


@hydra_command("config")  # conf/config.yaml; every error, Hydra's or the job's, one line (mnist_arch/cli.py)
def main(cfg: DictConfig) -> Optional[float]:
    """One run, or one job of a sweep. Returns the best val acc, None when the job failed. A single run that
    fails ends as one line (mnist_arch/cli.py). A failing job of a sweep records its summary.json (status,
    error) and lets the sweep go on; the leaderboard callback (mnist_arch/results/leaderboard.py) lists it and
    makes the sweep exit non-zero."""
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    in_sweep = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        validate(cfg)  # a bad value is one line here, before the import below
        # Deferred: the run's module imports Lightning, 2.6 s past torch's 1.3 s (BENCHMARKS.md, "Start-up"),
        # which a refused value or a sweep's refused job need not pay.
        from mnist_arch.train.job import train

        record = train(cfg, run_dir)
    except RunError as e:
        if not in_sweep:
            raise
        log.error("error: %s", e)
        if not (run_dir / "summary.json").is_file():  # refused before training: say so for the leaderboard
            RunRecord.refused(e.status, str(e), run_dir, model=OmegaConf.select(cfg, "model.name", default=None),
                              seed=OmegaConf.select(cfg, "seed"), overrides=provenance.overrides()).write(run_dir)
        return None
    except Exception as e:  # a crash: train() recorded it as failed; keep the traceback in the job's log
        if not in_sweep:
            raise
        log.exception("job failed: %s: %s", type(e).__name__, e)
        return None
    if record.rank:
        return record.best_val_acc  # a DDP helper rank: rank 0 reports
    if record.status == "interrupted":
        again = " ".join([*record.overrides, f"hydra.run.dir={run_dir}", "ckpt_path=last"])
        print(f"interrupted ({record.signal}) after {record.epochs_run} epoch(s); summary in "
              f"{record.run_dir}\nresume: python -m mnist_arch.run {again}", file=sys.stderr)
        sys.exit(143 if record.signal == "SIGTERM" else 130)  # the shell's codes; a sweep stops too
    print(printable(record.headline()))
    return record.best_val_acc


if __name__ == "__main__":
    main()
