"""Against a real one-node Slurm cluster (scripts/local_slurm.sh up; SLURM_CONF set): the submitit
launcher sweep, a 2-task DDP job under srun, and preemption by SIGTERM resumed to the same numbers.

Marked `slurm`: deselected by default, run with `python -m pytest -m slurm`, skipped (with the reason)
when no cluster answers. Jobs run in other processes, so they read the synthetic files with
data.verify=false.
"""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mnist_arch.results.record import RunRecord
from tests.conftest import fast_overrides

pytestmark = pytest.mark.slurm


def _cluster_problem():
    if not shutil.which("sinfo") or not os.environ.get("SLURM_CONF"):
        return "no Slurm cluster (run scripts/local_slurm.sh up and export SLURM_CONF)"
    state = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True, timeout=20)
    if state.returncode != 0 or "idle" not in state.stdout + "mixed" and "mixed" not in state.stdout:
        return f"the Slurm cluster does not answer as idle: {state.stdout.strip() or state.stderr.strip()}"
    return None


@pytest.fixture(scope="module", autouse=True)
def cluster():
    problem = _cluster_problem()
    if problem:
        pytest.skip(problem)
    partition = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True).stdout.split()[0]
    return partition.rstrip("*")


def job_overrides(root: Path):
    return [o for o in fast_overrides(root) if o != "trainer=cpu"] + ["data.verify=false"]


def run_cli(args, cwd: Path, timeout=600, prefix=()):
    return subprocess.run([*prefix, sys.executable, "-m", "mnist_arch.run", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout)


def test_a_sweep_through_the_submitit_launcher(cluster, mnist_root, tmp_path):
    """model=s4,s6 seed=1,2 as four Slurm jobs; s6 is over an 18,000 budget: recorded, the others complete."""
    sweep = tmp_path / "sweep"
    done = run_cli(["-m", "hydra/launcher=slurm", f"hydra.launcher.partition={cluster}", "hydra.launcher.gpus_per_node=0",
                    "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1", "hydra.launcher.timeout_min=10",
                    "model=s4,s6", "seed=1,2", "++trainer.fast_dev_run=true", "budget.max_params=18000",
                    *job_overrides(mnist_root), f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    jobs = [RunRecord.read(p) for p in sorted(sweep.glob("*/summary.json"))]
    assert sorted((j.model, j.seed, j.status) for j in jobs) == [
        ("s4", 1, "completed"), ("s4", 2, "completed"), ("s6", 1, "over_budget"), ("s6", 2, "over_budget")]
    assert done.returncode != 0 and "2 job(s) of the sweep did not complete" in done.stderr
    board = (sweep / "leaderboard.md").read_text()
    assert "| 1 | s4 | 17,120 | 1,2 |" in board and "over_budget: 19,866 > 18,000" in board
    assert all(j.device.endswith(", 1 threads") for j in jobs if j.status == "completed")  # cpus_per_task
    assert len(list((sweep / ".submitit").glob("*/*_result.pkl"))) == 4  # four real Slurm jobs


def test_two_task_ddp_under_srun(cluster, mnist_root, tmp_path):
    """srun --ntasks-per-node=2: Lightning's SLURMEnvironment gives the ranks; rank 0 alone writes; the
    test accuracy is reduced over both shards (it equals one process scoring all 80 test images)."""
    run_dir = tmp_path / "ddp"
    done = run_cli(["trainer=ddp_cpu", *job_overrides(mnist_root), f"hydra.run.dir={run_dir}"], cwd=tmp_path,
                   prefix=["srun", "-p", cluster, "-N", "1", "--ntasks-per-node=2", "--cpus-per-task=1", "-l"])
    assert done.returncode == 0, done.stderr[-3000:]
    record = RunRecord.read(run_dir)
    assert record.status == "completed" and record.world_size == 2 and record.rank == 0 and record.epochs_run == 2
    # both ranks joined the process group; Lightning says so in run.log (the console keeps our lines only)
    log = (run_dir / "run.log").read_text()
    assert "GLOBAL_RANK: 0, MEMBER: 1/2" in log and "GLOBAL_RANK: 1, MEMBER: 2/2" in log
    assert "GLOBAL_RANK" not in done.stdout + done.stderr
    headlines = [line for line in done.stdout.splitlines() if "s4 · 17,120 params" in line]
    assert len(headlines) == 1 and headlines[0].startswith("0: ")  # srun -l labels it: rank 0's
    assert [p.name for p in run_dir.glob("*.json")] == ["summary.json"]

    from mnist_arch.commands import evaluate

    evaluate.main([str(run_dir)])
    alone = json.loads((run_dir / "evaluate.json").read_text())
    assert alone["images"] == 80 and alone["accuracy"] == pytest.approx(record.test_acc, abs=1e-6)


def test_preempted_by_sigterm_and_resumed_to_the_same_numbers(cluster, mnist_root, tmp_path):
    """A batch job gets SIGTERM from scancel after its first epoch; resumed with ckpt_path=last in a second
    job it ends where an uninterrupted run (deterministic) ends."""
    # one thread everywhere: the same float reductions in the job, the resumed job and the straight run
    overrides = [*job_overrides(mnist_root), "trainer=cpu", "trainer.max_epochs=12", "trainer.deterministic=true",
                 "trainer.limit_train_batches=10", "data.rotation=10", "seed=3", "callbacks.plots=false",
                 "callbacks.stop_at_target=false", "threads=1"]
    straight = tmp_path / "straight"
    assert run_cli([*overrides, f"hydra.run.dir={straight}"], cwd=tmp_path).returncode == 0

    run_dir = tmp_path / "preempted"
    script = tmp_path / "job.sh"
    command = " ".join([sys.executable, "-m", "mnist_arch.run", *overrides, f"hydra.run.dir={run_dir}"])
    script.write_text(f"#!/bin/bash\nexec {command} \"$@\"\n")
    submit = subprocess.run(["sbatch", "-p", cluster, "--parsable", "-o", str(tmp_path / "job_%j.out"),
                             "-c", "1", str(script)], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    job = submit.stdout.strip().split(";")[0]
    last = run_dir / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 180
    while not last.is_file() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert last.is_file(), "the job never finished its first epoch"
    subprocess.run(["scancel", "--batch", "--signal=TERM", job], check=True, timeout=30)
    deadline = time.monotonic() + 120
    while subprocess.run(["squeue", "-h", "-j", job], capture_output=True, text=True).stdout.strip() and \
            time.monotonic() < deadline:
        time.sleep(0.5)
    stopped = RunRecord.read(run_dir)
    assert stopped.status == "interrupted" and stopped.signal == "SIGTERM" and 1 <= stopped.epochs_run < 12
    assert "resume: python -m mnist_arch.run" in (tmp_path / f"job_{job}.out").read_text()

    resumed = run_cli([*overrides, f"hydra.run.dir={run_dir}", "ckpt_path=last"], cwd=tmp_path,
                      prefix=["srun", "-p", cluster, "-c", "1"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    after, before = RunRecord.read(run_dir), RunRecord.read(straight)
    assert after.status == "completed" and after.resumed_from.endswith("last.ckpt")
    for key in ("val_acc", "val_loss", "train_loss", "train_acc", "lr"):
        assert getattr(after, key) == getattr(before, key), key
    assert after.test_acc == before.test_acc


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_two_search_workers_as_slurm_jobs_share_one_study(cluster, mnist_root, tmp_path, database):
    """Two sbatch jobs run the same search command on one study (its folder on a shared disk; its storage SQLite
    there, or a PostgreSQL server with the locks in the database: scripts/local_postgres.sh up, and the
    MNIST_ARCH_TEST_POSTGRES and PGPASSWORD it prints): together they train exactly search.n_trials trials, each
    once, and leave none RUNNING."""
    import uuid

    from tests.test_search import load, small

    study_dir, more = tmp_path / "study", []
    if database == "postgresql":
        if not (os.environ.get("MNIST_ARCH_TEST_POSTGRES") and os.environ.get("PGPASSWORD")):
            pytest.skip("no PostgreSQL (scripts/local_postgres.sh up, and export what it prints)")
        name = f"slurm_{uuid.uuid4().hex[:8]}"
        more = [f"search.storage={os.environ['MNIST_ARCH_TEST_POSTGRES']}", f"search.study_name={name}"]
    argv = [a for a in small(mnist_root, study_dir, "search.n_trials=4", *more) if a != "trainer=cpu"]
    command = " ".join([sys.executable, "-m", "mnist_arch.search", *(f"'{a}'" for a in argv)])
    jobs = [subprocess.run(["sbatch", "-p", cluster, "--parsable", "-c", "1", "--mem=1G", "-o",
                            str(tmp_path / f"worker{i}_%j.out"), "--wrap", f"cd {Path.cwd()} && {command}"],
                           capture_output=True, text=True, check=True, timeout=30).stdout.strip() for i in (1, 2)]
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and subprocess.run(["squeue", "-h", "-j", ",".join(jobs)], capture_output=True,
                                                         text=True).stdout.strip():
        time.sleep(2)
    study = load(study_dir) if not more else load(study_dir, name, os.environ["MNIST_ARCH_TEST_POSTGRES"])
    trained = [t for t in study.trials if t.state.name == "COMPLETE" and not t.user_attrs.get("infeasible")]
    logs = "".join(p.read_text() for p in tmp_path.glob("worker*.out"))
    assert len(trained) == 4 and not [t for t in study.trials if t.state.name in ("RUNNING", "WAITING")], logs[-3000:]
    assert sorted(p.name for p in (study_dir / "trials").iterdir()) == [f"{t.number:04d}" for t in study.trials]
    assert len({t.user_attrs["worker"] for t in study.trials}) == 2  # both jobs took trials
