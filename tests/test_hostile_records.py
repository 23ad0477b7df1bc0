"""Issue 45 beyond programs: config values from files stay values, no secret reaches a record or a tracker,
a handed-over run dir is never written through a link, what a record expands to is bounded, and each input
that used to end in "unexpected ... (a bug)" is one line. Every file here is crafted as a hostile user
would craft it; every test asserts what was refused, the one line, and that nothing was written or run."""
import json
import os
import socket
import stat
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from mnist_arch.commands import report, run
from mnist_arch.errors import BadFile, ConfigError, printable
from mnist_arch.results import compare
from mnist_arch.results.record import RunRecord
from mnist_arch.train import job as training
from tests.conftest import fast_overrides, hydra_command

SECRET = "31.41592653"  # as a number it composes into a float field; as text it must appear nowhere


def files_holding(folder: Path, text: str):
    """Every file beneath `folder` whose bytes hold `text` (checkpoints, event files and databases included)."""
    return [p for p in folder.rglob("*") if p.is_file() and not p.is_symlink() and text.encode() in p.read_bytes()]


def test_an_env_interpolation_is_recorded_as_written_in_every_file_and_tracker(mnist_root, tmp_path, monkeypatch):
    """`${oc.env:...}` on the command line: the run uses the value, and summary.json, config.yaml, Hydra's files,
    the checkpoints, TensorBoard, MLflow's params (a local store) and W&B's offline files hold it as written."""
    pytest.importorskip("mlflow")
    pytest.importorskip("wandb")
    monkeypatch.setenv("MNIST_ARCH_TEST_SECRET", SECRET)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    argv = [*fast_overrides(mnist_root), "data.fetch_timeout_s=${oc.env:MNIST_ARCH_TEST_SECRET}",
            "optimizer.weight_decay=${oc.env:MNIST_ARCH_TEST_SECRET,0}", "logger=[tensorboard,mlflow,wandb]",
            f"hydra.run.dir={tmp_path / 'run'}"]
    monkeypatch.setenv("MNIST_ARCH_TEST_SECRET", "0.0001" + SECRET[6:])  # a weight decay that trains
    secret = os.environ["MNIST_ARCH_TEST_SECRET"]
    assert hydra_command(run.main, argv, monkeypatch) == 0
    record = RunRecord.read(tmp_path / "run")
    assert record.status == "completed"
    assert "data.fetch_timeout_s=${oc.env:MNIST_ARCH_TEST_SECRET}" in record.overrides
    assert "${oc.env:MNIST_ARCH_TEST_SECRET}" in (tmp_path / "run" / "config.yaml").read_text()
    assert files_holding(tmp_path, secret) == []  # the run dir, the MLflow database and artifacts, W&B's files


@pytest.mark.parametrize("uri, shown", [
    ("https://alice:s3cr3t-token@127.0.0.1:9/", "https://alice:***@127.0.0.1:9/"),
])
def test_a_password_in_a_tracking_uri_is_never_echoed(make_cfg, mnist_root, tmp_path, uri, shown):
    with pytest.raises(ConfigError) as error:
        training.train(make_cfg(fast_overrides(mnist_root) + ["logger=mlflow", f"logger.mlflow.tracking_uri={uri}"]),
                       tmp_path / "run")
    assert "s3cr3t-token" not in str(error.value) and shown in str(error.value)


def test_a_nested_target_in_a_logger_argument_is_refused_not_built(make_cfg, mnist_root, tmp_path):
    victim = tmp_path / "planted.pth"
    hostile = f"+logger.tensorboard.comment={{_target_: pathlib.Path.write_text, self: {victim}, data: x}}"
    with pytest.raises(ConfigError, match=r"logger.tensorboard.comment: a logger's arguments are plain values"):
        training.train(make_cfg(fast_overrides(mnist_root) + [hostile]), tmp_path / "run")
    assert not victim.exists()


def test_a_studys_stored_overrides_are_values_only(tmp_path):
    """A trial read back from a study's storage (a shared database someone else writes) is checked like a file."""
    from types import SimpleNamespace

    from mnist_arch.search.study import run_overrides

    base = ["experiment=frontier_4k", "data.val=holdout"]
    good = SimpleNamespace(number=3, user_attrs={"overrides": [*base, "optimizer.lr=0.05", "model.net.head=gap_conv"]})
    assert run_overrides(good, base)[-1] == "model.net.head=gap_conv"
    for hostile in ("hydra.run.dir=/etc", "logger.csv.name={_target_: os.system, command: x}", "ckpt_path=/x.ckpt",
                    "optimizer.lr=${oc.env:HOME}", "model.net._target_=os.system"):
        trial = SimpleNamespace(number=4, user_attrs={"overrides": [*base, hostile]})
        with pytest.raises(ConfigError, match=r"^study trial 4: .* an override from a file or a study's storage"):
            run_overrides(trial, base)


def test_a_server_answering_500_is_one_line(mnist_root, tmp_path, monkeypatch, capsys):
    """A tracking server that answers every API call with HTTP 500 (its /health with 200): one line, exit 2."""
    import http.server
    import threading

    class Failing(http.server.BaseHTTPRequestHandler):
        def _answer(self):
            self.send_response(200 if self.path == "/health" else 500)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b"OK" if self.path == "/health" else b'{"error_code": "INTERNAL_ERROR", "message": "boom"}')

        do_GET = do_POST = _answer

        def log_message(self, *args):
            pass

    pytest.importorskip("mlflow")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Failing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    try:
        argv = [*fast_overrides(mnist_root), "logger=mlflow",
                f"logger.mlflow.tracking_uri=http://127.0.0.1:{server.server_address[1]}",
                f"hydra.run.dir={tmp_path / 'run'}"]
        assert hydra_command(run.main, argv, monkeypatch) == 2
    finally:
        server.shutdown()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: logger.mlflow: the tracker refused") and "a bug" not in err[0]


@pytest.mark.parametrize("planted", ["config.yaml", "layers.txt", ".hydra/config.yaml", "run.log", "checkpoints"])
def test_a_handed_over_run_dir_with_a_link_is_refused_before_anything_is_written(mnist_root, tmp_path, monkeypatch,
                                                                                 capsys, planted):
    """Resuming in a folder someone handed over (`hydra.run.dir=<dir> ckpt_path=last`): a link planted where the
    run (or Hydra itself) writes is one line, exit 2, and the file it points at is untouched."""
    handed = tmp_path / "handed_over"
    (handed / ".hydra").mkdir(parents=True)
    victim = tmp_path / "bashrc"
    victim.write_text("keep me\n")
    (handed / planted).symlink_to(victim)
    argv = [*fast_overrides(mnist_root), f"hydra.run.dir={handed}", "ckpt_path=last"]
    assert hydra_command(run.main, argv, monkeypatch) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {handed / planted}: a symbolic link in the run dir, where the run would write through it; "
                   "remove it (or start a new run dir) to run there"]
    assert victim.read_text() == "keep me\n" and sorted(p.name for p in handed.iterdir()) == sorted({".hydra", planted.split("/")[0]})


def _npz(path: Path, arrays: dict) -> Path:
    np.savez_compressed(path, **arrays)
    return path


def _splits(n=50):
    return {"val_source": np.array("train"), "val_index": np.arange(n, dtype=np.int32),
            "val_label": np.zeros(n, np.uint8), "val_predicted": np.zeros(n, np.uint8)}


def test_predictions_are_bounded_by_what_they_expand_to(tmp_path):
    bomb = tmp_path / "bomb.npz"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:  # ~1 MB on disk, 1 GB inflated
        with z.open("val_index.npy", "w", force_zip64=True) as f:
            header = {"descr": "<i4", "fortran_order": False, "shape": (250_000_000,)}
            np.lib.format.write_array_header_1_0(f, header)
            chunk = bytes(1 << 20)
            for _ in range(1000):
                f.write(chunk)
    assert bomb.stat().st_size < 1 << 20
    started = time.perf_counter()
    with pytest.raises(BadFile, match=r"more than the 16 MiB of \.npy arrays"):
        compare.read_predictions(bomb)
    assert time.perf_counter() - started < 5

    declared = tmp_path / "declared.npz"  # a header promising 10^13 bytes in a small record
    with zipfile.ZipFile(declared, "w") as z:
        with z.open("val_index.npy", "w") as f:
            np.lib.format.write_array_header_1_0(f, {"descr": "<i8", "fortran_order": False, "shape": (10 ** 12,)})
            f.write(bytes(64))
    with pytest.raises(BadFile, match=r"its header declares \(1000000000000,\), more than the record holds"):
        compare.read_predictions(declared)

    structured = _npz(tmp_path / "structured.npz", {**_splits(), "val_label": np.zeros(50, dtype=[("a", "i4")])})
    with pytest.raises(BadFile, match=r"an array of .*, not plain integers or text"):
        compare.read_predictions(structured)
    assert len(compare.read_predictions(_npz(tmp_path / "good.npz", _splits())).splits["val"][1]) == 50


def test_control_characters_in_a_record_are_printed_escaped(tmp_path, capsys):
    RunRecord(status="failed", error="boom\x1b[2J\x1b]0;owned\x07\rdone", model="s4", seed=1,
              run_dir=str(tmp_path / "r")).write(tmp_path / "r")
    assert report.main([str(tmp_path)]) is None
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "\r" not in out and "boom\\x1b[2J" in out
    assert printable("a\u202eb\tc\nd") == "a\\u202eb\\tc\nd"


def test_a_seed_null_beside_seed_1_and_a_mathtext_model_name_make_a_board_and_a_plot(tmp_path, capsys):
    for seed, folder in ((None, "a"), (1, "b")):
        RunRecord(status="completed", model="$\\frac{$", seed=seed, params=100, val_acc=[0.9], best_val_acc=0.9,
                  run_dir=str(tmp_path / folder), test_acc=0.9, epoch_time_s=[1.0]).write(tmp_path / folder)
    assert report.main([str(tmp_path), "--plot", str(tmp_path / "p.png")]) is None
    assert "| 1,None |" in capsys.readouterr().out  # the seeds column: the run without one last
    assert (tmp_path / "p.png").stat().st_size > 1000


@pytest.mark.parametrize("claim, alive", [
    ({"host": "HOST", "pid": "x"}, True),  # not a worker's claim: judged by its file's time, fresh
    ({"host": "HOST", "pid": "PID", "heartbeat_s": 30}, True),  # this live process, heard just now
    ({"host": "HOST", "pid": 2 ** 22 + 12345, "heartbeat_s": 30}, False),  # a process that is gone
    ("[1, 2]", True),
])
def test_a_claim_is_judged_by_its_own_heartbeat(tmp_path, claim, alive):
    from mnist_arch.search import claims

    text = json.dumps(claim).replace('"HOST"', json.dumps(socket.gethostname())).replace('"PID"', str(os.getpid())) \
        if isinstance(claim, dict) else claim
    (tmp_path / claims.CLAIM).write_text(text)
    files = claims.FileClaims(tmp_path)
    assert files.claimed(tmp_path) is alive
    beats = (claim.get("heartbeat_s") if isinstance(claim, dict) else None) or claims.LEGACY_HEARTBEAT_S
    old = time.time() - claims.STALE_BEATS * beats - 1  # silent for longer than its own beats allow: taken over
    os.utime(tmp_path / claims.CLAIM, (old, old))
    assert files.claimed(tmp_path) is False


def test_a_live_claim_is_kept_fresh_by_its_heartbeat_however_long_the_epoch(tmp_path):
    from mnist_arch.search import claims

    files = claims.FileClaims(tmp_path)
    files.claim(tmp_path)
    old = time.time() - 3600
    os.utime(tmp_path / claims.CLAIM, (old, old))
    with files.heartbeat(tmp_path, every_s=0.05):
        time.sleep(0.3)  # an "epoch" with no epoch end: the thread beats anyway
        assert files.claimed(tmp_path)


def test_a_crash_report_goes_to_a_folder_only_this_user_can_open(tmp_path, monkeypatch):
    from mnist_arch import cli

    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    squatted = tmp_path / f"mnist_arch-{os.getuid()}"
    squatted.mkdir(mode=0o777)
    os.chmod(squatted, 0o777)  # another user got there first and opened it to all: not used
    where = cli.crash_folder()
    assert where != squatted and not stat.S_IMODE(where.stat().st_mode) & 0o077
    os.rmdir(squatted)
    own = cli.crash_folder()
    assert own == squatted and stat.S_IMODE(own.stat().st_mode) == 0o700
    code, line = cli.explain(ZeroDivisionError("x"), "test")
    written = Path(line.split("the full traceback is in ")[1].split(", or run")[0])
    assert code == 1 and written.parent == own and stat.S_IMODE(written.stat().st_mode) == 0o600


def test_resuming_a_finished_run_with_more_epochs_is_one_line_before_training(mnist_root, tmp_path, monkeypatch,
                                                                               capsys):
    """The one-cycle schedule a checkpoint holds was planned over the epochs the run started with."""
    argv = [*fast_overrides(mnist_root), "trainer.max_epochs=1", f"hydra.run.dir={tmp_path / 'run'}"]
    assert hydra_command(run.main, argv, monkeypatch) == 0
    capsys.readouterr()
    assert hydra_command(run.main, [*argv, "trainer.max_epochs=2", "ckpt_path=last"], monkeypatch) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the checkpoint's OneCycleLR was planned over" in err[0] and "a bug" not in err[0]
