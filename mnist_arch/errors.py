"""The errors a run reports to the user as one line (no traceback). Each carries the `status` that
summary.json records, so the entry point and a sweep's leaderboard need only catch this one base."""


class RunError(Exception):
    """A run refused or stopped for a reason the user can act on; `status` goes into summary.json."""

    status = "failed"


class ConfigError(RunError, ValueError):
    """A config value that cannot work; the message names the key and what it accepts."""

    status = "bad_config"


class BudgetError(RunError, RuntimeError):
    """The net breaks a rule of the game: over_budget, fc_not_allowed or bad_output."""

    def __init__(self, status: str, message: str):
        super().__init__(message)
        self.status = status


class DataError(RunError, RuntimeError):
    """The data cannot be had or does not verify; the message says what to do."""

    status = "data_error"


class NonFiniteLoss(RunError, RuntimeError):
    """The training loss became NaN or infinite: the run stops at once."""

    status = "non_finite_loss"

