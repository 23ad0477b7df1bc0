"""`python -m mnist_arch.data`: fetch and verify MNIST; the last stdout line is the raw folder's path."""
import logging
import sys

from mnist_arch.cli import Parser, command
from mnist_arch.config.compose import load
from mnist_arch.data.fetch import default_root, ensure_mnist


@command
def main(argv=None) -> int:
    parser = Parser(prog="python -m mnist_arch.data", description=__doc__)
    parser.add_argument("--root", default=None, help=f"data root (default: {default_root()})")
    parser.add_argument("--offline", action="store_true", help="only use files already in the raw folder")
    parser.add_argument("--timeout", type=float, default=None,
                        help="network time-out per request, seconds (default: data.fetch_timeout_s)")
    args = parser.parse_args(argv)
    if args.timeout is None:  # the one default, in conf/data/mnist.yaml

        args.timeout = load([]).data.fetch_timeout_s
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    raw = ensure_mnist(args.root, download=not args.offline, timeout=args.timeout)  # DataError: exit 1
    print("all four MNIST files verified (MD5)", file=sys.stderr)
    print(raw)
    return 0


if __name__ == "__main__":
    sys.exit(main())
