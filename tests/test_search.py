"""The architecture search (python -m mnist_arch.search) on synthetic IDX files: a study is a folder of
normal run dirs, infeasible nets are never trained, the pruner stops runs, workers share one study without
losing or repeating a trial, a killed worker's trial is run again, and confirm scores the test set.
Worker processes cannot see the test's patched checksums, so trials read the files with data.verify=false."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest

from mnist_arch.commands import report
from mnist_arch.search import space
from mnist_arch.search.schema import SearchConf
from mnist_arch.commands import search
from mnist_arch.search import objective
from mnist_arch.search import study as studies
from mnist_arch.train import job as training
from tests.conftest import fast_overrides, hydra_command

REPO = Path(__file__).resolve().parents[1]


def small(root: Path, study: Path, *more: str):
    """A 4k study shrunk to seconds: two-stage nets whose only choice is a width (96 breaks the budget)."""
    return ["search=4k", *fast_overrides(root), "data.verify=false", "data.holdout_size=64",
            "budget.max_epochs=2", "optimizer.weight_decay=0", "data.rotation=0", "data.translate=0",
            "search.space.optimizer.lr.low=0.01", "search.space.convnet.stages=2", "search.space.convnet.convs.high=1",
            "search.space.convnet.width.choices=[3,4,96,97]", "search.space.convnet.transition.choices=[0]",
            "search.start=[]", "data.scale=0", "label_smoothing=0",
            f"hydra.run.dir={study}", *more]


def search_main(argv, monkeypatch) -> int:
    return hydra_command(search.main, argv, monkeypatch)


def load(study: Path, name: str = "4k", storage: str = None):
    return optuna.load_study(study_name=name, storage=studies._storage(storage or f"sqlite:///{study / 'study.db'}"))


def test_trials_take_precision_auto_unless_the_command_line_names_one():
    conf = SimpleNamespace(experiment="frontier_4k")  # what base_overrides reads of a space
    assert objective.base_overrides(conf, ["search=4k", "seed=3"]) == [
        "experiment=frontier_4k", "seed=3", "trainer.precision=auto", "data.val=holdout",
        "trainer.enable_progress_bar=false"]
    assert objective.base_overrides(conf, ["trainer.precision=32-true"]) == [
        "experiment=frontier_4k", "trainer.precision=32-true", "data.val=holdout", "trainer.enable_progress_bar=false"]


def test_a_study_is_a_folder_of_runs_and_resumes(mnist_root, tmp_path, monkeypatch, capsys):
    study_dir = tmp_path / "study"
    assert search_main(small(mnist_root, study_dir, "search.n_trials=3"), monkeypatch) == 0
    study = load(study_dir)
    trained = [t for t in study.trials if t.state.name == "COMPLETE" and not t.user_attrs.get("infeasible")]
    infeasible = [t for t in study.trials if t.user_attrs.get("infeasible")]
    assert len(trained) == 3 and all(t.state.name == "COMPLETE" for t in study.trials)
    for t in study.trials:  # one run dir per trial, its summary.json a normal run record
        record = json.loads((study_dir / "trials" / f"{t.number:04d}" / "summary.json").read_text())
        assert record["overrides"] == t.user_attrs["overrides"] and "data.val=holdout" in record["overrides"]
        assert "trainer.precision=auto" in record["overrides"]  # the trials' default: bf16 only where it pays
    for t in trained:
        record = json.loads((study_dir / "trials" / f"{t.number:04d}" / "summary.json").read_text())
        assert record["status"] == "completed" and record["val_split"] == "holdout" and record["test_acc"] is None
        assert t.values == [record["final_val_acc"]] and t.constraints["params"] <= 0
    for t in infeasible:  # judged, never trained: no checkpoint, constraints say by how much it missed
        run_dir = study_dir / "trials" / f"{t.number:04d}"
        assert t.user_attrs["infeasible"] == "over_budget" and t.constraints["params"] > 0
        assert json.loads((run_dir / "summary.json").read_text())["status"] == "over_budget"
        assert not (run_dir / "checkpoints").exists()
    summary = json.loads((study_dir / "study.json").read_text())
    assert summary["counts"]["complete"] == 3 and summary["counts"]["infeasible"] == len(infeasible)
    assert [row["trial"] for row in summary["front"]] == [t.number for t in sorted(trained, key=lambda t: -t.values[0])]
    assert summary["front"][0]["command"].startswith("python -m mnist_arch.run experiment=frontier_4k ")
    out = capsys.readouterr().out
    assert "Best trials of study 4k" in out
    assert (study_dir / "front.md").is_file() and (study_dir / "front.png").is_file()

    report.main([str(study_dir)])  # the report reads a study as it reads a sweep
    board = capsys.readouterr().out
    assert infeasible and board.count("| convnet |") == 3 and f"{len(infeasible)} job(s) did not complete" in board

    before = {p: p.stat().st_mtime for p in (study_dir / "trials").glob("*/summary.json")}
    assert search_main(small(mnist_root, study_dir, "search.n_trials=4"), monkeypatch) == 0  # the same command
    again = load(study_dir)
    assert len([t for t in again.trials if t.state.name == "COMPLETE" and not t.user_attrs.get("infeasible")]) == 4
    assert all(p.stat().st_mtime == m for p, m in before.items())  # what finished was kept, not rerun


class ScriptedTrial:
    """An Optuna trial whose pruner says stop after the given epoch (0-based), recording what it was told."""

    def __init__(self, prune_after: int):
        self.prune_after, self.reported, self.user_attrs = prune_after, [], {}

    def report(self, value, step):
        self.reported.append((step, value))

    def should_prune(self):
        return self.reported[-1][0] >= self.prune_after

    def set_user_attr(self, key, value):
        self.user_attrs[key] = value


def test_a_pruned_run_stops_after_the_judged_epoch_whole(make_cfg, mnist_root, tmp_path):
    from mnist_arch.errors import Pruned
    from mnist_arch.train.callbacks import Pruning

    trial = ScriptedTrial(prune_after=1)
    overrides = fast_overrides(mnist_root) + ["trainer.max_epochs=4", "data.val=holdout", "data.holdout_size=64"]
    with pytest.raises(Pruned, match=r"^pruned after epoch 2 \(holdout val acc 0\.\d{4}\)$"):
        training.train(make_cfg(overrides), tmp_path / "run", overrides, callbacks=[Pruning(trial, True)], test=False)
    record = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert record["status"] == "pruned" and record["epochs_run"] == 2 and len(record["train_loss"]) == 2
    assert [step for step, _ in trial.reported] == [0, 1] and "alive_at" in trial.user_attrs
    assert [value for _, value in trial.reported] == record["val_acc"]
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file() and record["test_acc"] is None


def _job(objectives):
    conf = SearchConf(study_name="s", experiment=None, space={"x": {"low": 0, "high": 1}}, objectives=objectives,
                      n_trials=1, workers=1, storage=None, sampler="random", pruner="auto", pruner_warmup_epochs=0,
                      pruner_percentile=75.0, seed=0, confirm=0, confirm_seeds=[1], start=[], race=0,
                      race_candidates=None, race_rounds=5, race_val="holdout", race_folds=5, race_min_rounds=2,
                      race_alpha=0.05)
    return conf


def test_the_front_is_the_undominated_feasible_trials():
    study = optuna.create_study(directions=["maximize", "minimize"])
    for acc, params, infeasible in [(0.99, 5000, False), (0.98, 3000, False), (0.97, 4000, False),  # dominated
                                    (0.995, 9000, True), (0.96, 1000, False), (0.99, 6000, False)]:  # dominated
        study.add_trial(optuna.create_trial(values=[acc, params], user_attrs={"infeasible": "over_budget"}
                                            if infeasible else {}))
    assert [(t.values[0], t.values[1]) for t in studies.front(study, _job(["val_acc", "params"]))] == \
        [(0.96, 1000), (0.98, 3000), (0.99, 5000)]


@pytest.mark.parametrize("overrides, message", [
    (["data.val=test"], "error: data.val=test: a search validates on the holdout split; the 10k test set is scored "
                        "only by search.confirm"),
    (["search.objectives=[val_acc,params]", "search.pruner=median"],
     "error: search.pruner=median needs one objective: Optuna's pruners judge one value per epoch"),
    (["search.objectives=[params]"], "error: search.objectives=['params']: [val_acc], or val_acc and one of params, "
                                     "macs, train_seconds"),
    (["+search.space.data.erasing=[0.0,0.1]"], "error: search.space.data.erasing: a list is ambiguous here; "
                                             "write {choices: [...]} to pick one of them"),
    (["search.space.optimizer.lr.low=-1"], "error: search.space.optimizer.lr: log=true needs low > 0"),
    (["search=nope"], "error: search=nope is not an option of search; its options: 20k, 4k, 8k, _shared, golf, recipe, "
                      "speedrun"),
])
def test_a_bad_search_is_refused_in_one_line(mnist_root, tmp_path, monkeypatch, capsys, overrides, message):
    code = search_main(["search=8k", f"hydra.run.dir={tmp_path / 'study'}", *overrides], monkeypatch)
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(message) and err.count("\n") == 1, err
    assert not (tmp_path / "study" / "study.db").exists()


def test_a_study_name_that_would_leave_outputs_is_refused_before_any_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert search_main(["search=8k", "search.study_name=../../../escaped"], monkeypatch) == 2
    assert capsys.readouterr().err == ("error: search.study_name='../../../escaped' names a folder: letters, digits "
                                       "and _ . - only (at most 100, not starting with a dot), so that it stays "
                                       "inside outputs/\n")
    assert list(tmp_path.iterdir()) == [] and not (tmp_path.parent / "escaped").exists()


@pytest.mark.parametrize("storage, message", [
    ("sqlite:////proc/x.db", "cannot be opened (OperationalError: (sqlite3.OperationalError) unable to open database "
                             "file)"),
    ("sqlite:///{tmp}/missing/study.db", "cannot be opened (OperationalError"),
    ("sqlite:///{tmp}/not_a_database.db", "cannot be opened (DatabaseError: (sqlite3.DatabaseError) file is not a "
                                          "database)"),
    ("mysql://user@localhost/db", "the driver for mysql is not installed (pip install pymysql)"),
    ("postgresql://user@localhost/db", "the driver for postgresql is not installed (pip install 'mnist-arch[postgres]'"),
    ("journal:///{tmp}/missing/journal.log", "cannot be opened (FileNotFoundError"),
])
def test_a_storage_that_cannot_be_opened_is_one_line(tmp_path, monkeypatch, capsys, storage, message):
    import sys

    monkeypatch.setitem(sys.modules, "psycopg", None)  # the postgres extra not installed (the suite has it)
    (tmp_path / "not_a_database.db").write_text("hello\n")
    url = storage.replace("{tmp}", str(tmp_path))
    code = search_main(["search=8k", f"hydra.run.dir={tmp_path / 'study'}", f"search.storage={url}"], monkeypatch)
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"error: search.storage={url}: {message}") and err.count("\n") == 1, err


def test_no_search_space_is_one_line(tmp_path, monkeypatch, capsys):
    assert search_main([f"hydra.run.dir={tmp_path}"], monkeypatch) == 2
    assert capsys.readouterr().err.startswith("error: pick a search space: search=<name>")


def test_space_overrides_are_what_hydra_reads_back(make_cfg):
    trial = optuna.trial.FixedTrial({"stages": 2, "convs_1": 2, "width_1": 6, "padding_1": "valid", "transition_1": 4,
                                     "convs_2": 1, "width_2": 12, "padding_2": "same", "transition_2": 0,
                                     "head": "conv_gap", "optimizer.lr": 0.125, "data.batch_size": 64})
    spec = {"convnet": {"stages": {"choices": [2, 3]}, "convs": {"low": 1, "high": 3},
                        "width": {"choices": [6, 12]}, "padding": {"choices": ["same", "valid"]},
                        "transition": {"choices": [0, 4]}, "head": {"choices": ["gap_conv", "conv_gap"]}},
            "optimizer": {"lr": {"low": 0.01, "high": 0.5, "log": True}},
            "data": {"batch_size": {"choices": [64, 128]}, "rotation": 5.0}}
    space.check(spec)
    overrides = space.sample(trial, spec)
    assert overrides == ["model=convnet", "model.net.stages=[[6,6],[12]]", "model.net.padding=[valid,same]",
                         "model.net.transitions=[[4],[]]", "model.net.conv=full", "model.net.head=conv_gap",
                         "optimizer.lr=0.125",
                         "data.batch_size=64", "data.rotation=5.0"]
    cfg = make_cfg(overrides)
    assert cfg.model.net.stages == [[6, 6], [12]] and cfg.model.net.transitions == [[4], []]
    assert cfg.optimizer.lr == 0.125 and cfg.data.rotation == 5.0


@pytest.mark.parametrize("storage", ["sqlite", "journal"])
def test_two_worker_processes_share_one_study_losing_and_repeating_nothing(mnist_root, tmp_path, monkeypatch,
                                                                            storage):
    study_dir = tmp_path / "study"
    url = f"sqlite:///{study_dir / 'study.db'}" if storage == "sqlite" else f"journal:///{tmp_path / 'journal.log'}"
    more = ["search.n_trials=4", "search.workers=2"] + ([f"search.storage={url}"] if storage == "journal" else [])
    assert search_main(small(mnist_root, study_dir, *more), monkeypatch) == 0
    study = load(study_dir, storage=url)
    trained = [t for t in study.trials if t.state.name == "COMPLETE" and not t.user_attrs.get("infeasible")]
    assert len(trained) == 4 and not [t for t in study.trials if t.state.name in ("RUNNING", "WAITING", "FAIL")]
    workers = {t.user_attrs["worker"] for t in study.trials}
    assert len(workers) == 2  # both processes took trials
    dirs = sorted(p.name for p in (study_dir / "trials").iterdir())
    assert dirs == [f"{t.number:04d}" for t in study.trials]  # one run dir per trial, none shared, none missing
    for t in trained:
        record = json.loads((study_dir / "trials" / f"{t.number:04d}" / "summary.json").read_text())
        assert record["overrides"] == t.user_attrs["overrides"] and record["final_val_acc"] == t.values[0]


def training_trials(study_dir: Path) -> list:
    """The study's RUNNING trials that have trained an epoch (a checkpoint written); none before the study exists."""
    try:
        return [t for t in load(study_dir).trials if t.state.name == "RUNNING"
                and (study_dir / "trials" / f"{t.number:04d}" / "checkpoints").exists()]
    except Exception:  # noqa: BLE001 - the study (or its folder) is not created yet
        return []


def test_a_killed_workers_trial_is_failed_and_run_again(mnist_root, tmp_path):
    """SIGKILL one worker mid-trial: the other worker fails that trial and runs it again (same values)."""
    study_dir = tmp_path / "study"
    argv = [a for a in small(mnist_root, study_dir, "search.n_trials=4", "search.workers=2",
                             "trainer.limit_train_batches=10") if not a.startswith("budget.max_epochs")]
    argv = [a if a != "trainer.max_epochs=2" else "trainer.max_epochs=4" for a in argv] + ["budget.max_epochs=4"]
    process = subprocess.Popen([sys.executable, "-m", "mnist_arch.search", *argv], cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    killed, deadline = None, time.monotonic() + 120
    try:
        while killed is None and time.monotonic() < deadline:
            time.sleep(0.5)
            running = training_trials(study_dir)
            if running:
                killed = running[0]
                os.kill(int(killed.user_attrs["worker"].rpartition(":")[2]), signal.SIGKILL)
        out, _ = process.communicate(timeout=180)
    finally:
        process.kill()
    assert killed is not None, out
    study = load(study_dir)
    assert study.trials[killed.number].state.name == "FAIL"
    again = [t for t in study.trials if t.user_attrs.get("retry_of") == killed.number]
    assert len(again) == 1 and again[0].params == killed.params and again[0].state.name == "COMPLETE"
    assert not [t for t in study.trials if t.state.name == "RUNNING"]


def _two_workers_training(mnist_root, study_dir):
    """A two-worker study whose trials train for long enough to be signalled mid-run; returns the driver and,
    once both workers train (a checkpoint written), their process ids and trials."""
    argv = [a for a in small(mnist_root, study_dir, "search.n_trials=2", "search.workers=2",
                             "trainer.limit_train_batches=10") if not a.startswith("budget.max_epochs")]
    argv = [a if a != "trainer.max_epochs=2" else "trainer.max_epochs=30" for a in argv] + ["budget.max_epochs=30"]
    driver = subprocess.Popen([sys.executable, "-m", "mnist_arch.search", *argv], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        time.sleep(0.5)
        running = training_trials(study_dir)
        if len(running) == 2:
            return driver, {int(t.user_attrs["worker"].rpartition(":")[2]) for t in running}, running
    driver.kill()
    pytest.fail(f"two workers never trained together: {driver.communicate()[0]}")


def _gone(pids, within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if not [pid for pid in pids if Path(f"/proc/{pid}").exists()]:
            return True
        time.sleep(0.2)
    return False


@pytest.mark.skipif(not Path("/proc/self").exists(), reason="reads /proc to see the workers end")
def test_sigterm_to_the_search_stops_its_workers_and_keeps_their_runs(mnist_root, tmp_path):
    """kill (or scancel) reaches the driver alone: it passes SIGTERM on, each worker stops after its batch and
    records its run interrupted, the trials are queued again, and the command exits 143."""
    study_dir = tmp_path / "study"
    driver, workers, trials = _two_workers_training(mnist_root, study_dir)
    try:
        driver.send_signal(signal.SIGTERM)
        out, _ = driver.communicate(timeout=90)
    finally:
        driver.kill()
        for pid in workers:  # should the test fail, no worker outlives it
            if Path(f"/proc/{pid}").exists():
                os.kill(pid, signal.SIGKILL)
    assert driver.returncode == 143, out
    assert "interrupted; the study is kept" in out and "Traceback" not in out
    assert _gone(workers, 5), "a worker outlived its driver"
    for t in trials:
        record = json.loads((study_dir / "trials" / f"{t.number:04d}" / "summary.json").read_text())
        assert record["status"] == "interrupted" and record["signal"] == "SIGTERM"
    study = load(study_dir)
    assert [study.trials[t.number].state.name for t in trials] == ["FAIL", "FAIL"]
    assert sorted(t.user_attrs["retry_of"] for t in study.trials if "retry_of" in t.user_attrs) == \
        sorted(t.number for t in trials)  # the same values run again next time


@pytest.mark.skipif(not Path("/proc/self").exists(), reason="reads /proc to see the workers end")
def test_workers_of_a_killed_search_stop_by_themselves(mnist_root, tmp_path):
    """SIGKILL to the driver (nothing can be passed on): each worker sees its driver gone and stops the same
    way, its run recorded interrupted, rather than training on unseen."""
    study_dir = tmp_path / "study"
    driver, workers, trials = _two_workers_training(mnist_root, study_dir)
    driver.kill()
    driver.communicate(timeout=30)
    try:
        assert _gone(workers, 60), "a worker trained on after its driver was killed"
    finally:
        for pid in workers:
            if Path(f"/proc/{pid}").exists():
                os.kill(pid, signal.SIGKILL)
    for t in trials:
        record = json.loads((study_dir / "trials" / f"{t.number:04d}" / "summary.json").read_text())
        assert record["status"] == "interrupted" and record["signal"] == "SIGTERM"


def test_confirm_retrains_the_best_on_the_60k_and_scores_the_test_set(mnist_root, tmp_path, monkeypatch, capsys):
    study_dir = tmp_path / "study"
    assert search_main(small(mnist_root, study_dir, "search.n_trials=2", "search.confirm=1",
                             "search.confirm_seeds=[1,2]"), monkeypatch) == 0
    best = studies.front(load(study_dir), _job(["val_acc"]))[0]
    runs = [json.loads((study_dir / "confirm" / f"{best.number:04d}" / f"seed{s}" / "summary.json").read_text())
            for s in (1, 2)]
    assert [r["seed"] for r in runs] == [1, 2] and all(r["val_split"] == "test" and r["test_ckpt"] == "final"
                                                       for r in runs)
    table = (study_dir / "confirm.md").read_text()
    mean = 100 * (runs[0]["test_acc"] + runs[1]["test_acc"]) / 2
    assert f"| {best.number} | " in table and f"| 1,2 | {mean:.2f}% ± " in table
    assert "data.val=test callbacks.stop_at_target=false test_weights=final" in table
    assert "enable_progress_bar" not in table  # a confirm run shows its epochs (the trials' switch is not kept)
    assert all(r["epochs_run"] == 2 for r in runs)
    assert "epoch 2/2" in capsys.readouterr().out


def dashboard_studies(storage: str) -> list:
    """The study names optuna-dashboard (the dashboard extra) serves from `storage`: a real server on the loopback,
    read within 30 s, then stopped."""
    import socket
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(["optuna-dashboard", storage, "--host", "127.0.0.1", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline, names = time.monotonic() + 30, None
        while names is None and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=2) as answer:
                    names = [st["study_name"] for st in json.loads(answer.read())["study_summaries"]]
            except OSError:
                time.sleep(0.5)
        return names or []
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_optuna_dashboard_opens_the_study(mnist_root, tmp_path, monkeypatch):
    study_dir = tmp_path / "study"
    assert search_main(small(mnist_root, study_dir, "search.n_trials=1"), monkeypatch) == 0
    assert dashboard_studies(f"sqlite:///{study_dir / 'study.db'}") == ["4k"]


def test_the_percentile_pruner_stops_only_the_bottom_share(tmp_path):
    """pruner_percentile is the share kept, as Optuna means it: at 75, a trial in the bottom quarter of the
    others at the same epoch is stopped, one in the middle goes on."""
    from dataclasses import replace

    conf = replace(_job(["val_acc"]), pruner="percentile", pruner_percentile=75.0)
    study = studies.open_study(studies.Job(conf, tmp_path, f"sqlite:///{tmp_path / 's.db'}", [], max_epochs=4))
    for value in (0.1, 0.2, 0.3, 0.4, 0.5):
        study.add_trial(optuna.create_trial(value=value, intermediate_values={0: value}))
    middle, low = study.ask(), study.ask()
    middle.report(0.25, 0)
    low.report(0.15, 0)
    assert not middle.should_prune() and low.should_prune()


def test_with_two_objectives_confirm_takes_the_cheapest_front_points_at_the_target_or_the_nearest():
    from dataclasses import replace

    study = optuna.create_study(directions=["maximize", "minimize"])
    for acc, seconds in [(0.990, 20), (0.993, 30), (0.9941, 45), (0.9950, 70), (0.9960, 120), (0.9945, 90)]:
        study.add_trial(optuna.create_trial(values=[acc, seconds]))
    conf = replace(_job(["val_acc", "train_seconds"]), confirm=2)
    assert [t.values for t in objective.to_confirm(study, conf, target=0.994)] == [[0.9941, 45], [0.9950, 70]]
    # none reaches it: the two most accurate points, cheapest first (not the cheapest, least accurate ones)
    assert [t.values for t in objective.to_confirm(study, conf, target=0.999)] == [[0.9950, 70], [0.9960, 120]]


def test_what_pruning_saved_prices_each_trial_at_its_own_length(tmp_path):
    """A completed trial cost what it ran; a pruned one would have run on to the study's trainer.max_epochs,
    or its own where the space samples it, at its own mean epoch time."""
    from mnist_arch.results.record import RunRecord

    def trial(status, seconds, overrides):  # epochs run: one val acc per epoch timed
        return RunRecord(status=status, val_acc=[0.9] * len(seconds), epoch_time_s=seconds, overrides=overrides)

    trials = {0: trial("completed", [2.0, 2.0, 2.0], ["trainer.max_epochs=3"]),
              1: trial("pruned", [1.0, 3.0], ["trainer.max_epochs=6"]),
              2: trial("pruned", [1.0] * 4, []),
              3: trial("over_budget", [], [])}
    for number, record in trials.items():
        record.write(tmp_path / "trials" / f"{number:04d}")
    job = studies.Job(_job(["val_acc"]), tmp_path, f"sqlite:///{tmp_path / 's.db'}", [], max_epochs=10)
    pruning = studies.summarize(studies.open_study(job), job)["pruning"]
    assert pruning == {"epochs_trained": 9, "epochs_unpruned": 3 + 6 + 10, "train_seconds": 14.0,
                       "train_seconds_unpruned_estimate": 6.0 + 6 * 2.0 + 10 * 1.0}


def _open_at_once(args) -> int:  # a spawned process: wait for the others, then open the study
    job, barrier = args
    barrier.wait()
    return len(studies.open_study(job).trials)


def test_workers_that_start_together_create_one_study(tmp_path):
    """Slurm jobs of one search start at once on a study not yet there: creating its SQLite storage
    (Optuna's tables) and the study happens under the study folder's lock, so none fails on the other's
    (without it, 2 runs of 3 failed here with "table studies already exists")."""
    import multiprocessing

    url = f"sqlite:///{tmp_path / 'study.db'}"
    job = studies.Job(_job(["val_acc"]), tmp_path, url, [], max_epochs=2)
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager:
        barrier = manager.Barrier(4)
        with context.Pool(4) as pool:
            assert pool.map(_open_at_once, [(job, barrier)] * 4) == [0, 0, 0, 0]
    assert len(optuna.get_all_study_names(studies._storage(url))) == 1


def test_search_help_shows_the_searchs_own_keys_and_spaces(monkeypatch, capsys):
    """`search --help` is the search's: every key of its schema, every space, no internal option, no config dump."""
    import dataclasses

    from mnist_arch.search.schema import SearchConf

    assert search_main(["--help"], monkeypatch) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m mnist_arch.search search=<space>")
    missing = [f.name for f in dataclasses.fields(SearchConf) if f"search.{f.name}" not in out]
    assert missing == []
    assert "spaces (conf/search/): 20k, 4k, 8k, golf, recipe, speedrun" in out
    assert "_shared" not in out.replace("_shared.yaml", "") and "_frontier" not in out and "data:" not in out


def test_a_study_name_that_would_leave_outputs_is_one_line_and_no_warning(tmp_path):
    """The folder resolver refuses the name; the run-dir callback, which reads the same folder first, says nothing
    (Hydra would print its exception as a UserWarning before the error)."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "mnist_arch.search", "search=8k", "search.study_name=../../x"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.splitlines() == ["error: search.study_name='../../x' names a folder: letters, digits and _ . - "
                                        "only (at most 100, not starting with a dot), so that it stays inside outputs/"]
    assert not list(tmp_path.iterdir())  # no folder made
