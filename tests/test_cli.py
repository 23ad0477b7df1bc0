"""One way every command fails (mnist_arch/cli.py): the project's errors are one line with exit 2 (input
refused) or 1 (work failed); a bug is one line naming the file that holds its traceback, or the traceback
itself with MNIST_ARCH_DEBUG=1; Ctrl-C is 130."""
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from mnist_arch import cli
from mnist_arch.errors import BadFile, ConfigError, DataError

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]


def _fails_with(capsys, main, *args):
    with pytest.raises(SystemExit) as done:
        main(*args)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    return done.value.code, err.strip()


@cli.command
def _raises(error):
    raise error


def test_the_projects_errors_are_one_line_with_their_exit_code(capsys):
    assert _fails_with(capsys, _raises, BadFile("x.ckpt: truncated")) == (2, "error: x.ckpt: truncated")
    assert _fails_with(capsys, _raises, DataError("no MNIST\nhere")) == (1, "error: no MNIST here")


def test_a_bug_is_one_line_and_its_traceback_is_kept(capsys, monkeypatch):
    monkeypatch.delenv(cli.DEBUG, raising=False)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    code, line = _fails_with(capsys, _raises, ZeroDivisionError("division by zero"))
    where = re.fullmatch(r"error: unexpected ZeroDivisionError: division by zero \(a bug; the full traceback is in "
                         r"(\S+), or run again with MNIST_ARCH_DEBUG=1 to see it\)", line)
    assert code == 1 and where
    traceback = Path(where.group(1)).read_text()
    assert traceback.startswith("Traceback (most recent call last):") and "raise error" in traceback
    assert traceback.strip().endswith("ZeroDivisionError: division by zero")


@pytest.mark.parametrize("switch", [cli.DEBUG, "HYDRA_FULL_ERROR"])
def test_the_debug_switch_lets_the_traceback_through(monkeypatch, switch):
    monkeypatch.setenv(switch, "1")
    with pytest.raises(ZeroDivisionError):
        _raises(ZeroDivisionError("division by zero"))


def test_a_file_that_cannot_be_written_is_one_line_not_a_bug(capsys):
    assert _fails_with(capsys, _raises, PermissionError(13, "Permission denied", "run/evaluate.json")) == (
        1, "error: Permission denied: run/evaluate.json")


def test_ctrl_c_outside_a_run_exits_130(capsys):
    with pytest.raises(SystemExit) as done:
        _raises(KeyboardInterrupt())
    assert done.value.code == 130 and capsys.readouterr().err == "interrupted\n"


def test_the_wrapper_leaves_hydras_switch_as_it_found_it(monkeypatch):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises(SystemExit):
        _raises(BadFile("x"))
    assert "HYDRA_FULL_ERROR" not in __import__("os").environ


# Each command on PATH, a bad input, and the line it must give (exit 2: refused before any work).
BAD_INPUT = {
    "mnist-arch": (["model=s44"], "error: model=s44 is not an option of model; did you mean model=s4?"),
    "mnist-arch-lr-find": (["optimizer.lr=-1"], "error: optimizer.lr=-1.0 must be > 0"),
    "mnist-arch-layers": (["data.batch_size=zero"], "error: Error merging override data.batch_size=zero"),
    "mnist-arch-summary": (["model=s44"], "error: model=s44 is not an option of model; did you mean model=s4?"),
    "mnist-arch-report": (["{tmp}/nowhere"], "error: {tmp}/nowhere: not a folder"),
    "mnist-arch-evaluate": (["{tmp}/nowhere"], "error: {tmp}/nowhere: no such run dir or checkpoint file"),
    "mnist-arch-predict": (["{tmp}/nowhere"], "error: the following arguments are required: files (see python -m "
                                              "mnist_arch.predict --help)"),
    "mnist-arch-export": (["{tmp}/nowhere", "--format", "onnx"], "error: {tmp}/nowhere: no such run dir or "
                                                                 "checkpoint file"),
    "mnist-arch-data": (["--timeout", "soon"], "error: argument --timeout: invalid float value: 'soon'"),
    "mnist-arch-search": (["search=nope"], "error: search=nope is not an option of search; its options: "),
    "mnist-arch-serve": (["{tmp}/nowhere"], "error: {tmp}/nowhere: no such run dir or checkpoint file"),
}


HYDRA_COMMANDS = ("mnist-arch", "mnist-arch-lr-find", "mnist-arch-search")  # they read their overrides from argv


def test_every_command_is_wrapped():
    assert set(BAD_INPUT) == set(SCRIPTS)
    for name, target in SCRIPTS.items():
        module, function = target.split(":")
        main = getattr(__import__(module, fromlist=[function]), function)
        assert getattr(main, "__wrapped__", None) is not None, f"{name} ({target}) is not wrapped by cli.command"


@pytest.mark.parametrize("name", sorted(BAD_INPUT))
def test_every_command_refuses_bad_input_in_one_line_with_exit_2(tmp_path, capsys, monkeypatch, name):
    """Each entry point as installed, called in this process: no traceback, no Hydra screen, one line. (The
    run is also tried in a fresh process, as typed, in test_config.py.)"""
    from hydra.core.global_hydra import GlobalHydra

    args, expected = BAD_INPUT[name]
    args = [a.format(tmp=tmp_path) for a in args]
    module, function = SCRIPTS[name].split(":")
    main = getattr(__import__(module, fromlist=[function]), function)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [name, *args])  # the Hydra commands read their overrides from argv
    try:
        code, line = _fails_with(capsys, main, *([] if name in HYDRA_COMMANDS else [args]))
    finally:
        GlobalHydra.instance().clear()
    assert code == 2 and line.startswith(expected.format(tmp=tmp_path))


def test_a_runs_console_is_ours_and_its_log_keeps_the_rest(mnist_root, tmp_path):
    """The README's command as typed, on a machine with Slurm installed (an `srun` on PATH): the console has
    the layer table, the epoch lines and the headline, and none of the library messages nobody can act on
    (each kept in run.log instead); Lightning's progress chatter and its test-metrics table are not shown."""
    import os
    import subprocess

    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "srun").write_text("#!/bin/sh\nexit 0\n")
    (tmp_path / "bin" / "srun").chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    run_dir = tmp_path / "run"
    from tests.conftest import fast_overrides

    overrides = [o for o in fast_overrides(mnist_root) if o != "trainer.enable_progress_bar=false"]
    done = subprocess.run([sys.executable, "-m", "mnist_arch.run", *overrides, "data.verify=false",
                           f"hydra.run.dir={run_dir}", "callbacks.progress=lines"], capture_output=True, text=True,
                          env=env, timeout=300, cwd=tmp_path)
    console = done.stdout + done.stderr
    assert done.returncode == 0, console[-2000:]
    assert console.startswith("s4\nlayer ") and console.strip().splitlines()[-1].startswith("s4 · 17,120 params")
    assert len([line for line in console.splitlines() if line.startswith("epoch ")]) == 2
    log = (run_dir / "run.log").read_text()
    for name, pattern in cli.NOT_ACTIONABLE.items():
        assert not pattern.search(console), name
        assert pattern.search(log), name  # kept in the run's log
    for chatter in ("Seed set to", "GPU available", "`Trainer.fit` stopped", "Test metric"):
        assert chatter not in console
    assert "Seed set to" in log and "`Trainer.fit` stopped" in log


@pytest.mark.parametrize("content, expected", [
    ("data:\n  batch_size: [1, 2\n", "error: a config file is not valid YAML: while parsing a flow sequence"),
    ("# @package _global_\ndata:\n  batch_size: lots\n", "error: In 'experiment/mine': ValidationError raised while "
                                                        "composing config: Value 'lots' of type 'str' could not be "
                                                        "converted to Integer\n"),
])
def test_a_broken_config_file_of_your_own_is_one_line(tmp_path, monkeypatch, capsys, content, expected):
    from mnist_arch.commands import run
    from tests.conftest import hydra_command

    (tmp_path / "conf" / "experiment").mkdir(parents=True)
    (tmp_path / "conf" / "experiment" / "mine.yaml").write_text(content)
    code = hydra_command(run.main, ["--config-dir", str(tmp_path / "conf"), "experiment=mine"], monkeypatch)
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(expected) and err.count("\n") == 1, err


@pytest.mark.parametrize("argv, expected", [
    # a search key before its space is chosen: `search` is still null in the config
    (["search.n_trials=3"], "error: search.n_trials: `search` is empty until its group is chosen; choose one first "
                            "(search=<name>)\n"),
    (["search=4k", "search.space=${oc.env:HOME}"], "error: search.space: Cannot assign str to Dict[str, Any]\n"),
    (["search=4k", "search.start=[1]"], "error: search.start: Cannot assign int to Dict[str, Any]\n"),
    (["search=4k", "search.n_trial=3"], "error: search.n_trial is not a key of the search group; did you mean "
                                        "search.n_trials?\n"),
])
def test_search_overrides_that_hydra_takes_but_cannot_mean_are_one_line(tmp_path, monkeypatch, capsys, argv,
                                                                        expected):
    from mnist_arch.commands import search
    from tests.conftest import hydra_command

    monkeypatch.chdir(tmp_path)
    assert hydra_command(search.main, argv, monkeypatch) == 2
    assert capsys.readouterr().err.startswith(expected) and not list(tmp_path.rglob("study.db"))


def test_a_net_given_as_a_scalar_is_one_line(monkeypatch):
    """OmegaConf types a scalar behind an interpolation, not a mapping (found by test_readers_property)."""
    from mnist_arch.config.compose import load

    monkeypatch.setenv("NOT_A_NET", "0")
    with pytest.raises(ConfigError, match=r"^model.net must be a mapping \(name: value, ...\), not '0'$"):
        load(["model.net=${oc.env:NOT_A_NET}"])


def test_every_console_command_answers_help(monkeypatch, capsys):
    """Each entry of pyproject's [project.scripts] (the `python -m mnist_arch.<command>` of the same name) prints
    its usage and exits 0 on --help: argparse's and Hydra's alike."""
    import importlib
    import inspect

    from tests.conftest import hydra_command

    REPO = Path(__file__).resolve().parents[1]

    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    for name, target in scripts.items():
        module, _, function = target.partition(":")
        main = getattr(importlib.import_module(module), function)
        if "argv" in inspect.signature(inspect.unwrap(main)).parameters:
            with pytest.raises(SystemExit) as done:
                main(["--help"])
            code = done.value.code
        else:  # a Hydra app reads sys.argv
            code = hydra_command(main, ["--help"], monkeypatch)
        out = capsys.readouterr().out
        assert code in (0, None) and ("usage:" in out or "powered by Hydra" in out), (name, code, out[:200])


@pytest.mark.parametrize("argv, code", [(["model=s6"], 0), (["model=s5"], 2)])
def test_a_command_started_as_a_process_ends_as_python_would(tmp_path, argv, code):
    """A command that is its process's entry skips the interpreter's teardown (cli.leave) but nothing Python does
    at exit: atexit handlers run, threads that are not daemons finish, the output is all there, the code is its."""
    import subprocess

    marker, late = tmp_path / "atexit", tmp_path / "thread"
    script = tmp_path / "mnist-arch-layers"  # as pip writes a console script, with a marker and a thread of ours
    script.write_text(f"import atexit, sys, threading, time\n"
                      f"atexit.register(lambda: open({str(marker)!r}, 'w').write('ran'))\n"
                      f"threading.Thread(target=lambda: (time.sleep(1), open({str(late)!r}, 'w').write('done'))).start()\n"
                      f"from mnist_arch.layers import main\n"
                      f"main()\n"
                      f"print('not reached')\n")
    done = subprocess.run([sys.executable, str(script), *argv], capture_output=True, text=True, timeout=120)
    assert done.returncode == code, done.stderr
    assert marker.read_text() == "ran" and late.read_text() == "done"
    assert "not reached" not in done.stdout
    if code == 0:
        assert done.stdout.rstrip().endswith("(must be (2, 10))") and not done.stderr
    else:
        assert done.stderr.startswith("error: model=s5 is not an option of model") and done.stderr.count("\n") == 1


@pytest.mark.parametrize("argv, line", [
    (["x", "--format", "onnxx"], "error: argument --format: invalid choice: 'onnxx'; did you mean onnx? "
                                 "(see python -m mnist_arch.export --help)\n"),
    (["x", "--format", "zzz"], "error: argument --format: invalid choice: 'zzz'; choose from: pt2, onnx, torchscript "
                               "(see python -m mnist_arch.export --help)\n"),
])
def test_a_value_outside_an_options_choices_gets_a_did_you_mean(argv, line, capsys):
    from mnist_arch.commands import export

    with pytest.raises(SystemExit) as done:
        export.main(argv)
    assert done.value.code == 2 and capsys.readouterr().err == line


def test_a_refused_override_imports_no_lightning():
    """A typo is answered before Lightning is imported (the run command imports mnist_arch/train/job.py once the
    config is valid; torch is imported, by the schema's check of optimizer classes): `python -X importtime` lists every module imported."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "mnist_arch.run", "model=s5"],
                          capture_output=True, text=True, timeout=120)
    imported = {line.split("|")[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert done.returncode == 2 and "did you mean model=s4" in done.stderr
    assert "hydra" in imported and "torch" in imported and not {"pytorch_lightning", "lightning_fabric"} & imported


def test_an_error_inside_a_hydra_job_is_one_line_and_keeps_its_type(tmp_path, monkeypatch, capsys):
    """Hydra's job runner catches a job's exception to print "Error executing job ..." before raising it again;
    the one decorator of a Hydra command (cli.hydra_command) carries it past, by type: the console has our one
    line, and with MNIST_ARCH_DEBUG=1 the job's own exception comes out, its traceback whole."""
    from mnist_arch.commands import run
    from mnist_arch.train import job
    from tests.conftest import hydra_command

    def crash(cfg, run_dir):
        raise ZeroDivisionError("inside the job")

    monkeypatch.setattr(job, "train", crash)
    monkeypatch.chdir(tmp_path)
    argv = [f"hydra.run.dir={tmp_path / 'run'}"]
    assert hydra_command(run.main, argv, monkeypatch) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: unexpected ZeroDivisionError: inside the job (a bug; the full traceback is in ")
    assert len(err.strip().splitlines()) == 1 and "Error executing job" not in err
    traceback_file = Path(re.search(r"the full traceback is in (\S+),", err).group(1))
    assert "in crash" in traceback_file.read_text()  # the job's own frames
    monkeypatch.setenv("MNIST_ARCH_DEBUG", "1")
    with pytest.raises(ZeroDivisionError, match="inside the job"):
        hydra_command(run.main, argv, monkeypatch)
