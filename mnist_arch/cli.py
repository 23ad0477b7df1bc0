"""How every command ends: the one wrapper the entry points share (`@command` on each argparse `main`,
`@hydra_command(config)` on each Hydra one).

Exit codes, the same for every command:
    0    done
    1    the work failed: a run stopped (bad data, a NaN loss), the net breaks its budget (the layer
         table), an export is off beyond its tolerance, a file among several could not be read (the
         others were), a sweep with a failed job, or an unexpected error (a bug)
    2    the input was refused before any work: a bad argument, config key or value, or a file that is
         not what it must be (a truncated checkpoint, one that names code you did not trust, one past
         the limits of mnist_arch/files.py; for predict, every file it was given)
    130  interrupted by Ctrl-C (143: by SIGTERM, a run only)

Every error is one line on stderr, `error: ...`. An unexpected exception is one line too, naming the file
its full traceback was written to (in a folder of the system's temp dir that only this user can open);
`MNIST_ARCH_DEBUG=1` (or Hydra's own `HYDRA_FULL_ERROR=1`) lets the traceback through instead. Control
characters in a message (a record's error may carry an ANSI escape) are printed as escapes.
"""
import argparse
import atexit
import dataclasses
import functools
import logging
import os
import re
import stat
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Callable, Iterable, List, NoReturn, Optional, Sequence, Tuple

import hydra
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException, MissingConfigException
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from mnist_arch.errors import ConfigError, RunError, did_you_mean, from_tracker, printable, redact

FAILED, USAGE, INTERRUPTED = 1, 2, 130
# Library messages a user cannot act on: kept in run.log, never on the console (conf/hydra/job_logging/).
NOT_ACTIONABLE = {
    # Lightning's advertisement for its cloud loggers, at every run
    "litlogger": re.compile(r"Tip: For seamless cloud (logging|uploads)"),
    # Lightning's hint that `srun` exists, on any machine with Slurm installed, whether or not the run is a job
    "srun": re.compile(r"The `srun` command is available on your system but is not used"),
    # a torch API that Lightning's own internals still call; nothing in a config or a net can change it
    "LeafSpec": re.compile(r"isinstance\(treespec, LeafSpec\)"),
}
# What a user can act on among Lightning's progress messages: a GPU or TPU there but not used.
UNUSED_DEVICE = re.compile(r"available: True, used: False")
DEBUG = "MNIST_ARCH_DEBUG"
NULL_GROUPS = ("search",)  # the groups whose default is null (conf/config.yaml): `search.x=1` needs search=<name> first


class Parser(argparse.ArgumentParser):
    """argparse, whose errors are one line and exit 2 like every other refusal; options are never guessed
    from a prefix (`--trust` is not `--trust-target`)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, allow_abbrev=False, **kwargs)

    def error(self, message: str):
        raise ConfigError(f"{message} (see {self.prog} --help)")

    def _check_value(self, action: argparse.Action, value) -> None:
        """A value outside an option's choices gets the "did you mean" every other unknown name gets."""
        if action.choices is not None and value not in action.choices:
            choices = [str(choice) for choice in action.choices]
            raise argparse.ArgumentError(action, f"invalid choice: {value!r}; "
                                                 f"{did_you_mean(str(value), choices, listing='choose from')}")


class Console(logging.Filter):
    """The console shows the project's own lines and the warnings a user can act on: Lightning's progress
    chatter (seed set, devices, "fit stopped") and NOT_ACTIONABLE go to run.log only."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if any(pattern.search(message) for pattern in NOT_ACTIONABLE.values()):
            return False
        chatter = record.name.startswith(("pytorch_lightning", "lightning")) and record.levelno < logging.WARNING
        return not chatter or bool(UNUSED_DEVICE.search(message))


class ConsoleFormatter(logging.Formatter):
    """Our lines as they are; a warning says it is one."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return f"warning: {text.strip()}" if record.levelno >= logging.WARNING else text


class JobEnded(BaseException):
    """An exception that ended a Hydra job, carried past Hydra's job runner to the command's one handler: the runner
    catches every Exception to print a line of its own ("Error executing job ...") before raising it again."""

    def __init__(self, error: Exception):
        super().__init__(error)
        self.error = error


def command(main: Callable) -> Callable:
    """Run `main` so that whatever goes wrong ends as one line and its exit code."""

    @functools.wraps(main)
    def wrapped(*args, **kwargs):
        hydra_full_error = os.environ.get("HYDRA_FULL_ERROR")
        debug = os.environ.get(DEBUG) == "1" or hydra_full_error == "1"
        # Hydra then raises its errors (an unknown option, a bad override) to us instead of printing its own
        # multi-line screen and exiting 1.
        os.environ["HYDRA_FULL_ERROR"] = "1"
        logging.captureWarnings(True)  # Python warnings through logging: the console filter sees them too
        try:
            return main(*args, **kwargs)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(INTERRUPTED)
        except JobEnded as ended:  # a Hydra job's own error (hydra_command)
            error = ended.error
        except Exception as e:  # noqa: BLE001 - every error leaves a command here
            error = e
        finally:
            logging.captureWarnings(False)
            if hydra_full_error is None:
                os.environ.pop("HYDRA_FULL_ERROR", None)
            else:
                os.environ["HYDRA_FULL_ERROR"] = hydra_full_error
        if debug:
            raise error
        module = getattr(sys.modules.get(main.__module__), "__spec__", None)  # `python -m` runs __main__
        name = (module.name if module else main.__module__).removesuffix(".__main__")
        code, line = explain(error, name.rpartition(".")[2])
        print(f"error: {printable(line)}", file=sys.stderr)
        sys.exit(code)

    @functools.wraps(main)
    def entry(*args, **kwargs):
        if not _started_as(main):  # called from Python (a test, a notebook): return as usual
            return wrapped(*args, **kwargs)
        try:
            wrapped(*args, **kwargs)
            code = 0
        except SystemExit as e:
            code = e.code
        leave(code)

    return entry


def hydra_command(config_name: str, help: Optional[Callable[[], str]] = None,
                  check: Optional[Callable[[List[str]], None]] = None) -> Callable[[Callable], Callable]:
    """`@hydra_command("config")` on a task function taking the composed config: the Hydra command of the project's
    configs (`@hydra.main` on conf/<config_name>.yaml), whose every error ends as one line (`command`): Hydra's own
    (an unknown option, an override it cannot parse) and the job's, which `JobEnded` carries past Hydra's job
    runner; a key of a group still unchosen on the command line is refused before Hydra composes. `help`: the
    command's own --help text, in place of Hydra's; `check`: the command's own check of the command line's
    override keys, before Hydra composes."""
    def decorate(task: Callable) -> Callable:
        @functools.wraps(task)
        def job(cfg):
            try:
                return task(cfg)
            except Exception as e:  # noqa: BLE001 - every error of the job leaves the command as one line
                raise JobEnded(e) from e

        # Hydra names the job (and its log file, run.log) after the task's module; `python -m` runs it as __main__
        spec = getattr(sys.modules.get(task.__module__), "__spec__", None)
        job.__module__ = spec.name if task.__module__ == "__main__" and spec else task.__module__
        composed = hydra.main(version_base="1.3", config_path="pkg://mnist_arch.conf", config_name=config_name)(job)

        @functools.wraps(task)
        def main():
            if help is not None and {"--help", "-h"} & set(sys.argv[1:]):
                print(help())
                return None
            keys = override_keys(arg for arg in sys.argv[1:] if not arg.startswith("-"))
            check_groups_chosen(keys)
            if check is not None:
                check(keys)
            return composed()

        return command(main)

    return decorate


def override_keys(overrides: Iterable[str]) -> List[str]:
    """The keys (or groups) of command-line overrides, as Hydra's own parser reads them; one it cannot parse is left
    out (Hydra says what is wrong with it, in its turn)."""
    keys: List[str] = []
    for given in overrides:
        try:
            keys += [o.key_or_group for o in OverridesParser.create().parse_overrides([given])]
        except (HydraException, ValueError):
            continue
    return keys


def check_groups_chosen(keys: Sequence[str]) -> None:
    """A key of a group whose default is null (NULL_GROUPS: `search`) set while the group is not chosen is refused
    in one line: OmegaConf would fail on the empty node with an assertion that names no key. `keys`: override_keys."""
    for group in NULL_GROUPS:
        key = next((key for key in keys if key.startswith(f"{group}.")), None)
        if key and group not in keys:
            raise ConfigError(f"{key}: `{group}` is empty until its group is chosen; choose one first ({group}=<name>)")


def _started_as(main: Callable) -> bool:
    """Whether this process was started to run a command: `python -m mnist_arch.<command>` (our module, or a
    package's __main__.py, is then __main__) or its console script (mnist-arch, mnist-arch-<command>: the script is
    __main__). Never a process that calls `main` itself (a test, a notebook), whatever its sys.argv says."""
    started = sys.modules.get("__main__")
    spec, script = getattr(started, "__spec__", None), getattr(started, "__file__", None) or ""
    return main.__module__ == "__main__" or (spec is not None and spec.name.startswith("mnist_arch.")) or \
        Path(script).name.startswith("mnist-arch")


def leave(code) -> NoReturn:
    """End the process of a finished command: what Python does at exit (wait for the threads that are not
    daemons, run the atexit handlers: log files closed, a tracker's run ended, temporary folders removed; flush
    the output), then exit without the interpreter's teardown. That teardown garbage-collects, module by
    module, every object torch, Lightning and their imports made: 1.4-2 s of a 3-epoch run on the 2-core CPU
    (BENCHMARKS.md, issue 47), for nothing a finished process needs."""
    if code is None:
        code = 0
    elif not isinstance(code, int):  # sys.exit("message"), as Python itself treats it
        print(code, file=sys.stderr)
        code = 1
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`... | head`): nothing more to say
            pass
    os._exit(code)


def explain(e: Exception, command: str = "mnist_arch") -> Tuple[int, str]:
    """(exit code, one line) for an exception that ended a command."""
    ours = _ours_within(e)
    if ours is not None:  # our own refusal inside a resolver (${folder_name:...}), which OmegaConf wrapped
        return (USAGE if isinstance(ours, ConfigError) else FAILED), one_line(str(ours))
    if isinstance(e, RunError):
        return (USAGE if isinstance(e, ConfigError) else FAILED), one_line(str(e))
    line = hydra_error(e)
    if line is not None:
        return USAGE, line
    if isinstance(e, OSError) and e.strerror:  # a file that cannot be written or read: the machine's, not a bug
        return FAILED, f"{e.strerror}: {e.filename}" if e.filename else e.strerror
    if from_tracker(e):  # a tracking server failing mid-run (an HTTP 500): the machine's, not a bug
        return FAILED, f"the tracker failed: {redact(one_line(str(e)))[:300] or type(e).__name__}"
    where = _write_traceback(e, command)
    return FAILED, (f"unexpected {type(e).__name__}: {one_line(str(e)) or '(no message)'} (a bug; the full "
                    f"traceback is in {where}, or run again with {DEBUG}=1 to see it)")


def _ours_within(e: Exception) -> Optional[RunError]:
    """Our own error (a RunError) that OmegaConf or Hydra raised another exception around, found by type along
    the chain of exceptions each was raised while handling; None when there is none, or `e` is not theirs."""
    seen = set()
    while isinstance(e, (HydraException, OmegaConfBaseException)) and id(e) not in seen:
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return e if isinstance(e, RunError) else None


def one_line(text: str) -> str:
    return printable(" ".join(line.strip() for line in str(text).splitlines() if line.strip()))


def hydra_error(e: Exception) -> Optional[str]:
    """One line for Hydra's and OmegaConf's errors (an unknown option or key, an override it cannot parse or
    merge); None for any other exception."""
    if isinstance(e, yaml.YAMLError):  # a config file of yours that is not YAML
        return f"a config file is not valid YAML: {one_line(str(e))}"
    if not isinstance(e, (HydraException, OmegaConfBaseException)):
        # Hydra and OmegaConf also fail with plain exceptions on some overrides (`model=0`: a ValueError,
        # "Config group override must be a string or a list"; `~model +model.net.x=1`: an AttributeError):
        # input errors too, told by where they were raised
        frames = traceback.extract_tb(e.__traceback__)
        raised_in = frames[-1].filename if frames else ""
        if re.search(r"[/\\](hydra|omegaconf)[/\\]", raised_in):
            key = re.search(r"full_key: (\S+)", str(e))
            return one_line(str(e).split("\n    full_key:")[0]) + (f" (key {key.group(1)})" if key else "")
        return None
    text, cause = str(e), e.__cause__
    if isinstance(e, MissingConfigException) and e.options is not None and "/" in (e.missing_cfg_file or ""):
        group, _, option = e.missing_cfg_file.rpartition("/")  # group=option with no such option
        options = list(e.options)
        hint = did_you_mean(option, options, f"{group}=", "its options")
        if hint.startswith("did you mean"):
            hint += f" (its options: {', '.join(options)})"
        return f"{group}={option} is not an option of {group}; {hint}"
    if isinstance(cause, (ConfigKeyError, ConfigAttributeError)) and \
            dataclasses.is_dataclass(getattr(cause, "object_type", None)):
        # a key that the schema does not have: say which group's keys are close
        key = cause.full_key or ""
        group, _, name = key.rpartition(".")
        known = [f.name for f in dataclasses.fields(cause.object_type)]
        where = f"the {group} group" if group else "the config"
        return f"{key} is not a key of {where}; {did_you_mean(name, known, f'{group}.' if group else '')}"
    noise = re.compile(r"^(See https://hydra\.cc|full_key:|reference_type=|object_type=)")
    lines = [line.strip().replace("::", ":") for line in text.splitlines() if line.strip() and not noise.match(line.strip())]
    if isinstance(e, OmegaConfBaseException):
        return lines[0] + (f" (key {e.full_key})" if getattr(e, "full_key", None) else "")
    if isinstance(cause, OmegaConfBaseException):
        lines.append(str(cause).splitlines()[0])
    return lines[0].rstrip(".:") + (": " + " ".join(lines[1:]) if len(lines) > 1 else "")


def _write_traceback(e: Exception, command: str) -> str:
    """The full traceback into a file of its own, for the bug report; its path."""
    text = "".join(traceback.format_exception(type(e), e, e.__traceback__))
    try:
        path = crash_folder() / f"{command}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.txt"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        return str(path)
    except OSError:  # nowhere to write it: show it, rather than lose it
        print(text, file=sys.stderr)
        return "the lines above"


def crash_folder() -> Path:
    """<temp dir>/mnist_arch-<uid>, this user's alone (mode 0700, owned by us, not a link): made if missing; one
    that someone else made first, or opened to others, is not used: a fresh private folder is made instead."""
    folder = Path(tempfile.gettempdir()) / f"mnist_arch-{os.getuid() if hasattr(os, 'getuid') else 'user'}"
    try:
        folder.mkdir(mode=0o700)
    except FileExistsError:
        pass
    info = os.lstat(folder)
    if stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() and not info.st_mode & 0o077:
        return folder
    return Path(tempfile.mkdtemp(prefix="mnist_arch-"))