"""Where a result came from: the code's commit (and its uncommitted diff), library versions, device,
and the command-line overrides, so every summary.json can be traced and re-run."""
import platform
import subprocess
from pathlib import Path
from typing import Dict, List, Optional, Tuple

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
    (run_dir / DIFF_FILE).write_text(diff)
    return commit + "-dirty", DIFF_FILE


def versions() -> Dict[str, Optional[str]]:
    from importlib.metadata import PackageNotFoundError, version

    found: Dict[str, Optional[str]] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def device_name(device) -> str:
    import torch

    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"cpu: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def overrides() -> List[str]:
    """The command line's overrides of this Hydra job; [] outside Hydra (tests, notebooks)."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
