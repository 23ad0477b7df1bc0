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
from PIL import Image, ImageDraw

from mnist_arch import predict, serve, training

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, make_cfg):
    """Two small convnets trained for a few batches on synthetic files (their checksums patched in)."""
    from mnist_arch.data import fetch
    from tests.conftest import checksums, fast_overrides, synthetic_files, write_root

    tmp = tmp_path_factory.mktemp("serve")
    write_root(tmp / "data", synthetic_files())
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fetch, "MD5", checksums(synthetic_files()))
        for name, stages in [("a", "[[4],[8]]"), ("b", "[[6,6],[8]]")]:
            training.train(make_cfg(fast_overrides(tmp / "data") + ["model=convnet", f"model.net.stages={stages}",
                                                                     "callbacks.plots=false"]), tmp / name)
        yield [tmp / "a", tmp / "b"]


@pytest.fixture
def server(two_runs):
    nets = serve.load_nets([str(p) for p in two_runs], [])
    running = serve.make_server(nets)
    thread = threading.Thread(target=running.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{running.server_address[1]}", nets
    running.shutdown()
    running.server_close()


def _post(url: str, body: bytes, host: str = None):
    request = urllib.request.Request(f"{url}/api/predict", data=body, method="POST")
    if host:
        request.add_header("Host", host)
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as e:
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
    assert _post(url, b"not a picture")[1] == {"error": "the drawing: not an image file (PNG, JPEG, ...), an .npy "
                                                        "array or an IDX file"}
    assert _post(url, picture.read_bytes())[0] == 200  # still serving
    assert _post(url, picture.read_bytes(), host="evil.example:80") == (
        403, {"error": "this server answers its own address only"})  # DNS rebinding: a foreign Host is refused


def test_it_listens_on_the_loopback_and_says_so(two_runs, tmp_path):
    process = subprocess.Popen([sys.executable, "-m", "mnist_arch.serve", str(two_runs[0])], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        first = process.stdout.readline()
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert first.startswith("serving 1 net(s) at http://127.0.0.1:") and "(this machine only)" in first


def test_an_unusable_run_dir_is_one_line_before_the_server_starts(tmp_path, capsys):
    with pytest.raises(SystemExit) as done:
        serve.main([str(tmp_path / "nowhere")])
    assert done.value.code == 2 and capsys.readouterr().err == f"error: {tmp_path / 'nowhere'}: no such run dir or " \
                                                               "checkpoint file\n"


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
            shown = serve.make_server(serve.load_nets(runs.split(os.pathsep), []))
            threading.Thread(target=shown.serve_forever, daemon=True).start()
            page.goto(f"http://127.0.0.1:{shown.server_address[1]}")
            page.wait_for_selector(".net .layer")
            _draw(page, "7")
            page.screenshot(path=os.environ["MNIST_ARCH_SCREENSHOT"], full_page=True)
            shown.shutdown()
        browser.close()
