"""Try a trained net in the browser: draw a digit, see its answer and what each conv layer sees.

The command is mnist_arch/commands/serve.py (python -m mnist_arch.serve); this is what it calls.

It faces strangers (any page the browser opens can send it requests), so it is served by waitress, a
production WSGI server, and holds: a listen queue for bursts, a timeout for idle and stalled clients, 400
for a malformed request, 413 for a body over MAX_UPLOAD_BYTES; predictions run WORKERS at a time, up to
MAX_WAITING more wait their turn, and past that a request gets 503; a POST from a page of another origin
gets 403, and so does a request to a loopback server that names another host (DNS rebinding). The numbers
it was measured to hold are in docs/trust.md.
"""
import errno
import ipaddress
import json
import os
import socket
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import unquote

import torch
import waitress
from torch import nn
from waitress import wasyncore

from mnist_arch.data.digits import read
from mnist_arch.errors import BadFile, ConfigError
from mnist_arch.files import MAX_PICTURE_BYTES
from mnist_arch.inference import trained as trained_nets
from mnist_arch.results.layer_table import layer_table
from mnist_arch.rules import count_params

MAX_UPLOAD_BYTES = MAX_PICTURE_BYTES  # a picture sent by the page (a phone photo fits); waitress answers 413 past it
PAGE = "serve.html"  # mnist_arch/web/
WORKERS = 2  # predictions at once: each holds one picture's preparation (about 100 MB for a 12 MP photo)
MAX_WAITING = 64  # predictions that wait for a worker; the next one gets 503 (a burst of 50 is all answered)
TIMEOUT_S = 10  # a client silent this long (idle, or a request it never finishes) is disconnected
STOP_WAIT_S = 30  # shutdown(): how long waitress waits for its workers before it warns (and we wait again)
CONNECTION_LIMIT = 2048  # open connections; past it new ones wait in the listen queue
WAITRESS = dict(
    threads=WORKERS + MAX_WAITING + 4,  # a waiting prediction holds a thread; a few more for the page and /api/nets
    backlog=1024,  # the listen queue: a burst of connections waits there instead of being reset
    connection_limit=CONNECTION_LIMIT,
    asyncore_use_poll=True,  # poll(), not select(): select fails past 1,024 open sockets
    channel_timeout=TIMEOUT_S,
    cleanup_interval=2,  # how often silent clients are looked for
    max_request_body_size=MAX_UPLOAD_BYTES,
    max_request_header_size=16 << 10,  # the page's requests carry a few hundred bytes of headers
    ident="mnist_arch",  # the Server header
    clear_untrusted_proxy_headers=True,
)


@dataclass
class Net:
    label: str  # what the page calls it: the model and where it came from
    trained: Any  # mnist_arch.inference.trained.Trained
    convs: List[Any]  # the layer table's rows of its conv layers (mnist_arch.results.layer_table.Layer)
    lock: threading.Lock


def load_nets(paths: List[str], trust) -> List[Net]:
    """Each run dir or checkpoint's net, with its conv layers' rows of the layer table; BadFile (one line)
    for one that cannot be used. `trust`: mnist_arch.inference.trained.Trust."""
    nets = []
    for path in paths:
        trained = trained_nets.trained_net(path, trust)
        convs = [row for row in layer_table(trained.net) if row.kind in ("Conv2d", "Conv1d", "Conv3d")
                 and isinstance(trained.net.get_submodule(row.name), nn.modules.conv._ConvNd)]
        where = trained.run_dir.name if trained.run_dir else trained.path.name  # short: columns sit side by side
        nets.append(Net(f"{trained.name} · {where}", trained, convs, threading.Lock()))
    return nets


def describe(nets: List[Net]) -> List[Dict[str, Any]]:
    """What the page lays out before anything is drawn: each net and its conv layers' table rows."""
    return [{"label": net.label, "model": net.trained.name, "params": count_params(net.trained.net),
             "convs": [{"name": r.name, "kind": r.kind, "geometry": r.geometry, "shape": list(r.shape),
                        "params": r.params, "rf": r.rf} for r in net.convs]} for net in nets]


def answer(nets: List[Net], picture: bytes, name: str = "the picture") -> Dict[str, Any]:
    """The page's answer for one picture: the input as the nets see it, and per net the ten probabilities
    and each conv layer's maps (0-255 per channel). {"error": ...} when it is not one readable digit."""
    with tempfile.TemporaryDirectory() as folder:  # read() takes a file: predict's own path, limits included
        path = Path(folder) / "picture"
        path.write_bytes(picture)
        try:
            digits = read(path, max_digits=1)  # a stack of digits is refused from its header, before any work
        except BadFile as e:
            return {"error": f"{name}: {str(e).removeprefix(str(path) + ': ')}"}
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


class App:
    """The WSGI app: GET / (the page), GET /api/nets, POST /api/predict (the picture's bytes)."""

    def __init__(self, nets: List[Net]):
        self.nets = nets
        self.page = read_page()
        self.hosts: Optional[set] = None  # the Host headers a loopback server accepts (DNS rebinding)
        self.workers = threading.BoundedSemaphore(WORKERS)
        self.lock = threading.Lock()
        self.pending = 0  # predictions running or waiting for a worker

    def __call__(self, environ, start_response):
        status, body, kind = self.respond(environ)
        start_response(status, [("Content-Type", kind), ("Content-Length", str(len(body))),
                                 ("Cache-Control", "no-store")] + ([("Retry-After", "1")] if status[:3] == "503" else []))
        return [body]

    def respond(self, environ) -> Tuple[str, bytes, str]:
        host, method, path = environ.get("HTTP_HOST", ""), environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")
        if self.hosts is not None and host not in self.hosts:
            return _json("403 Forbidden", {"error": "this server answers its own address only"})
        if (method, path) == ("GET", "/"):
            return "200 OK", self.page, "text/html; charset=utf-8"
        if (method, path) == ("GET", "/api/nets"):
            return _json("200 OK", {"nets": describe(self.nets)})
        if (method, path) == ("POST", "/api/predict"):
            return self.predict(environ, host)
        if path in ("/", "/api/nets", "/api/predict"):
            return _json("405 Method Not Allowed", {"error": f"{method} {path}: not served"})
        return _json("404 Not Found", {"error": f"no such page: {path[:200]}"})

    def predict(self, environ, host: str) -> Tuple[str, bytes, str]:
        origin = environ.get("HTTP_ORIGIN")
        if origin is not None and origin != f"http://{host}":  # a page of another origin, in the user's browser
            return _json("403 Forbidden", {"error": f"a prediction from a page of another origin ({origin[:100]}) "
                                                    "is refused"})
        size = int(environ.get("CONTENT_LENGTH") or 0)  # waitress has refused a malformed or too large one
        if size == 0:
            return _json("400 Bad Request", {"error": "send the picture's bytes as the request's body"})
        name = unquote(environ.get("HTTP_X_FILE_NAME") or "the drawing")[:100]  # the page encodes it (headers are ASCII)
        with self.lock:
            if self.pending >= WORKERS + MAX_WAITING:
                return _json("503 Service Unavailable", {"error": f"busy: {self.pending} pictures ahead of this one; "
                                                                  "try again"})
            self.pending += 1
        try:
            picture = environ["wsgi.input"].read(size)
            with self.workers:
                try:
                    return _json("200 OK", answer(self.nets, picture, name))
                except Exception as e:  # noqa: BLE001 - the page shows it; the server keeps serving
                    return _json("200 OK", {"error": f"{name}: could not be read ({type(e).__name__}: "
                                                     f"{(str(e).splitlines() or [''])[0]})"})
        finally:
            with self.lock:
                self.pending -= 1


def read_page() -> bytes:
    """The page, read once as the server starts: a page that cannot be served is an error before "serving", not a
    500 later. Found beside this package's files, not through `importlib.resources.files("mnist_arch")`: from a
    folder that holds a clone named mnist_arch/ (the clone's parent), Python takes that folder for the
    package's namespace and resources would look in it."""
    path = Path(__file__).resolve().parent.parent / "web" / PAGE
    try:
        return path.read_bytes()
    except OSError as e:
        raise ConfigError(f"the page's file cannot be read ({e.strerror}: {path}); reinstall mnist-arch") from None


def _json(status: str, body: Dict[str, Any]) -> Tuple[str, bytes, str]:
    return status, json.dumps(body).encode(), "application/json"


class PageServer:
    """The page's server (waitress), not yet serving; port 0 takes a free one (`address` says which)."""

    def __init__(self, nets: List[Net], host: str = "127.0.0.1", port: int = 0):
        _allow_open_files(CONNECTION_LIMIT + 64)
        self.app = App(nets)
        self.thread: Optional[threading.Thread] = None  # start()'s, when it serves from a thread of this process
        try:  # the listening socket is ours: an address that cannot be had is refused before any thread starts
            found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
            family, _, _, _, address = min(found, key=lambda info: info[0] != socket.AF_INET)  # IPv4 where both
            listening = socket.create_server(address, family=family, backlog=WAITRESS["backlog"])
        except OSError as e:  # a name that does not resolve, an address not ours, a port in use or not allowed
            what = f"--port {port}" if e.errno in (errno.EADDRINUSE, errno.EACCES) else f"--host {host}"
            reason = os.strerror(e.errno) if (e.errno or 0) > 0 else (e.strerror or e)  # without create_server's note
            raise ConfigError(f"{what}: cannot listen on {host}:{port} ({reason})") from None
        self.connections: Dict[int, Any] = {}  # waitress's socket map: the listener and every open connection
        self.server = waitress.create_server(self.app, map=self.connections, sockets=[listening], **WAITRESS)
        self.address = (self.server.effective_host, self.server.effective_port)
        if is_loopback(host):
            self.app.hosts = {f"{name}:{self.address[1]}" for name in ("127.0.0.1", "localhost", "[::1]")}

    def serve_forever(self) -> None:
        self.server.run()  # until shutdown(), or Ctrl-C (waitress then stops its threads and returns)

    def start(self) -> "PageServer":
        """Serve from a thread of this process (the tests, the README's screenshot) until shutdown()."""
        self.thread = threading.Thread(target=self.serve_forever, name="page-server", daemon=True)
        self.thread.start()
        return self

    def shutdown(self) -> None:
        """Stop, and return only when no thread of the server is left. waitress's workers are daemon threads,
        and one still inside a prediction (torch, which has let go of the GIL) when the interpreter exits is
        ended mid-call: the process aborts ('terminate called without an active exception', exit 134) after
        everything else succeeded. So every worker finishes its request first, however long that takes."""
        dispatcher = self.server.task_dispatcher
        while dispatcher.threads:  # shutdown() gives up (with a warning) after its timeout: wait on
            dispatcher.shutdown(cancel_pending=True, timeout=STOP_WAIT_S)
        wasyncore.close_all(self.connections)  # the serving loop returns once its map is empty
        if self.thread is not None:
            self.thread.join()


def _allow_open_files(needed: int) -> None:
    """Raise this process's soft limit on open files towards `needed` (each connection is one), within the
    hard limit the system sets."""
    import resource  # deferred: a Unix-only module (none on Windows), imported by the one call that needs it

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed if hard == resource.RLIM_INFINITY else min(needed, hard), hard))


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
