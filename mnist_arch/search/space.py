"""A search space written in config (`space:` in conf/search/<name>.yaml), turned into one trial's overrides
by asking an Optuna trial for each value.

    space:
      optimizer:
        lr: {low: 0.02, high: 0.3, log: true}           # a number (an int when low and high are ints)
      data:
        batch_size: {choices: [64, 128, 256]}           # one of these
        translate: 0.05                                 # a plain value: every trial gets it
      convnet:                                          # the convnet family, stage by stage (model=convnet)
        stages: 3                                       # how many stages (a 2x2 max-pool between two)
        convs: {low: 1, high: 3}                        # 3x3 convs in each stage
        width: {choices: [4, 6, 8, 12, 16]}             # each stage's width (the convs of a stage share it)
        padding: {choices: [same, valid]}               # each stage's padding (valid: its maps shrink by 2)
        transition: {choices: [0, 4, 8]}                # a 1x1 conv closing each stage; 0: none
        conv: {choices: [full, separable]}              # each stage's 3x3 convs: full or depthwise-separable
        head: {choices: [gap_conv, conv_gap]}

Any other key is a run override, nested as the config is (`optimizer: {lr: ...}` is optimizer.lr, so the
command line reaches it: search.space.optimizer.lr.high=0.5), and its spec one distribution. In `convnet`
each of convs / width / padding / transition / conv is asked once per stage (Optuna parameters convs_1, width_1,
...), so the sampler learns each stage's shape; `stages` and `head` may be a plain value or a distribution
too. A shape that cannot work (maps shrinking below 1x1) is refused by the net and recorded infeasible.
"""
from typing import Any, Dict, List

from mnist_arch.errors import ConfigError

CONVNET = "convnet"
CONVNET_KEYS = ("stages", "convs", "width", "padding", "transition", "conv", "head")


def specs(space: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    """The space's run keys, flattened: {"optimizer.lr": {low, high, log}, "convnet": {...}, ...}."""
    found = {}
    for key, spec in space.items():
        name = f"{prefix}{key}"
        if name == CONVNET or not isinstance(spec, dict) or "choices" in spec or "low" in spec or "high" in spec:
            found[name] = spec
        else:
            found.update(specs(spec, f"{name}."))
    return found


def check(space: Dict[str, Any]) -> None:
    """ConfigError, naming the key, for a spec that is not a distribution or a plain value."""
    if not space:
        raise ConfigError("search.space is empty: name at least one key to vary")
    for key, spec in specs(space).items():
        if key == CONVNET:
            if not isinstance(spec, dict) or set(spec) - set(CONVNET_KEYS):
                raise ConfigError(f"search.space.convnet takes: {', '.join(CONVNET_KEYS)}")
            for part in ("stages", "convs", "width"):
                if part not in spec:
                    raise ConfigError(f"search.space.convnet.{part} is missing")
            for part, value in spec.items():
                _check_spec(f"search.space.convnet.{part}", value)
        else:
            _check_spec(f"search.space.{key}", spec)


def _check_spec(name: str, spec: Any) -> None:
    if not isinstance(spec, dict):
        if isinstance(spec, (list, tuple)):
            raise ConfigError(f"{name}: a list is ambiguous here; write {{choices: [...]}} to pick one of them")
        return  # a plain value
    if set(spec) == {"choices"}:
        if not spec["choices"] or not all(isinstance(c, (str, int, float, bool, type(None))) for c in spec["choices"]):
            raise ConfigError(f"{name}.choices must be a non-empty list of plain values (numbers, strings)")
        return
    if not {"low", "high"} <= set(spec) <= {"low", "high", "log", "step"}:
        raise ConfigError(f"{name}: a distribution is {{choices: [...]}} or {{low, high[, log][, step]}}, not "
                          f"{sorted(spec)}")
    low, high = spec["low"], spec["high"]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)) or not low <= high:
        raise ConfigError(f"{name}: low={low} and high={high} must be numbers with low <= high")
    if spec.get("log") and low <= 0:
        raise ConfigError(f"{name}: log=true needs low > 0")


def ask(trial, name: str, spec: Any) -> Any:
    """One value of `spec` from an Optuna trial (a plain value is returned as it is)."""
    if not isinstance(spec, dict):
        return spec
    if "choices" in spec:
        return trial.suggest_categorical(name, list(spec["choices"]))
    low, high, log, step = spec["low"], spec["high"], bool(spec.get("log", False)), spec.get("step")
    if isinstance(low, int) and isinstance(high, int) and (step is None or isinstance(step, int)):
        return trial.suggest_int(name, low, high, step=step or 1, log=log)
    return trial.suggest_float(name, float(low), float(high), step=step, log=log)


def sample(trial, space: Dict[str, Any]) -> List[str]:
    """The overrides of one trial: every key of the space asked of `trial`."""
    overrides = []
    for key, spec in specs(space).items():
        if key == CONVNET:
            overrides += _convnet(trial, spec)
        else:
            overrides.append(f"{key}={_literal(ask(trial, key, spec))}")
    return overrides


def _convnet(trial, spec: Dict[str, Any]) -> List[str]:
    stages = ask(trial, "stages", spec["stages"])
    widths, paddings, closing, kinds = [], [], [], []
    for i in range(1, stages + 1):
        widths.append([ask(trial, f"width_{i}", spec["width"])] * ask(trial, f"convs_{i}", spec["convs"]))
        paddings.append(ask(trial, f"padding_{i}", spec.get("padding", "same")))
        kinds.append(ask(trial, f"conv_{i}", spec.get("conv", "full")))
        transition = ask(trial, f"transition_{i}", spec["transition"]) if "transition" in spec else 0
        closing.append([transition] if transition else [])
    overrides = ["model=convnet", f"model.net.stages={_literal(widths)}", f"model.net.padding={_literal(paddings)}",
                 f"model.net.transitions={_literal(closing) if any(closing) else 'null'}",
                 f"model.net.conv={_literal(kinds) if 'separable' in kinds else 'full'}"]
    if "head" in spec:
        overrides.append(f"model.net.head={ask(trial, 'head', spec['head'])}")
    return overrides


def _literal(value: Any) -> str:
    """A value as Hydra's override grammar reads it back."""
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_literal(v) for v in value) + "]"
    if isinstance(value, str):
        return value if value.replace("_", "").replace("-", "").replace(".", "").isalnum() else repr(value)
    return repr(value)
