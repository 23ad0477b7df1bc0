"""Try a trained net in the browser: draw a digit, see its answer and what each conv layer sees.

    python -m mnist_arch.serve outputs/2026-11-27/10-00-00_s4            # then open the address it prints
    python -m mnist_arch.serve run_a/ run_b/checkpoints/last.ckpt --port 8008   # two nets, side by side

Where the net runs, and why: here, in this process, with PyTorch. The page sends the picture (the canvas
as a PNG, or a file dropped on it); the server prepares it with predict's own code (mnist_arch/data/
digits.py), runs the checkpoint's net as predict does, and returns the prepared input, the ten
probabilities and every conv layer's feature maps from that one forward pass. So the page shows exactly
what `predict` answers for the same picture, for any net a run trained (an ONNX export in the page would
need that preparation written again in JavaScript, and not every net exports). The page is one file with
no outside resources: it works offline.

The server listens on 127.0.0.1 (this machine only) unless --host says otherwise, and then says so. A
run dir or checkpoint that cannot be used is one line before it starts; a dropped file that is not a
picture is a message on the page. How it holds against strangers: mnist_arch/inference/server.py.
"""
import argparse
import logging
import sys
from typing import List, Optional

from mnist_arch.cli import Parser, command
from mnist_arch.inference import trained as trained_nets
from mnist_arch.inference.server import PageServer, is_loopback, load_nets


@command
def main(argv: Optional[List[str]] = None) -> None:
    parser = Parser(prog="python -m mnist_arch.serve", description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run dirs (their tested checkpoint) or .ckpt files: one column each")
    parser.add_argument("--host", default="127.0.0.1",
                        help="the address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=port_number, default=0, help="the port, 0-65535 (default 0: a free one)")
    trained_nets.add_trust_option(parser)
    args = parser.parse_args(argv)
    nets = load_nets(args.runs, trained_nets.trust_of(args))  # a bad run dir or checkpoint: one line, before serving
    server = PageServer(nets, args.host, args.port)  # an address it cannot listen on: one line
    host, port = server.address[:2]
    reach = "this machine only" if is_loopback(args.host) else f"open to the network on {host}: anyone who can reach it"
    print(f"serving {len(nets)} net(s) at http://{'127.0.0.1' if host == '0.0.0.0' else host}:{port}/ "
          f"({reach}); Ctrl-C stops it", flush=True)
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)  # "task queue depth": what MAX_WAITING is for
    server.serve_forever()  # waitress returns on Ctrl-C
    print("stopped", file=sys.stderr)


def port_number(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port: a number from 0 to 65535 (0: a free one)")
    return int(text)


if __name__ == "__main__":
    main()
