"""The wheel carries conf/, and an installed copy composes its config outside the checkout."""
import os
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_wheel_ships_the_configs_and_runs_outside_the_checkout(tmp_path):
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "-w", str(tmp_path / "dist"), str(REPO)],
        capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr
    wheel = next((tmp_path / "dist").glob("mnist_arch-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for config in ["config.yaml", "model/s4.yaml", "model/s6.yaml", "optimizer/sgd.yaml", "scheduler/onecycle.yaml"]:
        assert f"mnist_arch/conf/{config}" in names

    site = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--target",
                              str(site), str(wheel)], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr
    env = {**os.environ, "PYTHONPATH": str(site)}
    show = subprocess.run([sys.executable, "-c", "import mnist_arch; print(mnist_arch.__file__)"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert show.stdout.startswith(str(site))  # the installed copy, not the checkout
    composed = subprocess.run([sys.executable, "-m", "mnist_arch.run", "model=s6", "--cfg", "job"],
                              capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert composed.returncode == 0, composed.stderr
    assert "name: s6" in composed.stdout and "name: sgd" in composed.stdout


def test_console_commands_are_on_path_and_complete_like_hydra(tmp_path):
    """pip install puts the commands on PATH; mnist-arch completes overrides through Hydra's -sc."""
    import shutil
    import tomllib

    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert {"mnist-arch", "mnist-arch-layers", "mnist-arch-summary", "mnist-arch-report", "mnist-arch-evaluate",
            "mnist-arch-predict", "mnist-arch-export", "mnist-arch-lr-find", "mnist-arch-data", "mnist-arch-search",
            "mnist-arch-serve"} == set(scripts)
    for name, target in scripts.items():  # every entry names a function that exists
        module, _, function = target.partition(":")
        assert callable(getattr(__import__(module, fromlist=[function]), function)), name
        assert shutil.which(name), f"{name} is not on PATH (reinstall: pip install -e '.[dev]')"

    env = {**os.environ, "COMP_LINE": "mnist-arch mod"}
    query = subprocess.run(["mnist-arch", "-sc", "query=bash"], capture_output=True, text=True, env=env,
                           cwd=tmp_path, timeout=120)
    assert "model=" in query.stdout.split()
    env["COMP_LINE"] = "mnist-arch model=public_"
    options = subprocess.run(["mnist-arch", "-sc", "query=bash"], capture_output=True, text=True, env=env,
                             cwd=tmp_path, timeout=120).stdout.split()
    assert options == ["model=public_3762", "model=public_7918", "model=public_9994"]
    table = subprocess.run(["mnist-arch-layers", "model=s6"], capture_output=True, text=True, cwd=tmp_path,
                           timeout=120)
    assert table.returncode == 0 and "params: 19,866 ≤ 20,000 ✓" in table.stdout
