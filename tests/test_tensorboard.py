"""What a run leaves to look at: the layer table, PNG plots, and TensorBoard's scalars, images, text,
graph and hparams, read back with TensorBoard's own event reader and served by a real server."""
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from mnist_arch.data import fetch
from mnist_arch.train import plots as plots_module
from mnist_arch.train import callbacks as callbacks_module
from mnist_arch.train import job as training
from tests.conftest import N_TEST, checksums, fast_overrides, synthetic_files, write_root

PLOTS = {"samples", "curves", "kernels", "confusion"}  # + misclassified whenever the net got one wrong


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, make_cfg):
    """One two-epoch s6 run on synthetic IDX files, shared by the tests below: (run dir, summary, plots)."""
    tmp = tmp_path_factory.mktemp("tb")
    files = synthetic_files()
    write_root(tmp / "data", files)
    made = []

    class Kept(plots_module.RunPlots):  # the run's RunPlots callback, kept for its confusion counts
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fetch, "MD5", checksums(files))
        mp.setattr(callbacks_module, "RunPlots", Kept)
        summary = training.train(make_cfg(fast_overrides(tmp / "data") + ["model=s6", "seed=3", "data.rotation=10"]),
                            tmp / "run")
    return tmp / "run", summary, made[0]


def events_of(run_dir) -> EventAccumulator:
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0, "tensors": 0})
    events.Reload()
    return events


def test_layer_table_is_saved_and_totals_are_in_the_summary(tiny_run):
    run_dir, summary, _ = tiny_run
    table = (run_dir / "layers.txt").read_text()
    assert table.startswith("layer ") and "final RF 43 (measured 43 ✓)" in table
    assert summary.receptive_field == summary.receptive_field_measured == 43
    assert summary.macs_per_image == 766_656


def test_plots_are_written_and_non_empty(tiny_run):
    run_dir, summary, plots = tiny_run
    expected = PLOTS | ({"misclassified"} if summary.final_val_acc < 1 else set())
    assert set(summary.plots) == expected
    for name in expected:
        data = (run_dir / "plots" / f"{name}.png").read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 2_000, name
    assert summary.plots_time_s > 0


def test_confusion_counts_match_the_final_val_accuracy(tiny_run):
    _, summary, plots = tiny_run
    counts = plots.confusion
    assert counts.shape == (10, 10) and counts.sum() == N_TEST
    assert round(counts.diag().sum().item() / N_TEST, 6) == summary.final_val_acc


def test_event_files_hold_scalars_images_text_graph_and_hparams(tiny_run):
    run_dir, summary, _ = tiny_run
    events = events_of(run_dir)
    tags = events.Tags()
    assert {"train/loss", "train/acc", "val/loss", "val/acc", "test/loss", "test/acc"} <= set(tags["scalars"])
    assert any(tag.startswith("lr-") for tag in tags["scalars"])
    assert [round(e.value, 6) for e in events.Scalars("val/acc")] == summary.val_acc
    assert {f"plots/{name}" for name in summary.plots} <= set(tags["images"])
    image = events.Images("plots/curves")[-1]
    assert image.encoded_image_string.startswith(b"\x89PNG") and image.width > 100
    assert tags["graph"] and "model/layers/text_summary" in tags["tensors"]

    hparams = plugin_data_pb2.HParamsPluginData.FromString(
        events.PluginTagToContent("hparams")["_hparams_/session_start_info"]).session_start_info.hparams
    assert hparams["model"].string_value == "s6" and hparams["seed"].number_value == 3
    assert hparams["params"].number_value == 19_866 and hparams["batch_size"].number_value == 32
    assert hparams["augmentation"].string_value == "rotation 10" and hparams["scheduler"].string_value == "onecycle"
    experiment = plugin_data_pb2.HParamsPluginData.FromString(
        events.PluginTagToContent("hparams")["_hparams_/experiment"]).experiment
    assert {m.name.tag for m in experiment.metric_infos} >= {"hp/best_val_acc", "hp/test_acc", "hp/target_epoch"}
    assert events.Scalars("hp/best_val_acc")[-1].value == pytest.approx(summary.best_val_acc, abs=1e-6)


def test_plots_off_and_csv_logger(make_cfg, mnist_root, tmp_path):
    overrides = fast_overrides(mnist_root) + ["callbacks.plots=false", "logger=csv", "trainer.max_epochs=1"]
    summary = training.train(make_cfg(overrides), tmp_path / "run")
    assert summary.status == "completed" and summary.plots == []
    assert not (tmp_path / "run" / "plots").exists() and (tmp_path / "run" / "layers.txt").is_file()


def test_a_real_tensorboard_server_serves_the_run(tiny_run):
    run_dir, summary, _ = tiny_run
    with socket.socket() as s:  # a free port
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(run_dir), "--host", "127.0.0.1",
         "--port", str(port), "--load_fast", "false", "--reload_interval", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy
    url = f"http://127.0.0.1:{port}/data/plugin/scalars/scalars?run=tensorboard&tag=val/acc"
    values, deadline = None, time.monotonic() + 90
    try:
        while time.monotonic() < deadline and server.poll() is None:
            try:
                with opener.open(url, timeout=5) as response:
                    values = [round(v, 6) for _, _, v in json.loads(response.read())]
                if values:
                    break
            except (urllib.error.URLError, ConnectionError, json.JSONDecodeError):
                pass  # not up yet, or the run not loaded yet
            time.sleep(0.5)
    finally:
        server.terminate()
        try:
            output = server.communicate(timeout=15)[0].decode(errors="replace")
        except subprocess.TimeoutExpired:
            server.kill()
            output = server.communicate()[0].decode(errors="replace")
    assert values == summary.val_acc, f"server said {values}; its output:\n{output[-2000:]}"
