"""Hydra's callbacks of a run and a sweep (conf/config.yaml, hydra.callbacks): a run dir holding a link refused
before Hydra writes into it; a sweep's leaderboard written and printed when it ends."""
import sys
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mnist_arch.cli import USAGE, one_line
from mnist_arch.errors import ConfigError, printable
from mnist_arch.files import refuse_links
from mnist_arch.results.leaderboard import write


class NoLinksInRunDir(Callback):
    """Hydra callback (conf/config.yaml): before Hydra writes .hydra/ and run.log into the run dir, and so
    before anything of the run does, refuse a folder that holds a link (mnist_arch/files.py, `refuse_links`).
    A folder handed over from elsewhere is where this matters: resuming in it (`hydra.run.dir=<dir>
    ckpt_path=last`) would otherwise write through a link planted at config.yaml or .hydra/config.yaml."""

    def on_run_start(self, config, **kwargs) -> None:
        self._refuse(config, "hydra.run.dir")

    def on_multirun_start(self, config, **kwargs) -> None:
        self._refuse(config, "hydra.sweep.dir")

    @staticmethod
    def _refuse(config, key: str) -> None:
        # Hydra 1.3 turns a callback's exception into a warning and goes on: the refusal is said and ends here
        try:
            folder = OmegaConf.select(config, key)
        except OmegaConfBaseException:  # a name the folder resolver refuses: Hydra's next step says so, in one line
            return
        try:
            refuse_links(folder)
        except ConfigError as e:
            print(f"error: {one_line(str(e))}", file=sys.stderr)
            sys.exit(USAGE)


class Leaderboard(Callback):
    """Hydra callback: when a sweep ends, write its leaderboard into the sweep dir and print it; exit
    non-zero if any job did not complete. (It also makes the sweep dir when the sweep starts, so that a
    sweeper plugin can keep its state there.)"""

    def on_multirun_start(self, config, **kwargs) -> None:
        Path(config.hydra.sweep.dir).mkdir(parents=True, exist_ok=True)

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        text, failed = write(sweep_dir)
        print(f"\nleaderboard ({sweep_dir / 'leaderboard.md'}):\n{printable(text)}")
        if failed:
            sys.exit(f"{len(failed)} job(s) of the sweep did not complete (see the leaderboard)")
