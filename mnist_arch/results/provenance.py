"""Where a result came from: the code's commit (and its uncommitted diff), library versions, device,
and the command-line overrides, so every summary.json can be traced and re-run.

What a record keeps is what was written, never a secret it reached: an interpolation that calls a resolver
(`${oc.env:TOKEN}` reads the environment) is kept as written in the overrides, config.yaml and every tracker,
and so is any value that refers to one; a password in a URL (`https://user:pass@host`) is masked.
"""
import os
import platform
import re
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from mnist_arch.errors import redact
from mnist_arch.files import write_atomic

PACKAGES = ["mnist-arch", "torch", "torchvision", "pytorch-lightning", "torchmetrics", "hydra-core"]
DIFF_FILE = "git.diff"  # in the run dir, when the checkout had uncommitted changes


HERE = Path(__file__).resolve().parent  # the package: its checkout's git state is the code's


def git_state(run_dir: Optional[Path] = None, repo: Path = HERE) -> Tuple[Optional[str], Optional[str]]:
    """(commit, diff file name). The commit gets '-dirty' when tracked files have uncommitted changes;
    their `git diff HEAD` is then saved as <run_dir>/git.diff, so the exact code can be restored.
    (None, None) when not running from a git checkout (e.g. installed from a wheel)."""

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10,
                              check=True).stdout

    try:
        commit = git("rev-parse", "HEAD").strip()
        diff = git("diff", "HEAD") if git("status", "--porcelain", "--untracked-files=no").strip() else ""
    except (OSError, subprocess.SubprocessError):
        return None, None
    if not diff:
        return commit, None
    if run_dir is None:
        return commit + "-dirty", None

    run_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(run_dir / DIFF_FILE, diff)
    return commit + "-dirty", DIFF_FILE


def versions() -> Dict[str, Optional[str]]:
    found: Dict[str, Optional[str]] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def process_age_s() -> Optional[float]:
    """Seconds since this process started, from the kernel's own start time (Linux's /proc, 10 ms ticks): the
    interpreter's start and the imports before any of our code ran. None where /proc is not there."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])  # field 22: starttime
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return uptime - ticks / os.sysconf("SC_CLK_TCK")


def device_name(device) -> str:
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"cpu: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def overrides() -> List[str]:
    """The command line's overrides of this Hydra job as written (unresolved, passwords masked); [] outside
    Hydra (tests, notebooks)."""
    if not HydraConfig.initialized():
        return []
    return [redact(o) for o in OmegaConf.to_container(HydraConfig.get().overrides.task, resolve=False)]


RESOLVER_CALL = re.compile(r"\$\{\s*[\w.]+\s*:")  # ${name:...}: a resolver (oc.env, oc.decode, ...), not a key
REFERENCE = re.compile(r"\$\{\s*([^${}:]+?)\s*\}")  # ${a.b}: another key's value


def recorded(cfg) -> Dict[str, Any]:
    """The config as a record keeps it (config.yaml, a tracker's params): resolved, but a value whose
    interpolation calls a resolver, itself or through the keys it refers to, is kept as written, and every
    URL's password is masked."""
    raw = dict(_leaves(OmegaConf.to_container(cfg, resolve=False)))

    def as_written(key: str, depth: int = 0) -> bool:
        value = raw.get(key)
        if not isinstance(value, str) or "${" not in value:
            return False
        if RESOLVER_CALL.search(value) or depth > 20:
            return True
        # a reference to a key that is not a leaf here (relative, or a whole group) is kept as written too
        return any(ref not in raw or as_written(ref, depth + 1) for ref in REFERENCE.findall(value))

    def rebuild(node, path=()):
        if isinstance(node, dict):
            return {k: rebuild(v, (*path, str(k))) for k, v in node.items()}
        if isinstance(node, list):
            return [rebuild(v, (*path, str(i))) for i, v in enumerate(node)]
        key = ".".join(path)
        value = raw[key] if as_written(key) else node
        return redact(value) if isinstance(value, str) else value

    return rebuild(OmegaConf.to_container(cfg, resolve=True))


def _leaves(node, path=()):
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _leaves(value, (*path, str(key)))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _leaves(value, (*path, str(i)))
    else:
        yield ".".join(path), node
