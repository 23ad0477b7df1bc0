"""The draw-a-digit page (python -m mnist_arch.serve): the server on its own, and the page in a real browser
(Chromium through Playwright, marked `browser`: deselected by default, run by .ci/run where Chromium is)."""
import base64
import json
import os
import shutil
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw

from mnist_arch.commands import predict
from mnist_arch.commands import serve as serve_command
from mnist_arch.inference import server as serve
from mnist_arch.inference.trained import Trust
from mnist_arch.train import job as training

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, make_cfg):
    """Two small convnets trained for a few batches on synthetic files (their checksums patched in); the second
    with separable convs (a depthwise conv's maps are drawn like any other's)."""
    from mnist_arch.data import fetch
    from tests.conftest import checksums, fast_overrides, synthetic_files, write_root

    tmp = tmp_path_factory.mktemp("serve")
    write_root(tmp / "data", synthetic_files())
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fetch, "MD5", checksums(synthetic_files()))
        for name, stages, conv in [("a", "[[4],[8]]", "full"), ("b", "[[6,6],[8]]", "separable")]:
            training.train(make_cfg(fast_overrides(tmp / "data") + ["model=convnet", f"model.net.stages={stages}",
                                                                     f"model.net.conv={conv}", "callbacks.plots=false"]),
                           tmp / name)
        yield [tmp / "a", tmp / "b"]


@pytest.fixture
def server(two_runs):
    nets = serve.load_nets([str(p) for p in two_runs], Trust())
    running = serve.PageServer(nets).start()
    yield f"http://127.0.0.1:{running.address[1]}", nets
    running.shutdown()
    # nothing of the server outlives it (a worker still predicting at exit would abort the process); a worker
    # that has said it is done may still be returning from its Python frames for a moment
    left = lambda: [t.name for t in threading.enumerate() if t.name.startswith(("waitress", "page-server"))]
    for _ in range(50):
        if not left():
            break
        threading.Event().wait(0.1)
    assert not left()


def _post(url: str, body: bytes, host: str = None):
    request = urllib.request.Request(f"{url}/api/predict", data=body, method="POST")
    if host:
        request.add_header("Host", host)
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as e:
        with e:  # its connection closed here, not by the garbage collector
            return e.code, json.loads(e.read())


def _seven(path: Path) -> Path:
    paper = Image.new("L", (280, 280), 255)
    ImageDraw.Draw(paper).line([(70, 60), (210, 60), (120, 230)], fill=0, width=18)
    paper.save(path)
    return path


def test_the_server_answers_as_predict_does_and_keeps_serving_past_a_bad_file(server, two_runs, tmp_path, capsys):
    url, nets = server
    picture = _seven(tmp_path / "seven.png")
    status, answer = _post(url, picture.read_bytes())
    with pytest.raises(SystemExit):
        predict.main([str(two_runs[0]), str(picture), "--json"])
    expected = json.loads(capsys.readouterr().out)[0]
    assert status == 200 and answer["nets"][0]["probabilities"] == expected["probabilities"]
    assert answer["nets"][0]["digit"] == expected["digit"] and len(answer["input"]) == 28
    for net, result in zip(nets, answer["nets"]):  # every conv layer's maps, one per channel, at its shape
        assert [[len(m), len(m[0]), len(m[0][0])] for m in result["maps"]] == [list(r.shape) for r in net.convs]
    depthwise = [r for r in nets[1].convs if nets[1].trained.net.get_submodule(r.name).groups > 1]
    assert len(depthwise) == 2  # the separable net's depthwise convs are among the layers drawn
    assert _post(url, b"not a picture")[1] == {"error": "the drawing: not an image file (PNG, JPEG, ...), an .npy "
                                                        "array or an IDX file"}
    assert _post(url, picture.read_bytes())[0] == 200  # still serving
    assert _post(url, picture.read_bytes(), host="evil.example:80") == (
        403, {"error": "this server answers its own address only"})  # DNS rebinding: a foreign Host is refused


def test_it_listens_on_the_loopback_and_says_so(two_runs, tmp_path):
    with subprocess.Popen([sys.executable, "-m", "mnist_arch.serve", str(two_runs[0])], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, cwd=tmp_path) as process:  # its pipes closed after
        try:
            first = process.stdout.readline()
        finally:
            process.terminate()
            process.wait(timeout=30)
    assert first.startswith("serving 1 net(s) at http://127.0.0.1:") and "(this machine only)" in first


def test_an_unusable_run_dir_is_one_line_before_the_server_starts(tmp_path, capsys):
    with pytest.raises(SystemExit) as done:
        serve_command.main([str(tmp_path / "nowhere")])
    assert done.value.code == 2 and capsys.readouterr().err == f"error: {tmp_path / 'nowhere'}: no such run dir or " \
                                                               "checkpoint file\n"


def _raw(url: str, data: bytes, timeout: float = 10) -> bytes:
    """Send raw bytes to the server and read its answer to the end (a request a browser would not send)."""
    import socket

    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
        conn.sendall(data)
        chunks = []
        while True:
            chunk = conn.recv(65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)


def _status(answer: bytes) -> int:
    """The final status of an answer; an interim `100 Continue` (to `Expect: 100-continue`) before it is skipped,
    and one with nothing after it (the body never sent) is that 100."""
    while answer.startswith(b"HTTP/1.1 100 ") and b"\r\n\r\n" in answer and answer.split(b"\r\n\r\n", 1)[1]:
        answer = answer.split(b"\r\n\r\n", 1)[1]
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.") else 0


def test_fifty_concurrent_predictions_are_all_answered(server, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    url, _ = server
    picture = _seven(tmp_path / "seven.png").read_bytes()
    with ThreadPoolExecutor(50) as pool:
        answers = list(pool.map(lambda _: _post(url, picture), range(50)))
    assert [status for status, _ in answers] == [200] * 50
    assert len({json.dumps(answer) for _, answer in answers}) == 1  # the same picture, the same answer


def _post_with(url: str, body: bytes, headers: dict):
    request = urllib.request.Request(f"{url}/api/predict", data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status
    except urllib.error.HTTPError as e:
        with e:
            return e.code


def test_a_post_from_another_origin_is_refused_and_one_without_origin_is_not(server, tmp_path):
    url, _ = server
    picture = _seven(tmp_path / "seven.png").read_bytes()
    assert _post_with(url, picture, {"Origin": "http://evil.example"}) == 403
    assert _post_with(url, picture, {"Origin": "null"}) == 403
    assert _post_with(url, picture, {"Origin": url}) == 200  # the page itself
    assert _post_with(url, picture, {}) == 200  # curl, scripts


@pytest.mark.parametrize("request_bytes, status", [
    (b"POST /api/predict HTTP/1.1\r\nHost: {host}\r\nContent-Length: abc\r\n\r\n", 400),
    (b"NONSENSE\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: {host}\r\nBad Header Line\r\n\r\n", 400),
    (b"POST /api/predict HTTP/1.1\r\nHost: {host}\r\nContent-Length: 99999999999\r\n\r\n", 413),
    (b"GET /api/predict HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n", 405),
    (b"GET /etc/passwd HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n", 404),
    (b"GET / HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n", 403),
])
def test_a_malformed_or_unwanted_request_gets_its_status_and_the_server_goes_on(server, tmp_path, capfd,
                                                                               request_bytes, status):
    url, _ = server
    host = url.removeprefix("http://").encode()
    assert _status(_raw(url, request_bytes.replace(b"{host}", host))) == status
    assert _post(url, _seven(tmp_path / "seven.png").read_bytes())[0] == 200
    assert "Traceback" not in capfd.readouterr().err


def test_slow_clients_are_dropped_and_a_broken_pipe_is_no_traceback(two_runs, tmp_path, monkeypatch, capfd):
    import socket
    import time

    monkeypatch.setitem(serve.WAITRESS, "channel_timeout", 1)
    monkeypatch.setitem(serve.WAITRESS, "cleanup_interval", 1)
    running = serve.PageServer(serve.load_nets([str(two_runs[0])], Trust())).start()
    url = f"http://127.0.0.1:{running.address[1]}"
    try:
        with socket.create_connection(("127.0.0.1", running.address[1])) as stalled:
            stalled.sendall(b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1")  # and never finishes its headers
            stalled.settimeout(10)
            started = time.monotonic()
            assert stalled.recv(100) == b"" and time.monotonic() - started < 5  # closed by the server
        picture = _seven(tmp_path / "seven.png").read_bytes()
        for _ in range(5):  # a client that sends a whole request and hangs up before the answer
            with socket.create_connection(("127.0.0.1", running.address[1])) as gone:
                gone.sendall(f"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1:{running.address[1]}\r\n"
                             f"Content-Length: {len(picture)}\r\n\r\n".encode() + picture)
        assert _post(url, picture)[0] == 200
    finally:
        running.shutdown()
    assert "Traceback" not in capfd.readouterr().err


def test_past_the_queue_a_prediction_gets_503(two_runs, tmp_path, monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    monkeypatch.setattr(serve, "WORKERS", 1)
    monkeypatch.setattr(serve, "MAX_WAITING", 2)
    release = threading.Event()
    real_answer = serve.answer
    monkeypatch.setattr(serve, "answer", lambda *args: (release.wait(30), real_answer(*args))[1])
    running = serve.PageServer(serve.load_nets([str(two_runs[0])], Trust())).start()
    url = f"http://127.0.0.1:{running.address[1]}"
    picture = _seven(tmp_path / "seven.png").read_bytes()
    try:
        with ThreadPoolExecutor(3) as pool:
            held = [pool.submit(_post, url, picture) for _ in range(3)]  # one running, two waiting
            while running.app.pending < 3:
                threading.Event().wait(0.05)
            status, body = _post(url, picture)
            release.set()
            assert (status, [f.result()[0] for f in held]) == (503, [200, 200, 200])
            assert body["error"].startswith("busy: 3 pictures ahead of this one")
    finally:
        release.set()
        running.shutdown()


@pytest.mark.parametrize("argv, message", [
    (["--port", "99999"], "argument --port: '99999' is not a port: a number from 0 to 65535"),
    (["--port", "http"], "argument --port: 'http' is not a port"),
    (["--host", "nowhere.invalid"], "--host nowhere.invalid: cannot listen on nowhere.invalid:0"),
    (["--host", "192.0.2.1"], "--host 192.0.2.1: cannot listen on 192.0.2.1:0 (Cannot assign requested address)"),
])
def test_a_bad_port_or_host_is_one_line(two_runs, capsys, argv, message):
    with pytest.raises(SystemExit) as done:
        serve_command.main([str(two_runs[0]), *argv])
    err = capsys.readouterr().err
    assert done.value.code == 2 and err.startswith(f"error: {message}") and err.count("\n") == 1


def test_a_port_in_use_is_one_line(two_runs, capsys):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SystemExit) as done:
            serve_command.main([str(two_runs[0]), "--port", str(port)])
    assert done.value.code == 2
    assert capsys.readouterr().err.startswith(f"error: --port {port}: cannot listen on 127.0.0.1:{port} (Address "
                                              "already in use)")


HEADER_NAMES = st.sampled_from(["Content-Length", "Origin", "Host", "X-File-Name", "Transfer-Encoding", "Expect",
                                 "Connection", "Content-Type", "X-Forwarded-For", "A" * 300, "Bad Name", "\u00e9"])
HEADER_VALUES = st.one_of(st.sampled_from(["0", "-1", "abc", "5", "chunked", "100-continue", "close", "null",
                                           "http://evil.example", "%ff%00../x", "1e9", " 7 "]),
                          st.text(max_size=20))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "OPTIONS", "HEAD", "G\x00T", ""]),
       path=st.sampled_from(["/", "/api/nets", "/api/predict", "/api/predict?x=1", "//", "/../..", "*", "", "/%00"]),
       version=st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/2", "HTTP/1.1 extra", ""]),
       own_host=st.booleans(),
       headers=st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), max_size=4),
       body=st.binary(max_size=200))
def test_any_request_gets_a_status_never_a_server_error(server, capfd, method, path, version, own_host, headers, body):
    """What a client controls, fuzzed: the request line, headers (names, values, repeats) and body. The answer is
    a 2xx/4xx/503 status (or the connection closed on an incomplete request), never a 500 or a traceback, and the
    server still answers the page afterwards."""
    import socket

    url, _ = server
    host = url.removeprefix("http://") if own_host else "evil.example"
    lines = [f"{method} {path} {version}".strip(), f"Host: {host}", *(f"{k}: {v}" for k, v in headers)]
    request = "\r\n".join(lines).encode("utf-8", "surrogatepass") + b"\r\n\r\n" + body
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(request)
        conn.shutdown(socket.SHUT_WR)  # a body shorter than its Content-Length ends here, not after a timeout
        answer = b"".join(iter(lambda: conn.recv(65536), b""))
    assert answer == b"" or _status(answer) in (100, 200, 400, 403, 404, 405, 411, 413, 417, 431, 501, 503), \
        answer[:200]
    with urllib.request.urlopen(f"{url}/api/nets", timeout=10) as page:
        assert page.status == 200
    assert "Traceback" not in capfd.readouterr().err


def _chromium():
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.skip("no Chromium here (Debian: apt-get install chromium)")
    playwright = pytest.importorskip("playwright.sync_api")
    return found, playwright


STROKES = {"1": [[(140, 45), (140, 235)]], "7": [[(70, 60), (210, 60)], [(210, 60), (120, 235)]]}
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync"]


def _draw(page, digit: str) -> None:
    """Clear the pad, draw `digit` with mouse strokes, wait for the page to show the answer to the last one."""
    page.click("#clear")
    answers = int(page.get_attribute("body", "data-answers"))
    pad = page.locator("#pad").bounding_box()
    for (x0, y0), (x1, y1) in STROKES[digit]:
        page.mouse.move(pad["x"] + x0, pad["y"] + y0)
        page.mouse.down()
        page.mouse.move(pad["x"] + x1, pad["y"] + y1, steps=12)
        page.mouse.up()
    page.wait_for_function(f"document.body.dataset.pending === '0' && +document.body.dataset.answers > {answers}")


@pytest.mark.browser
def test_drawing_in_a_real_browser_shows_what_predict_answers(server, two_runs, tmp_path, capsys):
    """Draw a 1 and a 7 with mouse strokes: each net's shown probabilities are predict --json's for the same
    strokes saved as a PNG, and every conv layer's maps are drawn, at its shape."""
    chromium, playwright = _chromium()
    url, nets = server
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=BROWSER_ARGS)
        page = browser.new_page(viewport={"width": 1300, "height": 1100})
        page.goto(url)
        page.wait_for_selector("#net1 .layer")
        for digit in STROKES:
            _draw(page, digit)
            png = tmp_path / f"drawn_{digit}.png"
            png.write_bytes(base64.b64decode(page.evaluate("document.getElementById('pad').toDataURL('image/png')")
                                             .split(",")[1]))
            for n, run in enumerate(two_runs):
                shown = json.loads(page.get_attribute(f"#net{n}", "data-probabilities"))
                with pytest.raises(SystemExit):
                    predict.main([str(run), str(png), "--json"])
                assert shown == json.loads(capsys.readouterr().out)[0]["probabilities"], (digit, run)
            drawn = page.evaluate("""() => [...document.querySelectorAll('.net')].map(net =>
                [...net.querySelectorAll('.layer')].map(layer =>
                    [...layer.querySelectorAll('canvas')].map(c => [c.width, c.height])))""")
            for net, layers in zip(nets, drawn):
                assert [[len(maps), *maps[0]] for maps in layers] == [[r.shape[0], r.shape[2], r.shape[1]]
                                                                      for r in net.convs]

        page.evaluate("""() => { const dt = new DataTransfer();
            dt.items.add(new File(['hello'], 'notes.txt', {type: 'text/plain'}));
            document.dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true})); }""")
        page.wait_for_function("document.getElementById('message').textContent.length > 0")
        assert page.text_content("#message") == ("notes.txt: not an image file (PNG, JPEG, ...), an .npy array or an "
                                                 "IDX file")
        if os.environ.get("MNIST_ARCH_SCREENSHOT"):  # the README's picture: of the runs named, else of these
            runs = os.environ.get("MNIST_ARCH_SCREENSHOT_RUNS", os.pathsep.join(map(str, two_runs)))
            shown = serve.PageServer(serve.load_nets(runs.split(os.pathsep), Trust())).start()
            page.goto(f"http://127.0.0.1:{shown.address[1]}")
            page.wait_for_selector(".net .layer")
            _draw(page, "7")
            page.screenshot(path=os.environ["MNIST_ARCH_SCREENSHOT"], full_page=True)
            shown.shutdown()
        browser.close()


def test_serve_from_the_clones_parent_serves_its_page(two_runs, tmp_path):
    """From the folder that holds a clone named mnist_arch/, Python takes that folder for the package's namespace:
    the command still finds its page (read as it starts, so a page it could not read would be an error before
    "serving") and serves it."""
    import signal

    (tmp_path / "mnist_arch").mkdir()  # the clone, as its parent folder sees it
    (tmp_path / "mnist_arch" / "README.md").write_text("a clone\n")
    server = subprocess.Popen([sys.executable, "-m", "mnist_arch.serve", str(two_runs[0])], cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = server.stdout.readline()
        assert first.startswith("serving 1 net(s) at http://127.0.0.1:"), first + server.stderr.read()
        url = first.split()[4]
        with urllib.request.urlopen(url, timeout=30) as answer:
            assert answer.status == 200 and answer.read() == (REPO / "mnist_arch" / "web" / serve.PAGE).read_bytes()
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=30)


def test_a_page_that_cannot_be_read_is_an_error_at_start(two_runs, monkeypatch):
    monkeypatch.setattr(serve, "PAGE", "gone.html")
    with pytest.raises(serve.ConfigError, match=r"the page's file cannot be read \(No such file or directory: .*gone"):
        serve.PageServer(serve.load_nets([str(two_runs[0])], Trust()))
