"""Hostile inputs, measured: what each costs the command that reads it, as a whole process.

    python benchmarks/hostile.py files            # predict on each crafted file, under /usr/bin/time -v
    python benchmarks/hostile.py serve            # the serve page under load: bursts, half-open connections, bombs
    python benchmarks/hostile.py programs         # predict on each hostile .pt2, untrusted and trusted by its sha256

`files`: each crafted file (a .gz IDX bomb, 100,000 tiny digits, a 49 MP PNG, a 12 MP photo, a checkpoint
record that deflates to 2 GB, a net_spec asking for a 1.5 GB net, ...) is handed to `python -m
mnist_arch.predict` in a fresh process; the table gives its exit code, peak resident memory (max RSS from
/usr/bin/time -v), that peak over the idle footprint (predict reading one 28x28 PNG), wall seconds, and
the first line it printed. The checkpoint cases use a small convnet checkpoint written here.

`serve`: one `python -m mnist_arch.serve` process under /usr/bin/time -v; then, in order: 50 concurrent
predictions (status counts, seconds); 1,000 half-open connections (a request line and no more; with
--trickle, one more byte every 2 s) held for 30 s while a normal prediction is timed every 2 s, and once
after; three upload bombs at once (a .gz IDX
bomb, a 49 MP PNG, 100,000 digits); a POST from another origin. The server's peak RSS closes the report.
Nothing leaves the machine: every connection is to 127.0.0.1.

`programs`: the .pt2 attacks of issue 45, each made from a .pt2 that `export` wrote (edited as an attacker
would, or exported from a module doing what an attacker wants), handed to predict twice: untrusted, then
trusted by its sha256 (a user fooled into it); exit code, peak RSS, wall seconds, the first line, and whether
the file the attack aims at was touched.
"""
import argparse
import gzip
import io
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from mnist_arch.models import build_net  # noqa: E402

TINY = {"name": "convnet", "arch": None, "net": {"stages": [[4], [8]]}}


def gz_idx(path: Path, shape, body_bytes: int) -> Path:
    with gzip.open(path, "wb", compresslevel=9) as f:
        f.write(struct.pack(f">BBBB{len(shape)}I", 0, 0, 0x08, len(shape), *shape))
        for _ in range(body_bytes >> 20):
            f.write(bytes(1 << 20))
        f.write(bytes(body_bytes % (1 << 20)))
    return path


def png(path: Path, width: int, height: int, mode: str = "L") -> Path:
    """A big flat PNG with one stroke: compresses to almost nothing, decodes to width x height pixels."""
    image = Image.new(mode, (width, height), "white")
    ImageDraw.Draw(image).line([(width // 3, height // 5), (width // 2, 4 * height // 5)], fill="black",
                               width=max(3, width // 40))
    image.save(path, optimize=False, compress_level=9)
    return path


def checkpoint(path: Path, spec=TINY) -> Path:
    state = {f"net.{k}": v for k, v in build_net(TINY).state_dict().items()}
    torch.save({"net_spec": spec, "state_dict": state}, path)
    return path


def deflated_bomb(path: Path, size: int) -> Path:
    """A torch checkpoint whose one tensor record is deflated: a few MB on disk, `size` bytes declared."""
    real = checkpoint(path.with_suffix(".real"))
    with zipfile.ZipFile(real) as src, zipfile.ZipFile(path, "w") as out:
        for info in src.infolist():
            out.writestr(info, src.read(info))
        info = zipfile.ZipInfo(f"{real.stem}/data/99")
        info.compress_type = zipfile.ZIP_DEFLATED
        with out.open(info, "w", force_zip64=True) as record:
            for _ in range(size >> 24):
                record.write(bytes(1 << 24))
    return path


def timed(command, env=None):
    """(exit code, max RSS in MB, wall seconds, stdout+stderr text) of `command` under /usr/bin/time -v."""
    started = time.perf_counter()
    done = subprocess.run(["/usr/bin/time", "-v", *command], capture_output=True, text=True, env=env, cwd=REPO)
    wall = time.perf_counter() - started
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1)) / 1024
    text = done.stdout + done.stderr.split("\tCommand being timed")[0]
    return done.returncode, rss, wall, text


def files(args) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="hostile-"))
    ckpt = checkpoint(tmp / "tiny.ckpt")
    stack = np.zeros((100_000, 28, 28), np.uint8)
    stack[:, 6:22, 12:16] = 255
    digit = np.zeros((8, 8), np.uint8)
    digit[1:7, 3:5] = 255  # a "1": 100,000 of them compress as well as zeros
    cases = {  # name: (checkpoint, file given to predict); the hostile one of the two is sized
        "idle: one 28x28 PNG": (ckpt, png(tmp / "digit.png", 28, 28)),
        "a 1 MB .gz IDX expanding to 1 GB": (ckpt, gz_idx(tmp / "bomb-idx3-ubyte.gz", (1_300_000, 28, 28), 1 << 30)),
        "a 160 KB .gz of 100,000 8x8 digits (all read)": (ckpt, tmp / "many-idx3-ubyte.gz"),
        "100,000 28x28 digits (78 MB IDX, all read)": (ckpt, tmp / "all-idx3-ubyte"),
        "a 49 MP PNG (58 KB)": (ckpt, png(tmp / "49mp.png", 7_000, 7_000)),
        "a 31 MP PNG": (ckpt, png(tmp / "31mp.png", 6_400, 4_850)),
        "a 12 MP RGBA PNG (the largest accepted)": (ckpt, png(tmp / "12mp.png", 4_000, 3_000, "RGBA")),
        "a float32 .npy of 30,000 28x28 (94 MB, accepted)": (ckpt, tmp / "float.npy"),
        "a checkpoint record deflating to 2 GB": (deflated_bomb(tmp / "bomb.ckpt", 2 << 30), tmp / "digit.png"),
        "a net_spec of two 6,500-wide convs (1.5 GB)": (
            checkpoint(tmp / "wide.ckpt", {**TINY, "net": {"stages": [[6_500, 6_500]]}}), tmp / "digit.png"),
        "a net_spec of a 20,000-wide conv pair (14 GB)": (
            checkpoint(tmp / "wider.ckpt", {**TINY, "net": {"stages": [[20_000, 20_000]]}}), tmp / "digit.png"),
        "5,000 random bytes as a .ckpt": (tmp / "noise.ckpt", tmp / "digit.png"),
    }
    with gzip.open(tmp / "many-idx3-ubyte.gz", "wb", compresslevel=9) as f:
        f.write(struct.pack(">IIII", 0x803, 100_000, 8, 8) + np.tile(digit, (100_000, 1, 1)).tobytes())
    (tmp / "all-idx3-ubyte").write_bytes(struct.pack(">IIII", 0x803, *stack.shape) + stack.tobytes())
    np.save(tmp / "float.npy", np.repeat(stack[:30_000, None], 1, axis=1)[:, 0].astype(np.float32) / 255)
    (tmp / "noise.ckpt").write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    idle = None
    print("| input | on disk | exit | peak RSS (MB) | over idle (MB) | wall (s) | first line |\n|---|---:|---:|---:|---:|---:|---|")
    for name, (model, file) in cases.items():
        code, rss, wall, text = timed([sys.executable, "-m", "mnist_arch.predict", str(model), str(file)])
        idle = rss if idle is None else idle
        first = (text.strip().splitlines() or [""])[0][:110].replace(str(tmp) + "/", "")
        size = Path(file if model == ckpt else model).stat().st_size
        print(f"| {name} | {size / 1e6:,.2f} MB | {code} | {rss:,.0f} | {rss - idle:+,.0f} | {wall:.1f} | {first} |",
              flush=True)


def _post(url: str, body: bytes, headers=None, timeout=60):
    request = urllib.request.Request(f"{url}/api/predict", data=body, method="POST", headers=headers or {})
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            answer.read()
            return answer.status, time.perf_counter() - started
    except urllib.error.HTTPError as e:
        return e.code, time.perf_counter() - started
    except OSError as e:
        return type(e).__name__, time.perf_counter() - started


def serve(args) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="hostile-serve-"))
    ckpt = checkpoint(tmp / "tiny.ckpt")
    server = subprocess.Popen(["/usr/bin/time", "-v", sys.executable, "-m", "mnist_arch.serve", str(ckpt)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                              start_new_session=True)  # Ctrl-C to its group: /usr/bin/time itself ignores SIGINT
    url = re.search(r"(http://\S+)/", server.stdout.readline()).group(1)
    port = int(url.rsplit(":", 1)[1])
    drawing = io.BytesIO()
    paper = Image.new("L", (280, 280), 255)
    ImageDraw.Draw(paper).line([(70, 60), (210, 60), (120, 230)], fill=0, width=18)
    paper.save(drawing, "PNG")
    picture = drawing.getvalue()
    try:
        started = time.perf_counter()
        with ThreadPoolExecutor(50) as pool:
            results = list(pool.map(lambda _: _post(url, picture), range(50)))
        statuses = {s: sum(1 for r, _ in results if r == s) for s in {r for r, _ in results}}
        print(f"50 concurrent predictions: {statuses} in {time.perf_counter() - started:.2f} s "
              f"(slowest {max(t for _, t in results):.2f} s)", flush=True)

        held = []
        for _ in range(args.half_open):
            conn = socket.create_connection(("127.0.0.1", port))
            conn.sendall(b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # never finished
            held.append(conn)
        print(f"{len(held)} half-open connections opened; a normal prediction every 2 s for {args.hold} s:", flush=True)
        during, ends = [], time.perf_counter() + args.hold
        while time.perf_counter() < ends:
            for conn in held if args.trickle else ():  # a byte now and then, as the slowest client would
                try:
                    conn.sendall(b"X")
                except OSError:
                    pass
            during.append(_post(url, picture, timeout=30))
            time.sleep(2)
        closed = sum(1 for c in held if _closed(c))
        print(f"  during: {[s for s, _ in during]}, slowest {max(t for _, t in during):.2f} s; "
              f"{closed} of {len(held)} closed by the server", flush=True)
        for conn in held:
            conn.close()
        status, seconds = _post(url, picture)
        print(f"  after: {status} in {seconds:.2f} s", flush=True)

        bombs = [gz_idx(tmp / "bomb-idx3-ubyte.gz", (1_300_000, 28, 28), 1 << 30).read_bytes(),
                 png(tmp / "49mp.png", 7_000, 7_000).read_bytes(),
                 gz_idx(tmp / "many-idx3-ubyte.gz", (100_000, 8, 8), 6_400_000).read_bytes()]
        with ThreadPoolExecutor(3) as pool:
            answers = list(pool.map(lambda b: _post(url, b), bombs))
        print(f"three upload bombs at once ({', '.join(f'{len(b) / 1e3:,.0f} KB' for b in bombs)}): "
              f"{[(s, round(t, 2)) for s, t in answers]}", flush=True)
        with urllib.request.urlopen(urllib.request.Request(f"{url}/api/predict", data=bombs[0], method="POST")) as r:
            print(f"  the bomb's answer: {json.loads(r.read())['error'][:120]}")
        print(f"a POST from another origin: {_post(url, picture, {'Origin': 'http://evil.example'})[0]}")
    finally:
        os.killpg(server.pid, signal.SIGINT)
        _, err = server.communicate(timeout=60)
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", err).group(1)) / 1024
    tracebacks = err.count("Traceback")
    print(f"server: peak RSS {rss:,.0f} MB; tracebacks on its stderr: {tracebacks}")


def _closed(conn: socket.socket) -> bool:
    conn.setblocking(False)
    try:
        return conn.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True
    finally:
        conn.setblocking(True)


def programs(args) -> None:
    import pickle

    from torch import nn

    from mnist_arch.inference.formats import export_pt2, sha256

    tmp = Path(tempfile.mkdtemp(prefix="hostile-pt2-"))
    marker = tmp / "marker"
    net = build_net(TINY).eval()
    good = tmp / "good.pt2"
    export_pt2(net, torch.zeros(2, 1, 28, 28), good)

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    def edited(name, change=lambda n, b: (n, b), add=()):
        with zipfile.ZipFile(good) as old, zipfile.ZipFile(tmp / name, "w") as new:
            for info in old.infolist():
                new.writestr(*change(info.filename, old.read(info.filename)))
            for member, data in add:
                new.writestr(member, data)
        return tmp / name

    def renamed(n, b):
        n = n.replace("models/model.json", "models/evil.json").replace("model_weights_config", "evil_weights_config") \
            .replace("sample_inputs/model.pt", "sample_inputs/evil.pt").replace("model_constants", "evil_constants")
        if n.endswith("evil_weights_config.json"):
            config = json.loads(b)
            config["config"][next(iter(config["config"]))]["use_pickle"] = True
            b = json.dumps(config).encode()
        return n, pickle.dumps(Payload()) if n.endswith("weights/weight_0") else b

    class Module(nn.Module):
        def __init__(self, forward):
            super().__init__()
            self.net, self.extra = net, forward

        def forward(self, x):
            return self.extra(self.net, x)

    def exported(name, forward):
        export_pt2(Module(forward), torch.zeros(2, 1, 28, 28), tmp / name)
        return tmp / name

    graph = lambda old, new: lambda n, b: (n, b.replace(old, new, 1) if n.endswith("model.json") else b)  # noqa: E731
    cases = {
        "a .pt2 export wrote": good,
        "the model saved as `evil`, a weight marked use_pickle (pickled payload)": edited("renamed.pt2", renamed),
        "a legacy data/weights/model.pt (pickled payload)": edited(
            "legacy.pt2", add=[("archive/data/weights/model.pt", pickle.dumps(Payload()))]),
        "a native library under data/aotinductor/": edited(
            "native.pt2", add=[("archive/data/aotinductor/model/evil.so", b"\x7fELF" + bytes(64))]),
        "a node aten.from_file (maps and writes a file)": edited(
            "from_file.pt2", graph(b'"torch.ops.aten.relu.default"', b'"torch.ops.aten.from_file.default"')),
        "a shape expression s77*9**9**9": edited(
            "power.pt2", graph(b"Symbol('s77', positive=True, integer=True)", b"s77*9**9**9")),
        "aten.ones of 750M elements (3 GB)": exported("ones.pt2", lambda m, x: m(x) + torch.ones(750_000_000)[:10]),
        "an output of shape (N,)": exported("flat.pt2", lambda m, x: m(x).sum(dim=1)),
    }
    digits = tmp / "digits.npy"
    strokes = np.zeros((3, 28, 28), np.uint8)
    strokes[:, 6:22, 12:16] = 255  # three "1"s
    np.save(digits, strokes)
    print("| .pt2 | trusted | exit | peak RSS (MB) | wall (s) | marker touched | first line |\n"
          "|---|---|---:|---:|---:|---|---|")
    for name, path in cases.items():
        for trust in ([], ["--trust-program", sha256(path.read_bytes())]):
            marker.unlink(missing_ok=True)
            code, rss, wall, text = timed([sys.executable, "-m", "mnist_arch.predict", str(path), str(digits), *trust])
            first = (text.strip().splitlines() or [""])[0][:120].replace(str(tmp) + "/", "")
            first = re.sub(r"[0-9a-f]{64}", "<sha256>", first)
            print(f"| {name} | {'by sha256' if trust else 'no'} | {code} | {rss:,.0f} | {wall:.1f} | "
                  f"{'YES' if marker.exists() else 'no'} | {first} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    sub.add_parser("files")
    sub.add_parser("programs")
    load = sub.add_parser("serve")
    load.add_argument("--half-open", type=int, default=1000)
    load.add_argument("--hold", type=float, default=30)
    load.add_argument("--trickle", action="store_true", help="the half-open connections send a byte every 2 s")
    args = parser.parse_args()
    {"files": files, "serve": serve, "programs": programs}[args.what](args)


if __name__ == "__main__":
    main()
