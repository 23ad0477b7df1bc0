"""The run record (summary.json): one writer, one reader, old files readable; and provenance's diff."""
import json
import subprocess


from mnist_arch.results import provenance
from mnist_arch.results.record import RECORD_VERSION, RunRecord

BUDGET = {"max_params": 20_000, "max_epochs": 20, "target_acc": 0.994, "allow_fc": False}


def test_write_then_read_gives_the_same_record_and_derived_fields(tmp_path):
    record = RunRecord(status="completed", model="s4", params=17_120, budget=BUDGET, output_shape=[2, 10],
                       val_acc=[0.99, 0.9941, 0.9938], seed=3, val_split="test", test_acc=0.9938,
                       test_ckpt="final", overrides=["seed=3"], run_dir=str(tmp_path / "run"))
    path = record.write(tmp_path / "run")
    on_disk = json.loads(path.read_text())
    assert on_disk["version"] == RECORD_VERSION and not (tmp_path / "run" / "summary.json.partial").exists()
    assert (on_disk["best_val_acc"], on_disk["best_epoch"], on_disk["final_val_acc"], on_disk["epochs_run"]) == \
        (0.9941, 2, 0.9938, 3)
    assert (on_disk["target_epoch"], on_disk["target_reached"], on_disk["target_acc"]) == (2, True, 0.994)
    assert on_disk["verdict"] == {"params_ok": True, "no_fc_ok": True, "output_ok": True, "epochs_ok": True,
                                  "target_ok": True}
    back = RunRecord.read(tmp_path / "run")
    assert back == record and back.to_dict() == on_disk
    assert back.headline() == ("s4 · 17,120 params ✓ ≤20,000 · no FC ✓ · 99.41% at epoch 2 ✓ (target 99.40%, "
                               "≤20 epochs, 3 run, val=test) · test acc 99.38% (final weights)")


def test_a_version_1_file_reads_with_its_version_and_the_same_numbers(tmp_path):
    """What mnist_arch wrote before the record existed (no version field, derived keys written by hand)."""
    old = {"model": "s6", "params": 19_866, "seed": 1, "val_split": "test", "status": "completed", "budget": BUDGET,
           "fc_layers": [], "val_acc": [0.98, 0.9931], "best_val_acc": 0.9931, "best_epoch": 2,
           "final_val_acc": 0.9931, "target_epoch": None, "verdict": {"params_ok": True, "epochs_ok": True,
                                                                       "no_fc_ok": True, "target_ok": False},
           "test_acc": 0.9931, "some_key_we_dropped": 1}
    (tmp_path / "summary.json").write_text(json.dumps(old))
    record = RunRecord.read(tmp_path / "summary.json")
    assert record.version == 1 and record.model == "s6" and record.run_dir == str(tmp_path)
    assert (record.best_val_acc, record.best_epoch, record.target_epoch) == (0.9931, 2, None)
    assert record.verdict.checks()["target_ok"] is False


def test_a_refused_job_writes_the_same_record_and_a_broken_file_reads_as_unreadable(tmp_path):
    RunRecord(status="bad_config", error="optimizer.lr=-1.0 must be > 0", model="s4", seed=1).write(tmp_path / "a")
    refused = RunRecord.read(tmp_path / "a")
    assert refused.status == "bad_config" and refused.verdict is None and refused.epochs_run == 0
    assert refused.headline() == "s4 · bad_config: optimizer.lr=-1.0 must be > 0"
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "summary.json").write_text("{not json")
    broken = RunRecord.read(tmp_path / "b")
    assert broken.status == "unreadable" and "summary.json" in broken.error


def test_a_dirty_checkout_records_its_diff(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    git = lambda *args: subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)  # noqa: E731
    git("init", "-q")
    (repo / "net.py").write_text("width = 8\n")
    git("add", "net.py")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "net")
    commit, diff = provenance.git_state(tmp_path / "run", repo=repo)
    assert len(commit) == 40 and diff is None and not (tmp_path / "run").exists()

    (repo / "net.py").write_text("width = 16\n")
    commit, diff = provenance.git_state(tmp_path / "run", repo=repo)
    assert commit.endswith("-dirty") and diff == "git.diff"
    saved = (tmp_path / "run" / "git.diff").read_text()
    assert "-width = 8" in saved and "+width = 16" in saved
    assert provenance.git_state(tmp_path / "run", repo=tmp_path / "not_a_repo") == (None, None)


def test_the_docs_document_every_record_field():
    """docs/record.md names every key summary.json holds, derived ones included."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "docs" / "record.md").read_text()
    keys = RunRecord().to_dict()
    assert [key for key in keys if f"`{key}`" not in readme] == []


def test_the_history_resumes_from_new_and_older_checkpoints_and_only_when_fitting():
    """History keeps its epochs in checkpoint["callbacks"]; a checkpoint written before it existed kept them in
    checkpoint["history"] (the module's, then); testing a checkpoint rolls nothing back."""
    from types import SimpleNamespace

    from pytorch_lightning.trainer.states import TrainerFn

    from mnist_arch.train.history import History

    def trainer(fn):
        return SimpleNamespace(state=SimpleNamespace(fn=fn))

    saved = History()
    saved.epochs.update(val_acc=[0.5, 0.75], train_loss=[2.0, 1.0], lr=[0.1, 0.05],
                        val_acc_per_class=[[1.0] * 10, [0.9] * 10], unpredicted=[[3], []])
    epochs = {key: list(values) for key, values in saved.state_dict().items()}
    for checkpoint in ({"callbacks": {saved.state_key: saved.state_dict()}}, {"history": epochs}):
        resumed = History()
        resumed.on_load_checkpoint(trainer(TrainerFn.FITTING), None, checkpoint)
        assert resumed.state_dict() == epochs
        tested = History()
        tested.on_load_checkpoint(trainer(TrainerFn.TESTING), None, checkpoint)
        assert tested.state_dict() == History().state_dict() and not any(tested.state_dict().values())
