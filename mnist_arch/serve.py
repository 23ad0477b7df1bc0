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
picture is a message on the page.
"""
import ipaddress
import json
import sys
import tempfile
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any, Dict, List, Optional
from urllib.parse import unquote

from mnist_arch.cli import Parser, command
from mnist_arch.errors import BadFile

MAX_UPLOAD_BYTES = 32 << 20  # a picture sent by the page (a phone photo fits)
PAGE = "serve.html"  # mnist_arch/web/


@dataclass
class Net:
    label: str  # what the page calls it: the model and where it came from
    trained: Any  # mnist_arch.trained.Trained
    convs: List[Any]  # the layer table's rows of its conv layers (mnist_arch.layer_table.Layer)
    lock: threading.Lock


def load_nets(paths: List[str], trust: List[str]) -> List[Net]:
    """Each run dir or checkpoint's net, with its conv layers' rows of the layer table; BadFile (one line)
    for one that cannot be used."""
    from torch import nn

    from mnist_arch import trained as trained_nets
    from mnist_arch.layer_table import layer_table

    nets = []
    for path in paths:
        trained = trained_nets.load(path, trust)
        convs = [row for row in layer_table(trained.net) if row.kind in ("Conv2d", "Conv1d", "Conv3d")
                 and isinstance(trained.net.get_submodule(row.name), nn.modules.conv._ConvNd)]
        where = trained.run_dir.name if trained.run_dir else trained.path.name  # short: columns sit side by side
        nets.append(Net(f"{trained.name} · {where}", trained, convs, threading.Lock()))
    return nets


def describe(nets: List[Net]) -> List[Dict[str, Any]]:
    """What the page lays out before anything is drawn: each net and its conv layers' table rows."""
    from mnist_arch.rules import count_params

    return [{"label": net.label, "model": net.trained.name, "params": count_params(net.trained.net),
             "convs": [{"name": r.name, "kind": r.kind, "geometry": r.geometry, "shape": list(r.shape),
                        "params": r.params, "rf": r.rf} for r in net.convs]} for net in nets]


def answer(nets: List[Net], picture: bytes, name: str = "the picture") -> Dict[str, Any]:
    """The page's answer for one picture: the input as the nets see it, and per net the ten probabilities
    and each conv layer's maps (0-255 per channel). {"error": ...} when it is not one readable digit."""
    import torch

    from mnist_arch.data.digits import read

    with tempfile.TemporaryDirectory() as folder:  # read() takes a file: predict's own path, limits included
        path = Path(folder) / "picture"
        path.write_bytes(picture)
        try:
            digits = read(path)
        except BadFile as e:
            return {"error": f"{name}: {str(e).removeprefix(str(path) + ': ')}"}
    if len(digits) != 1:
        return {"error": f"{name} holds {len(digits)} digits; the page reads one (predict reads them all)"}
    image = digits[0][1]
    results = []
    for net in nets:
        maps: Dict[str, torch.Tensor] = {}

        def keep(name: str):
            def hook(module, inputs, output) -> None:  # returns None: the output goes on unchanged
                maps.setdefault(name, output[0].detach())  # a layer called twice: its first call
            return hook

        hooks = [net.trained.net.get_submodule(row.name).register_forward_hook(keep(row.name)) for row in net.convs]
        try:
            with net.lock:
                probabilities = net.trained.probabilities(image[None, None])[0]
        finally:
            for hook in hooks:
                hook.remove()
        results.append({"probabilities": [round(float(p), 6) for p in probabilities],
                        "digit": int(probabilities.argmax()),
                        "maps": [_bytes(maps[row.name]) for row in net.convs if row.name in maps]})
    return {"input": (image * 255).round().to(torch.uint8).tolist(), "nets": results}


def _bytes(output) -> List[List[List[int]]]:
    """A conv layer's (C, H, W) output as C grey images over 0-255: each channel stretched on its own range
    (its pattern), or, for 1x1 maps, all on the layer's range (which channels are on)."""
    dims = (1, 2) if output.shape[1] * output.shape[2] > 1 else (0, 1, 2)
    low = output.amin(dim=dims, keepdim=True)
    high = output.amax(dim=dims, keepdim=True)
    return ((output - low) / (high - low).clamp(min=1e-12) * 255).round().byte().tolist()


class Handler(BaseHTTPRequestHandler):
    """GET / (the page), GET /api/nets, POST /api/predict (the picture's bytes). Nothing else is served."""

    nets: List[Net] = []
    hosts: Optional[set] = None  # the Host headers accepted on a loopback server (DNS rebinding)

    def do_GET(self):
        if not self._host_ok():
            return
        if self.path == "/":
            page = resources.files("mnist_arch").joinpath("web", PAGE).read_bytes()
            return self._send(200, page, "text/html; charset=utf-8")
        if self.path == "/api/nets":
            return self._json(200, {"nets": describe(self.nets)})
        self._json(404, {"error": f"no such page: {self.path}"})

    def do_POST(self):
        if not self._host_ok():
            return
        if self.path != "/api/predict":
            return self._json(404, {"error": f"no such page: {self.path}"})
        size = int(self.headers.get("Content-Length") or 0)
        if not 0 < size <= MAX_UPLOAD_BYTES:
            return self._json(413, {"error": f"a picture of 1 byte to {MAX_UPLOAD_BYTES >> 20} MiB, please "
                                             f"(this one: {size:,} bytes)"})
        name = unquote(self.headers.get("X-File-Name") or "the drawing")  # the page encodes it (headers are ASCII)
        try:
            result = answer(self.nets, self.rfile.read(size), name[:100])
        except Exception as e:  # noqa: BLE001 - the page shows it; the server keeps serving
            result = {"error": f"{name[:100]}: could not be read ({type(e).__name__}: {str(e).splitlines()[0]})"}
        self._json(200, result)

    def _host_ok(self) -> bool:
        if self.hosts is None or self.headers.get("Host") in self.hosts:
            return True
        self._json(403, {"error": "this server answers its own address only"})
        return False

    def _json(self, status: int, body: Dict[str, Any]) -> None:
        self._send(status, json.dumps(body).encode(), "application/json")

    def _send(self, status: int, body: bytes, kind: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):  # noqa: A002 - the console is for the address and errors
        pass


def make_server(nets: List[Net], host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    """The page's server, not yet serving; port 0 takes a free one (server.server_address says which)."""
    handler = type("NetHandler", (Handler,), {"nets": nets})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    if _loopback(host):
        port = server.server_address[1]
        handler.hosts = {f"{name}:{port}" for name in ("127.0.0.1", "localhost", "[::1]")}
    return server


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


@command
def main(argv: Optional[List[str]] = None) -> None:
    from mnist_arch import trained as trained_nets

    parser = Parser(prog="python -m mnist_arch.serve", description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run dirs (their tested checkpoint) or .ckpt files: one column each")
    parser.add_argument("--host", default="127.0.0.1",
                        help="the address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=0, help="the port (default: a free one)")
    trained_nets.add_trust_option(parser)
    args = parser.parse_args(argv)
    nets = load_nets(args.runs, args.trust_target)  # a bad run dir or checkpoint: one line, before serving
    server = make_server(nets, args.host, args.port)
    host, port = server.server_address[:2]
    reach = "this machine only" if _loopback(args.host) else f"open to the network on {host}: anyone who can reach it"
    print(f"serving {len(nets)} net(s) at http://{'127.0.0.1' if host == '0.0.0.0' else host}:{port}/ "
          f"({reach}); Ctrl-C stops it", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
