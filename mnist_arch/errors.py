"""The errors a command reports to the user as one line (no traceback). Each carries the `status` that
summary.json records, so the entry points (mnist_arch/cli.py) and a sweep's leaderboard need only catch
this one base. A ConfigError is the user's input refused (exit 2); any other RunError is a run that failed
(exit 1)."""
import difflib
import re
import unicodedata
from typing import Iterable


class RunError(Exception):
    """A run refused or stopped for a reason the user can act on; `status` goes into summary.json."""

    status = "failed"


class ConfigError(RunError, ValueError):
    """Input that cannot work: a config value, a command-line argument, a file; the message names it."""

    status = "bad_config"


class BadFile(ConfigError):
    """A file handed to a command is not what it must be (missing, truncated, corrupt, too large, of the
    wrong kind, or asking to run code); the message starts with the file's path."""


class BudgetError(RunError, RuntimeError):
    """The net breaks a rule of the game: over_budget, fc_not_allowed or bad_output."""

    def __init__(self, status: str, message: str):
        super().__init__(message)
        self.status = status


class DataError(RunError, RuntimeError):
    """The data cannot be had or does not verify; the message says what to do."""

    status = "data_error"


class Pruned(RunError):
    """A search's pruner stopped the trial's run early (mnist_arch/commands/search.py); the message says when."""

    status = "pruned"


class NonFiniteLoss(RunError, RuntimeError):
    """The training loss became NaN or infinite: the run stops at once."""

    status = "non_finite_loss"


def did_you_mean(name: str, known: Iterable[str], prefix: str = "", listing: str = "it takes") -> str:
    """'did you mean <prefix><closest>?' or, with nothing close, '<listing>: a, b, c': the one hint every
    "not a key / not an argument / not an option" message ends with."""
    known = list(known)
    close = difflib.get_close_matches(name, known, n=1)
    if not close and len(name) <= 4:  # a short name one letter off (s5 for s4, s6) is under difflib's cutoff
        close = [option for option in known if _one_edit(name, option)]
    if close:
        return f"did you mean {' or '.join(prefix + c for c in close)}?"
    return f"{listing}: {', '.join(known)}"


def _one_edit(a: str, b: str) -> bool:
    """Whether `b` is `a` with one letter changed, added or left out."""
    if abs(len(a) - len(b)) > 1 or a == b:
        return False
    if len(a) == len(b):
        return sum(x != y for x, y in zip(a, b)) == 1
    short, long = sorted((a, b), key=len)
    return any(long[:i] + long[i + 1:] == short for i in range(len(long)))


def printable(text: str) -> str:
    """`text` with control and format characters (an ANSI escape, a carriage return, a bidi override) shown as
    escapes: a record or a file from elsewhere may hold them, and a terminal would obey them."""
    return "".join(c if c == "\n" or not unicodedata.category(c).startswith("C") else
                   ascii(c)[1:-1] for c in str(text))


PASSWORD_IN_URL = re.compile(r"(?P<head>[A-Za-z][\w+.-]*://[^/\s:@]*:)[^/\s@]*@")


def redact(text: str) -> str:
    """`text` with the password of any URL in it masked: scheme://user:***@host."""
    return PASSWORD_IN_URL.sub(lambda m: m.group("head") + "***@", text)


def from_tracker(e: BaseException) -> bool:
    """An exception raised by MLflow's or W&B's client (a server's refusal, an HTTP error), not by our code."""
    return type(e).__module__.split(".")[0] in ("mlflow", "wandb", "requests", "urllib3")
