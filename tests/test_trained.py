"""Using a trained net: evaluate, predict, export; and the per-class diagnosis every run records."""
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from mnist_arch.commands import evaluate
from mnist_arch.commands import export
from mnist_arch.commands import predict
from mnist_arch.data.digits import prepare
from mnist_arch.inference import formats as export_formats
from mnist_arch.results.record import RunRecord
from mnist_arch.train import job as training
from tests.conftest import N_TEST, fast_overrides, synthetic_split


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, make_cfg):
    """One short run (a tiny registered convnet, val=test) on synthetic files, shared by the tests below; their
    checksums stay patched in while those tests run."""
    from mnist_arch.data import fetch
    from tests.conftest import checksums, synthetic_files, write_root

    tmp = tmp_path_factory.mktemp("trained")
    write_root(tmp / "data", synthetic_files())
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fetch, "MD5", checksums(synthetic_files()))
        overrides = fast_overrides(tmp / "data") + ["model=convnet", "model.net.stages=[[4],[8]]",
                                                    "trainer.max_epochs=3", "callbacks.plots=false"]
        record = training.train(make_cfg(overrides), tmp / "run")
        yield tmp, record


def test_evaluate_scores_the_test_set_as_the_run_did(trained_run, capsys):
    tmp, record = trained_run
    evaluate.main([str(tmp / "run")])
    out = capsys.readouterr().out
    result = json.loads((tmp / "run" / "evaluate.json").read_text())
    assert result["accuracy"] == pytest.approx(record.test_acc, abs=1e-6) and result["images"] == N_TEST
    assert result["checkpoint"].endswith("last.ckpt") and result["split"] == "10k test"
    assert len(result["per_class"]) == 10 and sum(map(sum, result["confusion"])) == N_TEST
    assert result["per_class"] == pytest.approx(record.val_acc_per_class, abs=1e-6)  # the last epoch = final weights
    assert f"{record.test_acc:.2%}" in out and "confusion (rows: true digit" in out

    evaluate.main([str(tmp / "run" / "checkpoints" / "best.ckpt"), "data.val=holdout", "data.holdout_size=64"])
    holdout = json.loads((tmp / "run" / "evaluate.json").read_text())
    assert holdout["split"] == "holdout" and holdout["images"] == 64


@pytest.mark.parametrize("args, message", [
    (["nowhere"], "error: nowhere: no such run dir or checkpoint file"),
    (["{run}", "optimizer.lr=1"], "error: optimizer.lr=1: evaluate takes data.* overrides only"),
    (["{other}"], "its weights do not fit s6 as built now"),
    (["{run}", "--trust", "x"], "error: unrecognized arguments: --trust x (see python -m mnist_arch.evaluate --help)"),
])
def test_evaluate_refuses_in_one_line(trained_run, tmp_path, capsys, args, message):
    tmp, _ = trained_run
    checkpoint = torch.load(tmp / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    checkpoint["net_spec"] = {"name": "s6", "net": {}}
    torch.save(checkpoint, tmp_path / "other.ckpt")
    args = [a.format(run=tmp / "run", other=tmp_path / "other.ckpt") for a in args]
    with pytest.raises(SystemExit) as done:
        evaluate.main(args)
    err = capsys.readouterr().err.strip()
    assert done.value.code == 2 and message in err and len(err.splitlines()) == 1


def test_mnist_images_saved_as_png_predict_as_the_run_does(trained_run, tmp_path, capsys):
    """The synthetic 10k-test stand-in, saved as 8-bit PNGs: predict must give the net's own predictions."""
    from mnist_arch.inference import trained as trained_nets

    tmp, _ = trained_run
    images, _ = synthetic_split(N_TEST, 1)  # the test split conftest writes
    images = images[:12].copy()
    images[:, [0, -1], :] = images[:, :, [0, -1]] = 0  # a dark border, as MNIST's digits have: taken as they are
    paths = []
    for i, image in enumerate(images[:12]):
        paths.append(tmp_path / f"digit_{i}.png")
        Image.fromarray(image).save(paths[-1])
    net = trained_nets.trained_net(tmp / "run")
    expected = net.probabilities(torch.from_numpy(images[:12]).unsqueeze(1).float() / 255).argmax(1).tolist()
    with pytest.raises(SystemExit) as done:
        predict.main([str(tmp / "run"), *map(str, paths), "--json"])
    results = json.loads(capsys.readouterr().out)
    assert done.value.code == 0 and [r["digit"] for r in results] == expected
    assert all(0 < r["probability"] <= 1 and r["runner_up"] != r["digit"] for r in results)


def test_predict_reads_every_kind_and_reports_bad_files_one_line_each(trained_run, tmp_path, capsys):
    tmp, _ = trained_run
    images, _ = synthetic_split(5, 3)
    np.save(tmp_path / "stack.npy", images)
    (tmp_path / "notes.txt").write_text("not a picture")
    Image.new("L", (40, 30), 255).save(tmp_path / "blank.png")
    idx = next((tmp / "data").rglob("t10k-images-idx3-ubyte"))
    with pytest.raises(SystemExit) as done:
        predict.main([str(tmp / "run"), str(tmp_path / "stack.npy"), str(tmp_path / "notes.txt"),
                      str(tmp_path / "blank.png"), str(tmp_path), str(idx)])
    captured = capsys.readouterr()
    lines, errors = captured.out.strip().splitlines(), captured.err.strip().splitlines()
    assert done.value.code == 1  # some files could not be read; the others were
    assert len(lines) == 5 + N_TEST
    assert all(re.match(r".*stack\.npy\[\d\]: \d \(p [01]\.\d{3}; runner-up \d p [01]\.\d{3}\)$", line)
               for line in lines[:5])
    assert errors == [f"error: {tmp_path / 'notes.txt'}: not an image file (PNG, JPEG, ...), an .npy array or an IDX "
                      "file",
                      f"error: {tmp_path / 'blank.png'}: the image is blank (one flat colour): no digit to read",
                      f"error: {tmp_path}: is a folder, not a picture or array"]
    assert re.match(r".*t10k-images-idx3-ubyte\[0\]: \d \(p ", lines[5])


def test_a_drawn_digit_is_prepared_the_way_mnist_digits_were():
    """Dark ink on white paper, off-centre, wider than tall: inverted, cropped, fitted in 20x20, centred."""
    paper = Image.new("RGB", (200, 120), "white")
    ImageDraw.Draw(paper).rectangle([20, 30, 100, 70], fill=(20, 20, 60))  # an 81 x 41 dark bar, top left
    x = prepare(np.asarray(paper.convert("L"), dtype=np.float32))
    assert x.shape == (28, 28) and x.max() > 0.9 and x[0].max() == 0  # light ink, dark ground
    rows, cols = (x > 0.1).any(1).nonzero().flatten(), (x > 0.1).any(0).nonzero().flatten()
    assert cols[-1] - cols[0] + 1 == 20 and 9 <= rows[-1] - rows[0] + 1 <= 12  # fitted to 20 wide, aspect kept
    mass = x.sum()
    cy = (x.sum(1) * torch.arange(28)).sum() / mass
    cx = (x.sum(0) * torch.arange(28)).sum() / mass
    assert abs(cy - 13.5) <= 0.6 and abs(cx - 13.5) <= 0.6  # centred by centre of mass


def test_a_digit_rendered_as_text_is_read_and_predicted(trained_run, tmp_path, capsys):
    """A '7' typed in black on a white card, larger and off-centre: one prediction line, and the prepared
    image is MNIST-shaped (light ink, 20 px tall box, centred)."""
    from PIL import ImageFont

    tmp, _ = trained_run
    card = Image.new("RGB", (120, 90), "white")
    ImageDraw.Draw(card).text((70, 10), "7", fill="black", font=ImageFont.load_default(size=60))
    card.save(tmp_path / "seven.jpg")
    x = prepare(np.asarray(card.convert("L"), dtype=np.float32))
    rows = (x > 0.1).any(1).nonzero().flatten()
    assert rows[-1] - rows[0] + 1 == 20 and x[:, :3].max() == 0 and x[:, -3:].max() == 0
    with pytest.raises(SystemExit) as done:
        predict.main([str(tmp / "run"), str(tmp_path / "seven.jpg")])
    assert done.value.code == 0
    assert re.fullmatch(r".*seven\.jpg: \d \(p [01]\.\d{3}; runner-up \d p [01]\.\d{3}\)", capsys.readouterr().out.strip())


def test_a_net_the_exporter_cannot_express_is_one_line(tmp_path, capsys):
    from tests.nets import ZetaFeatures

    state = {f"net.{k}": v for k, v in ZetaFeatures().state_dict().items()}
    torch.save({"net_spec": {"name": "custom", "net": {"_target_": "tests.nets.ZetaFeatures"}}, "state_dict": state},
               tmp_path / "zeta.ckpt")
    with pytest.raises(SystemExit) as done:
        export.main([str(tmp_path / "zeta.ckpt"), "--format", "onnx", "--trust-target", "tests.nets.ZetaFeatures"])
    err = capsys.readouterr().err.strip()
    assert done.value.code == 1 and len(err.splitlines()) == 1  # the export failed: exit 1 (mnist_arch/cli.py)
    assert err == ("error: custom cannot be exported to onnx: no ONNX function for the op prims.zeta (the ONNX "
                   "exporter, opset 20)")


def test_torchscript_export_matches_the_net(trained_run, tmp_path, capsys):
    tmp, _ = trained_run
    with pytest.raises(SystemExit) as done:
        export.main([str(tmp / "run"), "--format", "torchscript", "--out", str(tmp_path / "net.pt")])
    out = capsys.readouterr().out
    assert done.value.code == 0 and (tmp_path / "net.pt").is_file() and "within 0.0001" in out
    with pytest.warns(FutureWarning, match="torch.jit.load` is deprecated"):  # kept for runtimes that still load it
        loaded = torch.jit.load(str(tmp_path / "net.pt"))
    assert loaded(torch.zeros(3, 1, 28, 28)).shape == (3, 10)  # any batch size


def test_onnx_export_matches_the_net(trained_run, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    tmp, _ = trained_run
    with pytest.raises(SystemExit) as done:
        export.main([str(tmp / "run"), "--format", "onnx"])
    out = capsys.readouterr().out
    assert done.value.code == 0 and (tmp / "run" / "convnet.onnx").is_file()
    diff = float(re.search(r"max \|exported - pytorch\| = ([0-9.e+-]+)", out).group(1))
    assert diff <= 1e-4


def test_a_pt2_export_matches_the_net_and_evaluate_and_predict_read_it(trained_run, tmp_path, capsys):
    """export --format pt2: a torch.export program with a free batch size, checked against the net; evaluate and
    predict take the .pt2, trusted by the sha256 export printed, with the same accuracy (tests/test_programs.py:
    an untrusted or hostile one)."""
    import numpy as np

    from mnist_arch.commands import predict

    tmp, record = trained_run
    with pytest.raises(SystemExit) as done:
        export.main([str(tmp / "run"), "--format", "pt2", "--out", str(tmp_path / "net.pt2")])
    out = capsys.readouterr().out
    assert done.value.code == 0 and "pt2, max |exported - pytorch|" in out and "within 0.0001" in out
    digest = re.search(r"--trust-program ([0-9a-f]{64})", out).group(1)
    program = torch.export.load(str(tmp_path / "net.pt2")).module()
    assert program(torch.zeros(5, 1, 28, 28)).shape == (5, 10)
    evaluate.main([str(tmp_path / "net.pt2"), f"data.root={tmp / 'data'}", "--trust-program", digest])
    result = json.loads((tmp_path / "evaluate.json").read_text())
    assert result["accuracy"] == pytest.approx(record.test_acc, abs=1e-6) and result["model"] == "net"
    images = synthetic_split(3, 7)[0]
    np.save(tmp_path / "digits.npy", images)
    capsys.readouterr()
    with pytest.raises(SystemExit) as done:
        predict.main([str(tmp_path / "net.pt2"), str(tmp_path / "digits.npy"), "--trust-program",
                      str(tmp_path / "net.pt2")])
    assert done.value.code == 0 and capsys.readouterr().out.count("digits.npy[") == 3


def _rewritten(source, target, change):
    """A copy of the .pt2 `source` with `change(name, bytes) -> bytes` applied to its records."""
    import zipfile

    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for info in old.infolist():
            new.writestr(info.filename, change(info.filename, old.read(info.filename)))
    return target


@pytest.mark.parametrize("change, message", [
    (lambda n, b: b.replace(b'"guards_code": []', b'"guards_code": ["__import__(\'os\').system(\'x\')"]')
     if n.endswith("model.json") else b, "refused: it carries guards code"),
    (lambda n, b: b.replace(b'"torch.ops.aten.relu.default"', b'"torch.hub.load"') if n.endswith("model.json") else b,
     "refused: a node calls 'torch.hub.load', not an aten op"),
    (lambda n, b: b.replace(b'"use_pickle": false', b'"use_pickle": true', 1)
     if n.endswith("weights_config.json") else b, "is a pickled Python object, not a tensor"),
    (lambda n, b: b.replace(b"Symbol('s", b"__import__('os').system('s") if n.endswith("model.json") else b,
     "refused: a shape expression"),
    (lambda n, b: b[:40] if n.endswith("model.json") else b, "not a readable .pt2 (JSONDecodeError"),
])
def test_a_trusted_pt2_is_still_refused_what_torch_would_unpickle_or_evaluate(trained_run, tmp_path, capsys, change,
                                                                              message):
    """Trusted by its digest, an edited .pt2 is still checked before torch.export.load sees it: guards code, any
    torch attribute as a node's target, pickled weights, shape strings through sympify are refused in one line."""
    tmp, _ = trained_run
    with pytest.raises(SystemExit):
        export.main([str(tmp / "run"), "--format", "pt2", "--out", str(tmp_path / "good.pt2")])
    bad = _rewritten(tmp_path / "good.pt2", tmp_path / "bad.pt2", change)
    with pytest.raises(SystemExit) as done:
        evaluate.main([str(bad), "--trust-program", str(bad)])
    err = capsys.readouterr().err
    assert done.value.code == 2 and len(err.strip().splitlines()) == 1 and message in err, err


def test_a_class_never_predicted_is_recorded_and_warned(make_cfg, mnist_root, tmp_path, caplog):
    """ConstantScores always says 0: classes 1-9 are never predicted, from epoch 1 on."""
    overrides = fast_overrides(mnist_root) + ["model=custom", "model.net._target_=tests.nets.ConstantScores"]
    record = training.train(make_cfg(overrides), tmp_path / "run")
    assert record.unpredicted == [list(range(1, 10))] * 2 and record.never_predicted == {k: 1 for k in range(1, 10)}
    assert record.val_acc_per_class[0] == 1.0 and record.val_acc_per_class[1:] == [0.0] * 9
    # ConstantScores' scores are no ReLU's: no word of one
    assert record.logits_after_relu is False and "ReLU" not in caplog.text
    assert record.headline().endswith("⚠ classes 1, 2, 3, 4, 5, 6, 7, 8, 9 never predicted since epoch 1")
    record.unpredicted, record.logits_after_relu = [[9], [3, 9]], True
    assert record.headline().endswith("⚠ class 9 never predicted since epoch 1; class 3 never predicted since epoch 2: "
                                      "a ReLU on the logits can stop a class's gradient")
    assert "epoch 2: no validation image was predicted as class 1, 2, 3" in caplog.text
    assert RunRecord.read(tmp_path / "run").val_acc_per_class == record.val_acc_per_class


def test_one_model_table_and_accuracy_to_four_places(make_cfg, mnist_root, tmp_path, capsys):
    overrides = [o for o in fast_overrides(mnist_root) if o != "trainer.enable_progress_bar=false"]
    training.train(make_cfg(overrides + ["callbacks.progress=bar", "callbacks.progress_refresh=1",
                                    "trainer.max_epochs=1"]), tmp_path / "run")
    captured = capsys.readouterr()
    assert "FLOPs" not in captured.out and "Total params" not in captured.out  # Lightning's own summary is off
    assert re.search(r"val/acc=\d\.\d{4}\b", captured.out)  # the bar (Lightning prints it to stdout): 4 places


def test_output_to_a_file_gets_one_line_per_epoch(make_cfg, mnist_root, tmp_path, capsys):
    """pytest's captured stdout is not a terminal: progress=auto then writes lines, not bar updates."""
    overrides = [o for o in fast_overrides(mnist_root) if o != "trainer.enable_progress_bar=false"]
    record = training.train(make_cfg(overrides + ["trainer.max_epochs=3"]), tmp_path / "run")
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("epoch ")]
    assert "\r" not in out and len(lines) == 3
    assert re.fullmatch(r"epoch 3/3 · train loss \d\.\d{4} · val loss \d\.\d{4} · val acc \d\.\d{4} · "
                        r"\d+\.\d s", lines[-1])
    for line, train_loss, val_acc in zip(lines, record.train_loss, record.val_acc):  # each epoch's own numbers
        assert f"train loss {train_loss:.4f} " in line and f"val acc {val_acc:.4f}" in line


def test_an_export_off_beyond_its_tolerance_exits_1(trained_run, tmp_path, capsys, monkeypatch):
    """The check is real: an exported file whose logits drift past the tolerance fails the command."""
    tmp, _ = trained_run
    suffix, write, run_file = export.FORMATS["torchscript"]
    monkeypatch.setitem(export.FORMATS, "torchscript", (suffix, write,
                                                        lambda path, x, digest: run_file(path, x, digest) + 1e-3))
    with pytest.raises(SystemExit) as done:
        export.main([str(tmp / "run"), "--format", "torchscript", "--out", str(tmp_path / "net.pt")])
    assert done.value.code == 1 and "(OVER 0.0001)" in capsys.readouterr().out


def test_a_run_dir_from_elsewhere_cannot_make_evaluate_or_export_write_through_a_link(trained_run, tmp_path,
                                                                                      capsys):
    """docs/trust.md: a run dir someone hands you cannot make a command write anywhere. Its evaluate.json and
    the export's default output are links to a file of yours: the links are replaced, your file is kept."""
    import shutil

    tmp, _ = trained_run
    run = tmp_path / "handed_over"
    shutil.copytree(tmp / "run", run)
    victim = tmp_path / "bashrc"
    victim.write_text("keep me\n")
    for name in ("evaluate.json", "convnet.pt"):
        (run / name).unlink(missing_ok=True)
        (run / name).symlink_to(victim)
    evaluate.main([str(run)])
    with pytest.raises(SystemExit) as done:
        export.main([str(run), "--format", "torchscript"])
    capsys.readouterr()
    assert done.value.code == 0 and victim.read_text() == "keep me\n"
    assert not (run / "evaluate.json").is_symlink() and json.loads((run / "evaluate.json").read_text())["images"] == N_TEST
    assert not (run / "convnet.pt").is_symlink()
    digest = export_formats.sha256((run / "convnet.pt").read_bytes())
    assert export_formats.run_torchscript(run / "convnet.pt", torch.zeros(1, 1, 28, 28), digest).shape == (1, 10)
