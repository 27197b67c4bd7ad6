"""`lcenet serve`: a real uvicorn server on a loopback port, talked to over HTTP."""

from __future__ import annotations

import asyncio
import html.parser
import json
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from conftest import tiny_config, write_tiny_dataset  # noqa: E402
from lcenet.models.feature_store import VectorMemo  # noqa: E402
from lcenet.pipeline import run_training  # noqa: E402
from lcenet.predict import Predictor  # noqa: E402
from lcenet.serve import ServeSettings, create_app, listen, serve  # noqa: E402

TEXTS = ["milk cheese cow dairy", "fishing vessel quota sea tax", "wine grape vineyard", "aid grant fund budget",
         "vehicle motor emission engine customs", "regulation council article"]


class BackgroundServer:
    """uvicorn serving ``app`` in a thread on a free loopback port, as `lcenet serve` runs it."""

    def __init__(self, app):
        sock = listen("127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "server did not start"
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("serve")
    data = write_tiny_dataset(root / "data")
    run_training(tiny_config(lcenet=True, epochs=3), data, root / "run", cache_dir=root / "cache", progress=False)
    (root / "names.tsv").write_text("milk\tMilk products\nfish\tFisheries\n")
    return root / "run" / "model"


@pytest.fixture(scope="module")
def predictor(model_dir) -> Predictor:
    return Predictor.load(model_dir, "cpu", model_dir.parent.parent / "names.tsv")


@pytest.fixture(scope="module")
def server(model_dir, predictor):
    settings = ServeSettings(model_dir, max_wait_ms=20, max_body_bytes=4000, max_texts=8, max_text_chars=300,
                             max_k=5)
    running = BackgroundServer(create_app(predictor, settings))
    yield running
    running.stop()


def test_predictions_equal_predictor_output(server, predictor, model_dir):
    response = httpx.post(f"{server.url}/predict", json={"texts": TEXTS, "k": 3})
    assert response.status_code == 200, response.text
    assert response.json() == {"predictions": predictor.predict(TEXTS, 3)}
    default_k = httpx.post(f"{server.url}/predict", json={"texts": TEXTS[:1]}).json()["predictions"][0]
    assert len(default_k["labels"]) == 5

    info = httpx.get(f"{server.url}/model").json()
    metrics = json.loads((model_dir.parent / "metrics.json").read_text())
    assert info["family"] == "xmlcnn" and info["num_labels"] == 6 and info["lcenet"]["rank"] == 4
    assert info["members"] == [{**{key: info[key] for key in info["members"][0] if key != "trained_with"},
                                "trained_with": info["versions"]["trained_with"]}] and info["combine"] is None
    assert info["metrics"]["test"] == metrics["test"] and info["versions"]["serving"]["lcenet"]
    assert httpx.get(f"{server.url}/health").json()["status"] == "ok"
    assert httpx.get(f"{server.url}/openapi.json").json()["paths"].keys() >= {"/predict", "/health", "/model"}


def test_names_default_to_label_ids_and_metrics_to_null(model_dir, tmp_path):
    moved = tmp_path / "model"  # no metrics.json beside it
    shutil.copytree(model_dir, moved)
    bare = BackgroundServer(create_app(Predictor.load(moved, "cpu"), ServeSettings(moved)))
    try:
        prediction = httpx.post(f"{bare.url}/predict", json={"texts": TEXTS[:1], "k": 6}).json()["predictions"][0]
        assert prediction["names"] == prediction["labels"] and len(prediction["labels"]) == 6
        assert httpx.get(f"{bare.url}/model").json()["metrics"] is None
    finally:
        bare.stop()


def test_an_ensemble_serves_as_its_predictor_and_describes_each_member(model_dir, tmp_path):
    data = model_dir.parent.parent / "data"
    sparse = tiny_config("sparse", epochs=3, lr=2e-2)
    sparse.model_args, sparse.data.tfidf_min_df = {"hidden_dims": [16]}, 1
    run_training(sparse, data, tmp_path / "sparse", cache_dir=tmp_path / "cache", progress=False)
    dirs = (model_dir, tmp_path / "sparse" / "model")
    ensemble = Predictor.load(list(dirs), "cpu", combine="sigmoid")
    running = BackgroundServer(create_app(ensemble, ServeSettings(dirs, combine="sigmoid")))
    try:
        response = httpx.post(f"{running.url}/predict", json={"texts": TEXTS, "k": 3})
        assert response.status_code == 200, response.text
        assert response.json() == {"predictions": [{**p, "names": p["labels"]} for p in ensemble.predict(TEXTS, 3)]}
        assert response.json() != {"predictions": Predictor.load(model_dir, "cpu").predict(TEXTS, 3)}
        info = httpx.get(f"{running.url}/model").json()
        assert [m["family"] for m in info["members"]] == ["xmlcnn", "sparse"] and info["combine"] == "sigmoid"
        assert info["members"][0]["lcenet"]["rank"] == 4 and info["members"][1]["metrics"]["test"]
        assert "family" not in info and info["num_labels"] == 6  # no single model's fields at the top level
    finally:
        running.stop()


def test_a_server_bounds_what_frozen_encoders_remember(model_dir, monkeypatch):
    import torch

    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets: sockets[0].close())  # loads, returns at once
    monkeypatch.setattr(torch, "set_num_threads", lambda threads: None)  # the other tests keep theirs
    serve(ServeSettings(model_dir, remembered_texts=7), port=0, device="cpu")
    assert VectorMemo.documents == 7


def test_concurrent_requests_are_batched(server, predictor):
    before = httpx.get(f"{server.url}/health").json()

    async def fire() -> list:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            return await asyncio.gather(*(client.post("/predict", json={"texts": [TEXTS[i % len(TEXTS)]], "k": 2})
                                          for i in range(16)))

    responses = asyncio.run(fire())
    after = httpx.get(f"{server.url}/health").json()
    assert [r.status_code for r in responses] == [200] * 16
    for i, response in enumerate(responses):
        # Batched with other documents, a score may differ in the 6th decimal (another float summation order).
        got, = response.json()["predictions"]
        alone, = predictor.predict([TEXTS[i % len(TEXTS)]], 2)
        assert got["labels"] == alone["labels"] and got["names"] == alone["names"]
        assert got["scores"] == pytest.approx(alone["scores"], abs=1e-5)
    assert after["requests"] - before["requests"] == 16 and after["documents"] - before["documents"] == 16
    assert after["batches"] - before["batches"] < 16


def test_a_slow_model_does_not_block_the_event_loop(model_dir, predictor):
    class Slow:
        def predict(self, texts, k=5, batch_size=256):
            time.sleep(1.0)  # like a long forward pass: blocking, holding a thread
            return predictor.predict(texts, k, batch_size)

    slow = BackgroundServer(create_app(Slow(), ServeSettings(model_dir)))
    try:
        result = {}
        request = threading.Thread(target=lambda: result.update(
            response=httpx.post(f"{slow.url}/predict", json={"texts": TEXTS[:1]}, timeout=30)))
        request.start()
        time.sleep(0.2)
        started = time.perf_counter()
        health = httpx.get(f"{slow.url}/health", timeout=30)
        assert health.status_code == 200 and time.perf_counter() - started < 0.5
        request.join()
        assert result["response"].status_code == 200
    finally:
        slow.stop()


def test_answers_do_not_wait_for_delayed_acks(server):
    # httpx does not set TCP_NODELAY: unless the server does, each answer stalls ~40 ms on a delayed ACK.
    with httpx.Client(base_url=server.url) as client:
        client.get("/health")
        times = []
        for _ in range(7):
            started = time.perf_counter()
            client.get("/health")
            times.append(time.perf_counter() - started)
    assert sorted(times)[3] < 0.025, times

@pytest.mark.parametrize("body, status, fragment", [
    ({"texts": []}, 422, "texts: empty list"),
    ({"texts": ["milk"] * 9}, 422, "texts: 9 texts, at most 8"),
    ({"texts": ["milk", "x" * 301]}, 422, "texts.1: 301 characters, at most 300"),
    ({"texts": ["milk"], "k": 6}, 422, "k: must be between 1 and 5"),
    ({"texts": ["milk"], "k": 0}, 422, "k: must be between 1 and 5"),
    ({"texts": ["milk"], "k": "many"}, 422, "k: "),
    ({"texts": ["milk", 3]}, 422, "texts.1: "),
    ({"k": 3}, 422, "texts: "),
    (b'{"texts": ["milk"', 422, "invalid JSON"),
    (b"\xff\xfe", 422, "invalid JSON"),
    ({"texts": ["y" * 250] * 16}, 413, "request body over 4000 bytes"),
])
def test_limits_and_bad_input_get_one_line_reasons(server, body, status, fragment):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = httpx.post(f"{server.url}/predict", content=content, headers={"Content-Type": "application/json"})
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail and fragment in detail, detail
    assert httpx.post(f"{server.url}/predict", json={"texts": ["milk"]}).status_code == 200  # still serving


def test_streamed_body_over_the_limit_is_refused(server):
    def chunks():  # no Content-Length: the server must count the bytes as they arrive
        yield b'{"texts": ["'
        for _ in range(10):
            yield b"z" * 1000
        yield b'"]}'

    response = httpx.post(f"{server.url}/predict", content=chunks(), headers={"Content-Type": "application/json"})
    assert response.status_code == 413 and "over 4000 bytes" in response.json()["detail"]
    assert httpx.post(f"{server.url}/predict", json={"texts": ["milk"]}).status_code == 200


class _Results(html.parser.HTMLParser):
    """Collects (label, name) from the page's result items: <li data-label=...><span class="name">."""

    def __init__(self):
        super().__init__()
        self.labels: list[str] = []
        self.names: list[str] = []
        self._in_name = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "li" and "data-label" in attrs:
            self.labels.append(attrs["data-label"])
        self._in_name = tag == "span" and attrs.get("class") == "name"

    def handle_data(self, data):
        if self._in_name:
            self.names.append(data)
            self._in_name = False


def test_page_is_self_contained(server):
    page = httpx.get(server.url)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "http" not in page.text and " src=" not in page.text and "<link" not in page.text


def test_page_in_headless_chromium(server, predictor):
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        pytest.skip("chromium is not installed (make dev installs it with apt-get where it can)")
    text = "milk cheese cow and a fishing vessel"
    url = f"{server.url}/?" + urllib.parse.urlencode({"text": text, "k": 3})  # the page submits the form itself
    with tempfile.TemporaryDirectory() as profile:
        # Virtual time runs only while no request is pending, so the DOM is dumped after the answer is shown.
        dom = subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--virtual-time-budget=10000", "--dump-dom",
             url], capture_output=True, text=True, timeout=120).stdout
    parsed = _Results()
    parsed.feed(dom)
    expected = predictor.predict([text], 3)[0]
    assert parsed.labels == expected["labels"], dom[-2000:]
    assert parsed.names == expected["names"]


# ---- the bad-input corpus (tests/bad_inputs/cases.py) against the server -----------------------------------
from bad_inputs.cases import CASES, Accepted, write_files  # noqa: E402


def request_body(raw: bytes) -> bytes:
    """The lines of an input file as a /predict body, each line's bytes kept as they are (a client that sends
    a file's lines: invalid UTF-8 stays invalid, a NUL is escaped by JSON, CR and BOM stay in the text)."""
    texts = []
    for line in raw.split(b"\n")[:-1] if raw.endswith(b"\n") else raw.split(b"\n"):
        try:
            texts.append(json.dumps(line.decode("utf-8")).encode())
        except UnicodeDecodeError:
            texts.append(b'"' + line + b'"')
    return b'{"texts": [' + b", ".join(texts) + b'], "k": 3}'


@pytest.mark.parametrize("case", [c for c in CASES if c.target == "input"], ids=lambda c: c.name)
def test_bad_input_corpus_against_the_server(case, server, tmp_path):
    write_files(tmp_path, case.files)
    response = httpx.post(f"{server.url}/predict", content=request_body((tmp_path / "input.txt").read_bytes()),
                          headers={"Content-Type": "application/json"})
    if isinstance(case.expect, Accepted):
        write_files(tmp_path / "clean", case.expect.same_as)
        clean = httpx.post(f"{server.url}/predict", content=request_body((tmp_path / "clean" / "input.txt")
                                                                         .read_bytes()),
                           headers={"Content-Type": "application/json"})
        assert response.status_code == clean.status_code == 200 and response.json() == clean.json()
    else:
        assert response.status_code == 422, response.text
        detail = response.json()["detail"]
        assert "\n" not in detail and any(word in detail for word in ("NUL", "invalid JSON")), detail
    assert httpx.post(f"{server.url}/predict", json={"texts": ["milk"]}).status_code == 200  # still serving


@pytest.mark.parametrize("case", [c for c in CASES if c.target == "model"], ids=lambda c: c.name)
def test_a_damaged_model_directory_stops_serve_before_it_listens(case, model_dir, tmp_path):
    damaged = tmp_path / "model"
    shutil.copytree(model_dir, damaged)
    write_files(damaged, case.files)
    import sys

    result = subprocess.run([sys.executable, "-m", "lcenet", "serve", str(damaged), "--port", "0"],
                            capture_output=True, text=True, timeout=120)
    message = result.stderr.strip()
    assert result.returncode == 2 and len(message.splitlines()) == 1 and "Traceback" not in message, message
    assert case.expect.file in message and case.expect.problem in message, message
