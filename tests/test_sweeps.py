"""Sweeps and scale-out on synthetic IDX files: fault-tolerant multirun and its leaderboard, joblib, DDP
on CPU, resume, SIGTERM (the Optuna search: test_search.py). Jobs in other processes (joblib workers, DDP ranks) cannot see
the test's patched checksums, so they read the synthetic files with data.verify=false."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from mnist_arch.commands import report
from mnist_arch.commands import run
from mnist_arch.errors import ConfigError
from mnist_arch.results import leaderboard
from mnist_arch.results.record import RunRecord
from mnist_arch.train import job as training
from mnist_arch.train.module import Classifier
from tests.conftest import ctrl_c_at, fast_overrides, hydra_command

REPO = Path(__file__).resolve().parents[1]


def hydra_main(argv, monkeypatch):
    """`python -m mnist_arch.run <argv>` in this process; returns the exit code."""
    return hydra_command(run.main, argv, monkeypatch)


def summaries(sweep_dir: Path):
    return [json.loads(p.read_text()) for p in sorted(sweep_dir.glob("*/summary.json"))]


def test_a_sweep_goes_on_past_failing_jobs_and_exits_nonzero(mnist_root, tmp_path, monkeypatch, capsys):
    sweep = tmp_path / "sweep"
    # s4 (17,120) fits an 18,000 budget, s6 (19,866) does not; lr=-1 is a bad value; tests.nets.NaNScores
    # gives a NaN loss at its first step.
    code = hydra_main(["-m", *fast_overrides(mnist_root), "budget.max_params=18000", "model=s4,s6",
                       "optimizer.lr=0.01,-1", f"hydra.sweep.dir={sweep}"], monkeypatch)
    nan_sweep = tmp_path / "nan"
    nan_code = hydra_main(["-m", *fast_overrides(mnist_root), "model=custom",
                           "model.net._target_=tests.nets.NaNScores", f"hydra.sweep.dir={nan_sweep}"], monkeypatch)

    jobs = summaries(sweep)
    assert len(jobs) == 4 and code not in (0, None)
    by_status = {(j["model"], j["status"]) for j in jobs}
    assert by_status == {("s4", "completed"), ("s6", "over_budget"), ("s4", "bad_config"), ("s6", "bad_config")}
    bad = next(j for j in jobs if j["status"] == "bad_config")
    assert "optimizer.lr=-1" in bad["error"] and "optimizer.lr=-1" in bad["overrides"]

    board = (sweep / "leaderboard.md").read_text()
    assert "| 1 | s4 | 17,120 | 0.01 |" in board and "3 job(s) did not complete" in board
    assert "over_budget: 19,866 > 18,000" in board and (sweep / "leaderboard.csv").is_file()
    assert "3 job(s) of the sweep did not complete" in str(code)

    nan_job = summaries(nan_sweep)[0]
    assert nan_code not in (0, None) and nan_job["status"] == "non_finite_loss"
    assert nan_job["epochs_run"] == 0 and "training loss is nan at epoch 1, batch 0" in nan_job["error"]


def test_leaderboard_numbers_from_known_summaries(tmp_path, capsys):
    budget = {"max_params": 20_000, "max_epochs": 20, "target_acc": 0.994, "allow_fc": False}
    for i, (lr, seed, val_acc, test, wall) in enumerate([
        ("0.01", 1, [0.9930, 0.9920], 0.9921, 100.0),  # best 99.30, final 99.20, target never
        ("0.01", 2, [0.99] * 8 + [0.9940, 0.9936], 0.9936, 110.0),  # best 99.40 = target at epoch 9
        ("0.05", 1, [0.99] * 4 + [0.9950, 0.9944], 0.9944, 90.0),  # target at epoch 5
        ("0.05", 2, [0.99] * 6 + [0.9946], 0.9946, 96.0),  # target at epoch 7, also the final
    ]):
        how = ["threads=1", "trainer.enable_progress_bar=false"] if i == 1 else []  # how it ran: not a setting
        RunRecord(status="completed", model="s4", params=17_120, budget=budget, seed=seed, val_acc=val_acc,
                  test_acc=test, wall_time_s=wall,
                  overrides=[*how, f"optimizer.lr={lr}", f"seed={seed}", "trainer.max_epochs=10"]).write(
                      tmp_path / "sweep" / str(i))
    RunRecord(status="over_budget", model="s6", seed=1, error="19,866 > 18,000",
              overrides=["optimizer.lr=0.05", "seed=1", "trainer.max_epochs=10"]).write(tmp_path / "sweep" / "4")

    differing, rows, failed = leaderboard.leaderboard(leaderboard.read_records(tmp_path / "sweep"))
    assert differing == ["optimizer.lr"]  # seed is averaged over; max_epochs is the same everywhere
    assert [(r["model"], r["setting"]) for r in rows] == [("s4", {"optimizer.lr": "0.05"}),
                                                          ("s4", {"optimizer.lr": "0.01"})]
    top = rows[0]
    assert top["best"][0] == pytest.approx(0.9948) and top["best"][1] == pytest.approx(0.000282843, abs=1e-8)
    assert top["final"][0] == pytest.approx(0.9945) and top["test"][0] == pytest.approx(0.9945)
    assert top["target"] == (2, 2, [5, 7]) and top["seeds"] == [1, 2] and top["wall_time_s"][0] == 93.0
    assert rows[1]["target"] == (1, 2, [9])
    assert failed == [{"model": "s6", "setting": {"optimizer.lr": "0.05"}, "seed": 1, "status": "over_budget",
                       "error": "19,866 > 18,000", "run_dir": str(tmp_path / "sweep" / "4")}]

    report.main([str(tmp_path / "sweep")])
    out = capsys.readouterr().out
    # no CI: these hand-written runs kept no predictions
    assert "| 1 | s4 | 17,120 | 0.05 | 1,2 | 99.48% ± 0.03 | 99.45% ± 0.01 | - | 2/2 (ep 5, 7) | 99.45% ± 0.01 | 93 |" in out
    assert "s6 optimizer.lr=0.05 seed 1: over_budget: 19,866 > 18,000" in out
    lines = (tmp_path / "sweep" / "leaderboard.csv").read_text().splitlines()
    assert lines[0].startswith("model,params,optimizer.lr,n_seeds,seeds,folds,best_val_acc_mean")
    assert lines[1].startswith("s4,17120,0.05,2,1 2,,0.9948") and lines[-1].startswith("s6,,0.05,1,1,")

    report.main([str(tmp_path / "sweep"), "--csv", str(tmp_path / "board.csv")])  # --csv: the CSV goes there
    assert (tmp_path / "board.csv").read_text().splitlines() == lines


def test_pareto_plot_of_known_summaries(tmp_path):
    budget = {"max_params": 20_000, "max_epochs": 20, "target_acc": 0.994, "allow_fc": False}
    for i, (model, params, seed, acc, lr) in enumerate([
            ("small", 3_762, 1, 0.9930, 0.1), ("small", 3_762, 2, 0.9940, 0.1), ("big", 19_000, 1, 0.9950, 0.1),
            ("mid", 9_000, 1, 0.9920, 0.1), ("mid", 9_000, 1, 0.9910, 0.2)]):
        RunRecord(status="completed", model=model, params=params, budget=budget, seed=seed, val_acc=[acc],
                  test_acc=acc, overrides=[f"seed={seed}", f"optimizer.lr={lr}"]).write(tmp_path / "runs" / str(i))
    differing, rows, _ = leaderboard.leaderboard(leaderboard.read_records(tmp_path / "runs"))
    ax = leaderboard.pareto(rows, differing).axes[0]
    points = sorted((c.lines[0].get_xdata()[0], round(c.lines[0].get_ydata()[0], 4)) for c in ax.containers)
    assert points == [(3_762, 99.35), (9_000, 99.1), (9_000, 99.2), (19_000, 99.5)]  # small: its two seeds' mean
    front = next(line for line in ax.lines if line.get_label() == "Pareto front")
    assert list(front.get_xdata()) == [3_762, 19_000]  # mid is beaten by small with fewer parameters
    assert any(list(line.get_xdata()) == [20_000, 20_000] for line in ax.lines)  # the parameter rule
    assert any(list(line.get_ydata()) == [99.4, 99.4] for line in ax.lines)  # the target
    # The settings name a point only where its model is not enough to tell it from another.
    assert sorted(t.get_text() for t in ax.texts if "(n=" in t.get_text()) == [
        "big (n=1)", "mid lr=0.1 (n=1)", "mid lr=0.2 (n=1)", "small (n=2)"]

    # A point under --ymin sits on the bottom edge with its value in its label, so nothing is hidden.
    ax = leaderboard.pareto(rows, differing, ymin=99.3).axes[0]
    assert ax.get_ylim()[0] == 99.3 and any(t.get_text() == "mid lr=0.2 (n=1): 99.10% ± 0.00, below the axis"
                                            for t in ax.texts)

    report.main([str(tmp_path / "runs"), "--plot", str(tmp_path / "pareto.png"), "--ymin", "99"])
    from matplotlib.image import imread

    assert imread(tmp_path / "pareto.png").shape[:2] == (500, 800)


def test_pareto_labels_repeated_models_by_the_folder_their_seeds_share(tmp_path):
    """Confirmed designs of one family (convnet) gathered from several studies: each is named by its design's
    folder, not by the long list of settings in which they differ."""
    for design, params, lr in [("trial23", 3_842, 0.1), ("frontier_4k", 3_670, 0.2)]:
        for seed in (6, 7):
            RunRecord(status="completed", model="convnet", params=params, seed=seed, val_acc=[0.991],
                      test_acc=0.991, overrides=[f"seed={seed}", f"optimizer.lr={lr}", "data.rotation=5.0"]).write(
                          tmp_path / "heldout" / design / f"seed{seed}")
    RunRecord(status="completed", model="speedrun", params=18_482, seed=6, val_acc=[0.994], test_acc=0.994,
              overrides=["seed=6"]).write(tmp_path / "heldout" / "speedrun" / "seed6")
    differing, rows, _ = leaderboard.leaderboard(leaderboard.read_records(tmp_path / "heldout"))
    ax = leaderboard.pareto(rows, differing).axes[0]
    assert sorted(t.get_text() for t in ax.texts if "(n=" in t.get_text()) == [
        "convnet frontier_4k (n=2)", "convnet trial23 (n=2)", "speedrun (n=1)"]


def test_a_crowded_pareto_plot_labels_only_its_front(tmp_path):
    """A study's dozens of trials: every point drawn, only the front's labelled (the rest would overlap)."""
    n = leaderboard.CROWDED + 3
    for i in range(n):  # params rise with i; accuracy rises on even i only, so the front is the even points
        acc = 0.990 + 0.0002 * i if i % 2 == 0 else 0.980
        RunRecord(status="completed", model=f"t{i}", params=1_000 * (i + 1), seed=1, val_acc=[acc], test_acc=acc,
                  overrides=["seed=1"]).write(tmp_path / "runs" / str(i))
    differing, rows, _ = leaderboard.leaderboard(leaderboard.read_records(tmp_path / "runs"))
    ax = leaderboard.pareto(rows, differing).axes[0]
    assert len(ax.containers) == n
    assert sorted(t.get_text() for t in ax.texts if "(n=" in t.get_text()) == sorted(
        f"t{i} (n=1)" for i in range(0, n, 2))
    assert "the front labelled" in ax.get_title()


def test_report_cli_refuses_a_folder_without_runs(tmp_path, capsys):
    with pytest.raises(SystemExit) as done:
        report.main([str(tmp_path)])
    assert done.value.code == 2 and capsys.readouterr().err == f"error: {tmp_path}: no summary.json beneath it\n"


def test_joblib_runs_two_jobs_in_parallel_with_shared_cores(mnist_root, tmp_path, monkeypatch):
    sweep = tmp_path / "par"
    code = hydra_main(["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *fast_overrides(mnist_root),
                       "data.verify=false", "seed=1,2", f"hydra.sweep.dir={sweep}"], monkeypatch)
    jobs = summaries(sweep)
    assert code == 0 and [j["status"] for j in jobs] == ["completed", "completed"]
    assert [j["seed"] for j in jobs] == [1, 2]
    cores = len(os.sched_getaffinity(0))
    assert all(j["device"].endswith(f", {max(1, cores // 2)} threads") for j in jobs)
    assert all(j["data_verified"] is False for j in jobs) and (sweep / "leaderboard.md").is_file()


def test_a_sweep_started_as_its_own_process_runs_every_job(mnist_root, tmp_path):
    """`python -m mnist_arch.run -m ...` as typed: the command's fast exit (cli.leave) comes after the sweep, not
    after its first job (a command wrapped twice once ended the process there, exit 0, the other jobs never run)."""
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "mnist_arch.run", "-m", *fast_overrides(mnist_root), "data.verify=false",
           "callbacks.plots=false", "trainer.max_epochs=1", "seed=1,2", f"hydra.sweep.dir={sweep}"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [RunRecord.read(sweep / job).seed for job in ("0", "1")] == [1, 2]
    assert (sweep / "leaderboard.md").is_file() and "leaderboard (" in done.stdout


def test_ddp_cpu_two_processes_end_to_end(mnist_root, tmp_path):
    run_dir = tmp_path / "ddp"
    overrides = [o for o in fast_overrides(mnist_root) if o != "trainer=cpu"]
    cmd = [sys.executable, "-m", "mnist_arch.run", "trainer=ddp_cpu", *overrides, "data.verify=false",
           f"hydra.run.dir={run_dir}"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = RunRecord.read(run_dir)
    assert summary.status == "completed" and summary.world_size == 2 and summary.rank == 0
    headlines = [line for line in done.stdout.splitlines() if line.startswith("s4 · 17,120 params")]
    assert summary.epochs_run == 2 and len(headlines) == 1  # rank 0's; the other rank reports nothing
    # The test acc is reduced over both ranks' shards: it equals one process scoring every test image with
    # the final weights
    from mnist_arch.inference.scoring import data_settings, score
    from mnist_arch.inference.trained import trained_net

    assert summary.test_acc == pytest.approx(score(trained_net(run_dir), data_settings(
        None, [f"data.root={mnist_root}", "data.download=false", "data.verify=false"]))["accuracy"], abs=1e-6)


def test_resume_from_last_matches_the_uninterrupted_run(make_cfg, mnist_root, tmp_path, monkeypatch):
    overrides = fast_overrides(mnist_root) + ["trainer.max_epochs=3", "trainer.deterministic=true",
                                              "data.rotation=10", "seed=7"]
    straight = training.train(make_cfg(overrides), tmp_path / "straight")

    real_step = ctrl_c_at(monkeypatch, epoch=1, batch=2)
    stopped = training.train(make_cfg(overrides), tmp_path / "resumed")
    assert stopped.status == "interrupted" and stopped.epochs_run == 1
    assert (tmp_path / "resumed" / "checkpoints" / "interrupted.ckpt").is_file()

    monkeypatch.setattr(Classifier, "training_step", real_step)
    resumed = training.train(make_cfg(overrides + ["ckpt_path=last"]), tmp_path / "resumed")
    assert resumed.status == "completed" and resumed.resumed_from.endswith("last.ckpt")
    # the module's history and the per-class callback's state both come back from the checkpoint
    for key in ("val_acc", "val_loss", "train_loss", "train_acc", "lr", "val_acc_per_class", "unpredicted"):
        assert getattr(resumed, key) == getattr(straight, key), key
    assert len(resumed.unpredicted) == 3
    assert resumed.test_acc == straight.test_acc


def test_resume_without_a_checkpoint_is_one_clear_error(make_cfg, mnist_root, tmp_path):
    with pytest.raises(ConfigError, match="ckpt_path=last: no checkpoint at .*last.ckpt"):
        training.train(make_cfg(fast_overrides(mnist_root) + ["ckpt_path=last"]), tmp_path / "fresh")


def test_sigterm_saves_a_checkpoint_and_says_interrupted(mnist_root, tmp_path, monkeypatch, capsys):
    real_step = Classifier.training_step

    def sigterm_in_second_epoch(self, batch, batch_idx):
        if self.current_epoch == 1 and batch_idx == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # Lightning's handler turns it into a stop after this batch
        return real_step(self, batch, batch_idx)

    monkeypatch.setattr(Classifier, "training_step", sigterm_in_second_epoch)
    previous = signal.signal(signal.SIGTERM, lambda *args: None)  # a safety net, should Lightning not hook it
    try:
        code = hydra_main([*fast_overrides(mnist_root), f"hydra.run.dir={tmp_path / 'run'}"], monkeypatch)
    finally:
        signal.signal(signal.SIGTERM, previous)
    summary = RunRecord.read(tmp_path / "run")
    assert code == 143 and summary.status == "interrupted" and summary.signal == "SIGTERM"
    assert summary.epochs_run == 1 and (tmp_path / "run" / "checkpoints" / "interrupted.ckpt").is_file()
    assert f"hydra.run.dir={tmp_path / 'run'} ckpt_path=last" in capsys.readouterr().err


@pytest.mark.parametrize("overrides, target", [
    (["hydra/launcher=slurm", "hydra.launcher.partition=gpu"], "hydra_plugins.hydra_submitit_launcher"),
    (["hydra/launcher=submitit_slurm"], "hydra_plugins.hydra_submitit_launcher"),
    (["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"], "hydra_plugins.hydra_joblib_launcher"),
])
def test_launcher_configs_compose(make_cfg, overrides, target):
    cfg = make_cfg(overrides, hydra=True)
    assert cfg.hydra.launcher._target_.startswith(target)
    if overrides[0] == "hydra/launcher=slurm":
        assert cfg.hydra.launcher.gpus_per_node == 1 and cfg.hydra.launcher.partition == "gpu"
