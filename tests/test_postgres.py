"""A search across machines on a real PostgreSQL (scripts/local_postgres.sh up; MNIST_ARCH_TEST_POSTGRES and
PGPASSWORD set, as `.ci/run` does): the study, the race and the confirm on it, claims in the database, and the
faults of issue 48 (a worker killed mid-trial, the database restarted or gone, a wrong password, host or
database), each one line where it is refused.

Marked `postgres`: deselected by default, run with `python -m pytest -m postgres`, skipped (with the reason)
when no server answers."""
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from mnist_arch.results.record import RunRecord
from tests.conftest import hydra_command
from tests.test_search import dashboard_studies, small

pytestmark = pytest.mark.postgres
REPO = Path(__file__).resolve().parents[1]
URL = os.environ.get("MNIST_ARCH_TEST_POSTGRES", "")


@pytest.fixture(scope="module", autouse=True)
def server():
    if not URL or not os.environ.get("PGPASSWORD"):
        pytest.skip("no PostgreSQL (run scripts/local_postgres.sh up and export what it prints)")
    pytest.importorskip("psycopg")
    import sqlalchemy

    try:
        with sqlalchemy.create_engine(URL, connect_args={"connect_timeout": 5}).connect():
            pass
    except sqlalchemy.exc.OperationalError as e:
        pytest.skip(f"PostgreSQL at {URL} does not answer ({str(e.orig).splitlines()[0]})")


def fresh(prefix: str) -> str:
    """A study name of its own: tests share one database."""
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def trained(trials):
    """The trained trials (complete or pruned), not the infeasible ones recorded complete without training."""
    return [t for t in trials if t.state.name in ("COMPLETE", "PRUNED") and not t.user_attrs.get("infeasible")]


def study_of(name: str):
    import optuna

    return optuna.load_study(study_name=name, storage=URL)


def run_search(argv, timeout=600, env=None):
    return subprocess.run([sys.executable, "-m", "mnist_arch.search", *argv], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def test_a_study_a_race_and_a_confirm_on_postgres_with_two_workers(mnist_root, tmp_path, monkeypatch):
    """Two workers, one study in the database: exactly n_trials trained, none twice; then a race of candidates
    and its confirm, claimed in the database (no claim.json), with the same standings as on SQLite; the
    password appears in no file the search wrote."""
    from mnist_arch.commands import search

    name = fresh("pg")
    password_url = URL.replace("mnist@", f"mnist:{os.environ['PGPASSWORD']}@")
    argv = small(mnist_root, tmp_path / "study", "search.n_trials=4", "search.workers=2",
                 f"search.storage={password_url}", f"search.study_name={name}")
    assert hydra_command(search.main, argv, monkeypatch) == 0
    trials = study_of(name).trials
    assert len(trained(trials)) == 4 and len({t.number for t in trained(trials)}) == 4
    assert not [t for t in trials if t.state.name == "RUNNING"]
    summary = json.loads((tmp_path / "study" / "study.json").read_text())
    assert summary["storage"] == URL.replace("mnist@", "mnist:***@")
    written = [p for p in (tmp_path / "study").rglob("*") if p.is_file() and os.environ["PGPASSWORD"].encode() in
               p.read_bytes()]
    assert written == []  # .hydra/ included: the command line's password is masked there too

    monkeypatch.setenv("MNIST_ARCH_TRUST_TARGETS", "tests.nets.RowReader,tests.nets.ConstantScores")
    candidates = tmp_path / "finalists.yaml"
    candidates.write_text("- {name: learns, overrides: [model=custom, model.net._target_=tests.nets.RowReader]}\n"
                          "- {name: constant, overrides: [model=custom, model.net._target_=tests.nets.ConstantScores]}\n")
    standings = {}
    for storage in (URL, None):
        folder = tmp_path / ("race_pg" if storage else "race_sqlite")
        argv = small(mnist_root, folder, f"search.race_candidates={candidates}", "search.race_rounds=3",
                     "search.confirm=1", "search.confirm_seeds=[6]", "search.workers=2", "threads=1",
                     *([f"search.storage={storage}", f"search.study_name={fresh('race')}"] if storage else []))
        assert hydra_command(search.main, argv, monkeypatch) == 0
        standings[storage] = [(d["name"], d["rounds"], d["mean"], d["dropped"] is not None)
                              for d in json.loads((folder / "race.json").read_text())["designs"]]
        assert RunRecord.read(folder / "confirm" / "learns" / "seed6").status == "completed"
        if storage:
            assert not list(folder.rglob("claim.json"))  # the claims were rows of the database
    assert standings[URL] == standings[None]


def test_claims_in_the_database_are_taken_over_only_from_the_silent_or_the_dead(tmp_path):
    import sqlalchemy

    from mnist_arch.search import claims

    store = claims.Claims.of(URL, tmp_path)
    assert isinstance(store, claims.DatabaseClaims)
    run = tmp_path / "race" / "a" / "round1"
    with store.locked(".race.lock"):
        assert not store.claimed(run)
        store.claim(run)
        assert store.claimed(run)
    key = store._key(run)
    with store.engine.begin() as connection:  # another machine's live worker, heard just now
        connection.execute(sqlalchemy.text(f"UPDATE {claims.TABLE} SET host = 'elsewhere', pid = 1 WHERE run = :run"),
                           {"run": key})
    assert store.claimed(run)
    with store.engine.begin() as connection:  # ... silent for five of its beats: taken over
        connection.execute(sqlalchemy.text(f"UPDATE {claims.TABLE} SET heard_at = heard_at - 5 * heartbeat_s "
                                           "WHERE run = :run"), {"run": key})
    assert not store.claimed(run)
    store.claim(run)
    with store.heartbeat(run, every_s=0.05):
        time.sleep(0.3)
    assert store.claimed(run)
    store.release(run)
    assert not store.claimed(run)


@pytest.mark.parametrize("storage, env, message", [
    (URL, {"PGPASSWORD": "not-the-password"}, "password authentication failed"),
    (URL.replace("mnist@", "mnist:hunter2-secret@"), {"PGPASSWORD": ""}, "password authentication failed"),
    (URL.replace("127.0.0.1", "no-such-host.invalid"), {}, "failed to resolve host 'no-such-host.invalid'"),
    (URL.rsplit("/", 1)[0] + "/no_such_database", {}, 'database "no_such_database" does not exist'),
])
def test_a_refused_storage_is_one_line_exit_2_before_training(mnist_root, tmp_path, storage, env, message):
    done = run_search(small(mnist_root, tmp_path / "study", "search.n_trials=1", f"search.storage={storage}"),
                      timeout=120, env=env)
    err = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(err) == 1 and message in err[0], done.stderr
    assert "hunter2-secret" not in done.stderr + done.stdout and "not-the-password" not in done.stderr
    assert not (tmp_path / "study" / "trials").exists()


def _wait_for_running(name: str, study_dir: Path, timeout: float = 180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.5)
        try:
            running = [t for t in study_of(name).trials if t.state.name == "RUNNING"
                       and (study_dir / "trials" / f"{t.number:04d}" / "checkpoints").exists()]
        except Exception:  # noqa: BLE001 - the study is not created yet
            continue
        if running:
            return running[0]
    return None


def _long(mnist_root, study_dir, name, *more):
    argv = [a for a in small(mnist_root, study_dir, "search.n_trials=3", f"search.storage={URL}",
                             f"search.study_name={name}", "trainer.limit_train_batches=10", *more)
            if not a.startswith("budget.max_epochs")]
    return [a if a != "trainer.max_epochs=2" else "trainer.max_epochs=4" for a in argv] + ["budget.max_epochs=4"]


def test_a_worker_killed_mid_trial_leaves_nothing_running_after_the_study_resumes(mnist_root, tmp_path):
    name, study_dir = fresh("kill"), tmp_path / "study"
    argv = _long(mnist_root, study_dir, name)
    process = subprocess.Popen([sys.executable, "-m", "mnist_arch.search", *argv], cwd=REPO, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        killed = _wait_for_running(name, study_dir)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert killed is not None
    assert run_search(argv).returncode == 0  # the same command: resumes
    trials = study_of(name).trials
    assert not [t for t in trials if t.state.name == "RUNNING"]
    assert len(trained(trials)) == 3
    assert trials[killed.number].state.name == "FAIL"


SCRIPT = REPO / "scripts" / "local_postgres.sh"


def _fault_during_a_trial(mnist_root, study_dir: Path, name: str, fault: str, env=None):
    """The search started in a process of its own; once a trial trains, `local_postgres.sh <fault>`; (its exit code,
    stdout, stderr, its command's arguments). The server is started again after a stop."""
    argv = _long(mnist_root, study_dir, name)
    process = subprocess.Popen([sys.executable, "-m", "mnist_arch.search", *argv], cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})
    try:
        assert _wait_for_running(name, study_dir) is not None
        assert subprocess.run([str(SCRIPT), fault], capture_output=True, timeout=120).returncode == 0
        out, err = process.communicate(timeout=600)
    finally:
        process.kill()
        if fault == "stop":
            subprocess.run([str(SCRIPT), "start"], capture_output=True, timeout=120)
    return process.returncode, out, err, argv


def test_the_database_restarted_mid_study_is_waited_for_and_gone_for_good_is_one_line(mnist_root, tmp_path):
    """A restart of a few seconds: the workers wait and the study ends whole. Gone past the patience: one line,
    exit 1; back again, the same command finishes the study."""
    name = fresh("restart")
    code, out, err, _ = _fault_during_a_trial(mnist_root, tmp_path / "study", name, "restart")
    assert code == 0, out + err
    assert len(trained(study_of(name).trials)) == 3

    name = fresh("gone")
    code, _, err, argv = _fault_during_a_trial(mnist_root, tmp_path / "gone", name, "stop",
                                               env={"MNIST_ARCH_STORAGE_PATIENCE_S": "5"})
    lines = err.strip().splitlines()
    assert code == 1 and lines[-1].startswith("error: search.storage=") and \
        "did not answer for" in lines[-1] and "run the same command again" in lines[-1], err
    assert run_search(argv).returncode == 0
    trials = study_of(name).trials
    assert len(trained(trials)) == 3
    assert not [t for t in trials if t.state.name == "RUNNING"]


def test_optuna_dashboard_opens_a_study_in_postgres(mnist_root, tmp_path, monkeypatch):
    from mnist_arch.commands import search

    name = fresh("dash")
    assert hydra_command(search.main, small(mnist_root, tmp_path / "study", "search.n_trials=1",
                                            f"search.storage={URL}", f"search.study_name={name}"), monkeypatch) == 0
    assert name in dashboard_studies(URL)
