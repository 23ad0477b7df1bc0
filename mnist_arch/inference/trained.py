"""A trained net, found from a run dir or a checkpoint file: what evaluate, predict and export share.

A run dir gives the checkpoint its test scored (`checkpoints/best.ckpt` when summary.json says the best
weights were tested, else `checkpoints/last.ckpt`); a `.ckpt` file is taken as it is. The net is rebuilt
from the checkpoint alone (`net_from_checkpoint`: read as data, registered nets only unless a custom class
is trusted by name; mnist_arch/models/checkpoint.py). A `.pt2` file (`export --format pt2`) is a torch.export
program: code, so evaluate, predict and serve run it only when the user names it with --trust-program (its
path or sha256; mnist_arch/inference/formats.py, `read_pt2`).
"""
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Collection, Dict, List, Optional, Tuple, Union

import torch
from omegaconf import OmegaConf
from torch import nn

from mnist_arch.data.device_loader import MEAN, STD
from mnist_arch.errors import BadFile, ConfigError
from mnist_arch.files import MAX_CONFIG_BYTES, check_file
from mnist_arch.inference.formats import TRUST_OPTION, read_pt2
from mnist_arch.models import TRUST_ENV, net_from_checkpoint
from mnist_arch.results.record import FILE_NAME, RunRecord


@dataclass
class Trained:
    net: nn.Module  # eval mode, on the CPU
    checkpoint: Dict[str, Any]
    path: Path  # the .ckpt file
    run_dir: Optional[Path]  # the run it came from, when it sits in <run dir>/checkpoints/

    @property
    def name(self) -> str:
        return self.checkpoint["net_spec"]["name"]

    @property
    def out_dir(self) -> Path:
        """Where files about this net go: its run dir, else beside the checkpoint."""
        return self.run_dir or self.path.parent

    @torch.no_grad()
    def probabilities(self, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
        """(N, 10) class probabilities for (N, 1, 28, 28) images with pixels in [0, 1]."""
        x = images.float().sub(MEAN).div(STD)
        return torch.cat([self.net(x[i:i + batch_size]).softmax(dim=1) for i in range(0, len(x), batch_size)])


@dataclass(frozen=True)
class Trust:
    """What the user said may run: custom net classes a checkpoint may name, .pt2 programs (paths or sha256s)."""

    targets: Collection[str] = ()
    programs: Collection[str] = ()


def add_trust_option(parser) -> None:
    """`--trust-target CLASS` and `--trust-program FILE|SHA256` on a command that loads a trained net
    (docs/trust.md); `trust_of(args)` reads them back."""
    parser.add_argument("--trust-target", action="append", default=[], metavar="CLASS",
                        help=f"a custom net class the checkpoint may name (repeatable; or {TRUST_ENV}=a.B,c.D); "
                             "without it only registered nets are built from a checkpoint")
    parser.add_argument(TRUST_OPTION, action="append", default=[], metavar="FILE|SHA256",
                        help="a .pt2 program you trust to run, by its path or its sha256 (repeatable; export prints "
                             "the sha256 of what it writes); without it a .pt2 is refused unopened")


def trust_of(args) -> Trust:
    return Trust(args.trust_target, args.trust_program)


def checkpoint_of(path: Union[str, Path]) -> Path:
    """The checkpoint a run dir's test scored, or `path` itself when it is not a folder."""
    path = Path(path)
    if not path.is_dir():
        if not path.exists():
            raise BadFile(f"{path}: no such run dir or checkpoint file")
        return path  # read_checkpoint says what is wrong with it, if anything
    name = "last.ckpt"
    if (path / FILE_NAME).exists():
        record = RunRecord.read(path)
        if record.status == "unreadable":  # it decides which weights: never guess past a damaged one
            raise BadFile(f"{record.error}; pass the checkpoint itself instead (e.g. {path / 'checkpoints' / name})")
        name = "best.ckpt" if record.test_ckpt == "best" else name
    found = path / "checkpoints" / name
    if not found.exists():
        raise BadFile(f"{path}: no checkpoints/{name} in this run dir (a run with callbacks.checkpoint=false keeps "
                      "none)")
    return found


def trained_net(path: Union[str, Path], trust: Trust = Trust()) -> Trained:
    """The trained net of a run dir, .ckpt or .pt2 file; `trust`: what the user allows to run (see Trust)."""
    if Path(path).suffix == ".pt2" and not Path(path).is_dir():
        if not Path(path).exists():
            raise BadFile(f"{path}: no such run dir or checkpoint file")
        net = read_pt2(Path(path), trust.programs)
        return Trained(net, {"net_spec": {"name": Path(path).stem, "exported": "pt2"}}, Path(path), None)
    ckpt = checkpoint_of(path)
    net, checkpoint = net_from_checkpoint(ckpt, trust.targets)
    run_dir = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else None
    return Trained(net, checkpoint, ckpt, run_dir)


def load_teachers(paths: Collection[str], data) -> Tuple[List[nn.Module], Dict[str, Any]]:
    """The nets of `distill.teacher` (run dirs, or checkpoints inside one), each checked to have trained on no
    image the student validates on: a holdout student's teacher kept the same holdout out (data.holdout_size), a
    fold student's the same fold; a student validating on the test set may have any teacher (none trains on the
    test set). `data`: the student's DataConf. (the nets, in eval mode; what the student's record says of them)."""
    nets, named = [], []
    for given in paths:
        trained = trained_net(given)  # read as data, as every checkpoint: a custom class only if trusted by name
        if trained.run_dir is None or not (trained.run_dir / FILE_NAME).is_file():
            raise ConfigError(f"distill.teacher={given}: a teacher is a run dir (or a checkpoint in one): its "
                              f"{FILE_NAME} says which images it trained on")
        record = RunRecord.read(trained.run_dir)
        if record.status != "completed":
            raise ConfigError(f"distill.teacher={given}: its run did not complete ({record.status})")
        theirs = run_data_config(trained.run_dir) or {}
        same = {"holdout": record.val_split == "holdout" and theirs.get("holdout_size") == data.holdout_size,
                "fold": record.val_split == "fold" and (record.folds, record.fold) == (data.folds, data.fold),
                "test": True}[data.val]
        if not same:
            raise ConfigError(f"distill.teacher={given}: it validated on {record.val_split} "
                              f"(holdout_size {theirs.get('holdout_size')}, fold {record.fold} of {record.folds}) and so "
                              f"trained on images this run validates on (data.val={data.val}); a teacher for a "
                              f"{data.val} run is trained with the same data.val{' and holdout_size' * (data.val == 'holdout')}")
        nets.append(trained.net)
        named.append({"run_dir": str(trained.run_dir), "model": record.model, "params": record.params,
                      "val_split": record.val_split, "final_val_acc": record.final_val_acc,
                      "train_seconds": round(sum(record.epoch_time_s), 1)})
    return nets, {"teachers": named, "train_seconds": round(sum(t["train_seconds"] for t in named), 1)}


def run_data_config(run_dir: Path) -> Optional[Dict[str, Any]]:
    """The data group of a run dir's config.yaml as written (an interpolation in a file from elsewhere is not
    resolved), within the run config's size limit; None when it has none; BadFile for one that is no config."""
    saved = Path(run_dir) / "config.yaml"
    if not saved.exists():
        return None
    check_file(saved, "config file", MAX_CONFIG_BYTES)
    try:
        data = OmegaConf.to_container(OmegaConf.load(saved), resolve=False)["data"]
    except Exception as e:  # noqa: BLE001 - YAML errors and odd shapes alike: the file is data
        raise BadFile(f"{saved}: not a readable run config ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise BadFile(f"{saved}: not a readable run config (its data group is not a mapping)")
    return data
