"""Knowledge distillation as configuration (issue 46): a teacher this project trained teaches a student under the
student's own budget; the loss is alpha * T^2 * KL + (1 - alpha) * cross-entropy; a teacher that trained on the
student's validation images is refused; the record and the leaderboard say who taught whom."""
import pytest
import torch
import torch.nn.functional as F

from mnist_arch.errors import ConfigError
from mnist_arch.results import leaderboard
from mnist_arch.results.record import RunRecord
from mnist_arch.train import job as training
from mnist_arch.train.module import Classifier
from tests.conftest import fast_overrides

HOLDOUT = ["data.val=holdout", "data.holdout_size=64"]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A small net trained on the synthetic files with the holdout kept out, as a teacher for holdout students."""
    from mnist_arch.data import fetch
    from mnist_arch.config.compose import compose
    from tests.conftest import checksums, synthetic_files, write_root

    tmp = tmp_path_factory.mktemp("teacher")
    write_root(tmp / "data", synthetic_files())
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fetch, "MD5", checksums(synthetic_files()))
        overrides = fast_overrides(tmp / "data") + HOLDOUT + ["model=convnet", "model.net.stages=[[8],[16]]",
                                                              "callbacks.plots=false"]
        record = training.train(compose(overrides), tmp / "teacher", overrides)
        assert record.status == "completed"
        yield tmp


def test_the_loss_is_alpha_t_squared_kl_plus_the_rest_cross_entropy():
    torch.manual_seed(0)
    x, logits, y = torch.randn(6, 4), torch.randn(6, 10), torch.randint(0, 10, (6,))
    teacher = torch.nn.Linear(4, 10)
    module = Classifier(torch.nn.Flatten(), {}, {}, teachers=[teacher], distill_alpha=0.3, temperature=2.0)
    ce = F.cross_entropy(logits, y)
    soft = F.softmax(teacher(x) / 2.0, dim=1)
    kl = (soft * (soft.log() - F.log_softmax(logits / 2.0, dim=1))).sum(dim=1).mean()
    got = module._distilled(module._teachers_soft(x), logits, ce).item()
    assert got == pytest.approx(0.3 * 4.0 * kl.item() + 0.7 * ce.item(), rel=1e-5)


def test_a_distilled_student_keeps_its_budget_and_its_record_names_the_teacher(teacher, make_cfg, tmp_path):
    overrides = fast_overrides(teacher / "data") + HOLDOUT + [f"distill.teacher={teacher / 'teacher'}",
                                                              "callbacks.plots=false"]
    with pytest.MonkeyPatch.context() as mp:
        from mnist_arch.data import fetch
        from tests.conftest import checksums, synthetic_files
        mp.setattr(fetch, "MD5", checksums(synthetic_files()))
        record = training.train(make_cfg(overrides), tmp_path / "student", overrides)
        plain = training.train(make_cfg(fast_overrides(teacher / "data") + HOLDOUT + ["callbacks.plots=false"]),
                               tmp_path / "plain", fast_overrides(teacher / "data") + HOLDOUT)
    assert record.status == "completed" and record.params == plain.params == 17_120  # the teacher is not counted
    taught = RunRecord.read(tmp_path / "student").distilled_from
    assert taught["teachers"][0]["run_dir"] == str(teacher / "teacher") and taught["alpha"] == 0.5
    assert taught["train_seconds"] > 0 and taught["teachers"][0]["val_split"] == "holdout"
    state = torch.load(tmp_path / "student" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert all(key.startswith(("net.", "val_", "test_", "train_")) for key in state)  # no teacher weights in it
    rows = leaderboard.leaderboard(leaderboard.read_records(tmp_path))[1]
    assert sorted(r["model"] for r in rows) == ["s4", "s4 (distilled from convnet)"]  # their own rows
    assert taught["teacher_outputs"] == "once"  # no augmentation: every epoch shows the same images


def _student(teacher, make_cfg, run_dir, extra=(), teach=True):
    """A distilled student's run; teach=False makes the datamodule decline to compute the teacher's outputs once,
    so the teacher runs every step as it must under random augmentation."""
    from mnist_arch.data import fetch
    from mnist_arch.data.datamodule import MNISTDataModule
    from tests.conftest import checksums, synthetic_files

    overrides = fast_overrides(teacher / "data") + HOLDOUT + [f"distill.teacher={teacher / 'teacher'}", "seed=3",
                                                              *extra]  # the plots on: every callback sees the batches
    seen, passes = [], []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fetch, "MD5", checksums(synthetic_files()))
        real_teach, real_soft = MNISTDataModule.teach, Classifier._teachers_soft
        mp.setattr(MNISTDataModule, "teach", lambda dm, outputs: seen.append(dm) or (teach and real_teach(dm, outputs)))
        # the size of every batch the teachers see
        mp.setattr(Classifier, "_teachers_soft", lambda module, x: passes.append(len(x)) or real_soft(module, x))
        record = training.train(make_cfg(overrides), run_dir, overrides)
    assert record.status == "completed" and len(seen) == 1
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    return record, seen[0], state, passes


def test_teacher_outputs_computed_once_train_the_student_as_a_teachers_pass_every_step_does(teacher, make_cfg,
                                                                                           tmp_path):
    once, datamodule, weights_once, passes_once = _student(teacher, make_cfg, tmp_path / "once")
    per_step, skipped, weights_per_step, passes_per_step = _student(teacher, make_cfg, tmp_path / "per_step", teach=False)
    images = len(datamodule.splits["train"][0])
    assert datamodule.train_targets.shape == (images, 10)  # a row per training image
    assert skipped.train_targets is None
    # once: one pass over the training set before the first epoch, none in the 2 x 4 training steps; per step: 8
    assert sum(passes_once) == images and passes_per_step == [32] * 8
    assert once.distilled_from["teacher_outputs"] == "once" and per_step.distilled_from["teacher_outputs"] == "per step"
    assert torch.allclose(datamodule.train_targets.sum(dim=1), torch.ones(1), atol=1e-5)  # softened: probabilities
    nets = [key for key in weights_once if key.startswith("net.")]
    assert nets and all(torch.allclose(weights_once[k].float(), weights_per_step[k].float(), atol=1e-4) for k in nets)
    assert once.train_loss == pytest.approx(RunRecord.read(tmp_path / "per_step").train_loss, rel=1e-4)


def test_under_random_augmentation_the_teachers_run_every_step(teacher, make_cfg, tmp_path):
    record, datamodule, _, passes = _student(teacher, make_cfg, tmp_path / "rotated", ["data.rotation=10"])
    assert passes == [32] * 8
    assert datamodule.train_targets is None
    assert RunRecord.read(tmp_path / "rotated").distilled_from["teacher_outputs"] == "per step"


@pytest.mark.parametrize("student, message", [
    (["data.val=fold", "data.folds=4", "data.fold=0"], "trained on images this run validates on (data.val=fold)"),
    (["data.val=holdout", "data.holdout_size=128"], "(holdout_size 64, fold None of None) and so trained on images"),
])
def test_a_teacher_that_saw_the_students_validation_images_is_refused(teacher, make_cfg, tmp_path, student, message):
    overrides = fast_overrides(teacher / "data") + student + [f"distill.teacher={teacher / 'teacher'}"]
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        training.train(make_cfg(overrides), tmp_path / "student")
    assert not (tmp_path / "student" / "checkpoints").exists()


def test_a_teacher_must_be_a_run_dir_and_its_values_are_checked(make_cfg, tmp_path):
    with pytest.raises(ConfigError, match="distill.alpha=1.5 must be in"):
        training.setup(make_cfg(["distill.alpha=1.5"]))
    with pytest.raises(ConfigError, match="no such run dir or checkpoint file"):
        training.setup(make_cfg([f"distill.teacher={tmp_path / 'nowhere'}", "data.download=false",
                                 f"data.root={tmp_path}"]))


@pytest.mark.parametrize("preset_name, designs, name, model", [
    ("frontier_4k_distilled", "race_4k_distill.yaml", "trial23_kd", "frontier_4k_sep"),
    ("frontier_8k_distilled", "race_8k_distill.yaml", "frontier_8k_kd_plain", "frontier_8k"),
])
def test_a_distilled_preset_is_the_design_raced_and_confirmed(preset_name, designs, name, model):
    """experiment=frontier_<n>k_distilled composes to the race's design of that name (benchmarks/, the design
    RESULTS.md confirmed on seeds 11-20): the same net, recipe, data and teachers."""
    from dataclasses import asdict

    import yaml

    from pathlib import Path

    from mnist_arch.config.compose import load

    candidates = Path(__file__).resolve().parents[1] / "benchmarks" / designs
    raced = {d["name"]: d["overrides"] for d in yaml.safe_load(candidates.read_text())}
    preset, design = load([f"experiment={preset_name}"]), load(raced[name])
    assert preset.model.net == design.model.net and preset.model.name == model
    assert preset.distill.teacher and len(preset.distill.teacher) == 3
    for group in ("optimizer", "scheduler", "data", "distill", "budget", "trainer"):
        assert asdict(getattr(preset, group)) == asdict(getattr(design, group)), group
    assert preset.label_smoothing == design.label_smoothing and preset.test_weights == design.test_weights
