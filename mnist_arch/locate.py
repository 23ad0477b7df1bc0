"""Config keys that name Python objects (`_target_: torch.optim.SGD`): find the object, and refuse an
argument it does not take, in one line that names the closest one it does. A typo such as
`optimizer.momentm=0.9` must stop the run, not train without momentum."""
import importlib
import inspect
from typing import Any, Callable, Dict, Iterable, Optional, Tuple, Union

from mnist_arch.errors import ConfigError, did_you_mean


def locate(path: str, key: str, base: Optional[Union[type, Tuple[type, ...]]] = None) -> Callable[..., Any]:
    """`package.module.Name` -> the object; `key` is the config key that named it, for the message. With
    `base`, the object must be a subclass of it (a function or another class is refused before any call)."""
    module, _, attr = str(path).rpartition(".")
    try:
        found = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError) as e:
        raise ConfigError(f"{key}={path} could not be built: {type(e).__name__}: {e}") from e
    if base is not None and not (inspect.isclass(found) and issubclass(found, base)):
        kind = "a class" if inspect.isclass(found) else ("a function" if callable(found) else type(found).__name__)
        names = " or ".join(b.__name__ for b in (base if isinstance(base, tuple) else (base,)))
        raise ConfigError(f"{key}={path} is {kind}, not a subclass of {names}")
    return found


def arguments(fn: Callable[..., Any]) -> Iterable[str]:
    """The keyword arguments `fn` takes; None when it takes any (**kwargs)."""
    params = inspect.signature(fn).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def check_arguments(prefix: str, fn: Callable[..., Any], given: Iterable[str], owner: str,
                    supplied: Iterable[str] = ()) -> None:
    """`supplied`: the arguments the run passes itself (an optimizer's params), not a config's to give."""
    known = arguments(fn)
    if known is None:
        return
    known = [name for name in known if name not in supplied]
    for key in given:
        if key not in known:
            raise ConfigError(f"{prefix}{key} is not an argument of {owner}; {did_you_mean(key, known, prefix)}")


SIMPLE = {int: (int,), float: (int, float), bool: (bool,), str: (str,)}  # what a plain annotation admits


def check_values(prefix: str, fn: Callable[..., Any], given: Dict[str, Any]) -> None:
    """Each given value of a parameter annotated int, float, bool or str is one (an int is a float too);
    others are left to `fn`. `model.net.dropout=abc` is refused here, in one line, not inside nn.Dropout."""
    params = inspect.signature(fn).parameters
    for key, value in given.items():
        kinds = SIMPLE.get(params[key].annotation) if key in params else None
        if kinds and (not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds)):
            raise ConfigError(f"{prefix}{key}={value!r}: {fn.__name__} takes a {params[key].annotation.__name__} "
                              f"here, not a {type(value).__name__}")
