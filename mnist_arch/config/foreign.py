"""Overrides that come from a file or a storage rather than from the user's command line: a race's candidates
file, a study's trials read back from its database (a shared PostgreSQL, a study.db someone sent). They are
values, not config: each may set what a design is (an experiment, the model and its net, the recipe, the
data's augmentation and batch, the budget's epochs), and nothing that reaches code, files or the machine.

Refused, one line naming the source and the override: a key under `hydra`, `logger`, `search`, `ckpt_path`,
`data.root` or `save`, or holding `_target_` (each names code to import, or a place to write), but for
`model.net._target_` naming a class the user trusts as for a checkpoint (MNIST_ARCH_TRUST_TARGETS=pkg.Net);
a key added (`+`), forced (`++`) or deleted (`~`); a sweep (`choice(...)`); a value holding an interpolation
(`${oc.env:...}` reads the environment) or a mapping with a `_target_`. What is left is composed and
validated by the schema like any override (types, ranges, names), before any run.
"""
from typing import Any, Iterable, List

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException

from mnist_arch.errors import ConfigError
from mnist_arch.models.build import TRUST_ENV, names_code, trusted_targets

NOT_FROM_FILES = ("hydra", "logger", "search", "ckpt_path", "data.root", "save")
MAX_OVERRIDE_CHARS = 2000  # a design's longest override (a convnet's stages) is ~60 characters


def check_foreign(overrides: Iterable[Any], source: str) -> List[str]:
    """`overrides` (from `source`, e.g. "race.yaml, design trial2") as a list of strings that set values
    only; ConfigError, one line, for the first that would do more."""
    parser = OverridesParser.create()
    checked = []
    for given in overrides:
        if not isinstance(given, str) or len(given) > MAX_OVERRIDE_CHARS:
            raise ConfigError(f"{source}: {str(given)[:60]!r} is not an override (key=value, at most "
                              f"{MAX_OVERRIDE_CHARS} characters)")
        try:
            (override,) = parser.parse_overrides([given])
        except (HydraException, ValueError) as e:
            raise ConfigError(f"{source}: {given[:60]!r} is not an override ({str(e).splitlines()[0][:120]})") from None
        key = override.key_or_group
        refused = None
        if override.is_add() or override.is_force_add() or override.is_delete():
            refused = "adds or deletes a key (+, ++, ~)"
        elif override.is_sweep_override():
            refused = "is a sweep"
        elif key == "model.net._target_" and override.value() in trusted_targets():
            pass  # a custom net the user named, as a checkpoint's may be
        elif key == "model.net._target_":
            refused = (f"names a class to import; trust it by name first ({TRUST_ENV}={str(override.value())[:60]}, "
                       "as for a checkpoint)")
        elif "_target_" in key or any(key == top or key.startswith(f"{top}.") for top in NOT_FROM_FILES):
            refused = f"sets {key}, which names code or a place to write"
        elif _holds_code(override.value()):
            refused = "holds an interpolation (${...}) or a _target_, which a value from a file may not"
        if refused:
            raise ConfigError(f"{source}: {given[:80]!r} {refused}; an override from a file or a study's storage "
                              "sets values only (docs/trust.md)")
        checked.append(given)
    return checked


def _holds_code(value: Any) -> bool:
    """A `_target_` anywhere in it, or an interpolation in any of its strings (keys included)."""
    return names_code(value) or "${" in repr(value)
