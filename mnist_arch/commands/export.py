"""Ship a trained net: a torch.export program, ONNX or TorchScript, checked against the PyTorch net.

    python -m mnist_arch.export outputs/2026-11-23/10-00-00_s4 --format pt2     # torch.export (the portable format)
    python -m mnist_arch.export outputs/2026-11-23/10-00-00_s4 --format onnx
    python -m mnist_arch.export outputs/.../checkpoints/last.ckpt --format torchscript --out s4.pt

The exported file takes (N, 1, 28, 28) float images normalised as in training ((pixel/255 - 0.1307) /
0.3081; N is free) and returns (N, 10) logits. After writing, it runs the file (onnxruntime for ONNX: pip
install 'mnist-arch[export]'; torch.jit.load for TorchScript; for .pt2 the same reader predict and evaluate
use, trusting exactly the bytes it wrote) on a batch of real-looking inputs, prints the largest absolute
difference from the PyTorch net and the file's sha256, and exits 1 if it exceeds the tolerance. A .pt2 is a
program: evaluate, predict and serve run one only with --trust-program <its path or that sha256>.
TorchScript is deprecated by torch in favour of torch.export; it is kept for runtimes that still load it.
"""
import sys
from pathlib import Path
from typing import List, Optional

import torch

from mnist_arch.cli import Parser, command
from mnist_arch.errors import RunError
from mnist_arch.files import replacing
from mnist_arch.inference import trained as trained_nets
from mnist_arch.inference.formats import CHECK_BATCH, FORMATS, TOLERANCE, TRUST_OPTION, sha256, why_not_exported


@command
def main(argv: Optional[List[str]] = None) -> None:
    parser = Parser(prog="python -m mnist_arch.export", description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a run dir (its tested checkpoint) or a .ckpt file")
    parser.add_argument("--format", choices=list(FORMATS), required=True)
    parser.add_argument("--out", type=Path, default=None, help="the file to write (default: <run dir>/<model>.pt2|.onnx|.pt)")
    trained_nets.add_trust_option(parser)
    args = parser.parse_args(argv)
    suffix, export, run = FORMATS[args.format]
    trained = trained_nets.trained_net(args.run, trained_nets.trust_of(args))
    out = args.out or trained.out_dir / f"{trained.name}{suffix}"
    torch.manual_seed(0)
    check = torch.randn(CHECK_BATCH, 1, 28, 28)  # normalised inputs span about the same range
    try:
        with replacing(out) as tmp:  # a link planted at the output's name is replaced, not written through
            export(trained.net, check[:2], tmp)
            digest = sha256(tmp.read_bytes())  # what this command wrote: the check below trusts these bytes alone
    except OSError:
        raise
    except Exception as e:  # noqa: BLE001 - an op the exporter cannot express: say which, in one line
        raise RunError(f"{trained.name} cannot be exported to {args.format}: {why_not_exported(e)}") from e
    with torch.no_grad():
        diff = (run(out, check, digest) - trained.net(check)).abs().max().item()
    ok = diff <= TOLERANCE
    print(f"{out}: {args.format}, max |exported - pytorch| = {diff:.2e} on {CHECK_BATCH} inputs "
          f"({'within' if ok else 'OVER'} {TOLERANCE:g}); sha256 {digest}")
    if args.format == "pt2":  # a program: the commands that read one run it only when told to (docs/trust.md)
        print(f"evaluate, predict and serve run it with: {TRUST_OPTION} {digest}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
