"""`python -m mnist_arch.layers`: the layer table of a net (mnist_arch/results/layer_table.py), and the budget checks.

    python -m mnist_arch.layers model=s6
    python -m mnist_arch.layers experiment=s4_reference budget.max_params=15000
    python -m mnist_arch.layers model=custom model.net._target_=my_nets.Tiny model.net.width=8

Takes the same overrides as `mnist_arch.run`, trains nothing, writes nothing; exits 1 when the net breaks
a rule of the budget (too many parameters or MACs, an FC layer, the wrong output), so it can guard a
script. (`python -m mnist_arch.summary`, the command's old name, runs the same.)
"""
import dataclasses
import sys
from typing import List, Optional

from mnist_arch.cli import Parser, command


@command
def main(argv: Optional[List[str]] = None) -> None:
    # Deferred: the config and the nets import torch (1.2 s), which `--help` and a bad argument need not pay
    from mnist_arch.config.compose import load
    from mnist_arch.models import build_net
    from mnist_arch.results.layer_table import describe

    parser = Parser(prog="python -m mnist_arch.layers", description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="the run's overrides, e.g. model=s6 model.net.dropout=0.1")
    conf = load(parser.parse_args(sys.argv[1:] if argv is None else argv).overrides)
    net = build_net(dataclasses.asdict(conf.model))
    table, _, verdict = describe(net, conf.budget)
    print(f"{conf.model.name}\n{table}")
    if verdict.failure():
        sys.exit(1)


if __name__ == "__main__":
    main()
