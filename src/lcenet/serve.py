"""``lcenet serve``: a saved model (or an ensemble of several, as ``lcenet predict`` combines them) behind HTTP,
with micro-batching.

Requests are queued and run together: one worker thread owns the model, so the event loop never waits on
a forward pass, and each batch takes every request waiting (up to ``max_batch_size`` documents). Under load
the queue fills while the model runs, so batches grow with the load and so does throughput. A batch also
waits up to ``max_wait_ms`` for companions, but only while the server is busy (the last batch held several
requests, or more are already queued): an idle server answers a lone request at once.

fastapi and uvicorn are the optional extra ``serve``; the CLI imports this module only for ``lcenet serve``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import queue
import socket
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import uvicorn
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from lcenet.ensemble import DEFAULT_COMBINE, check_combine
from lcenet.errors import UserError
from lcenet.io import versions

log = logging.getLogger("lcenet")
PAGE = Path(__file__).parent / "serve_page.html"


class SupportsPredict(Protocol):
    """What the server needs of a model: ``Predictor.predict``'s signature and output."""

    def predict(self, texts: list[str], k: int = 5, batch_size: int = 256) -> list[dict]: ...


@dataclass(frozen=True)
class ServeSettings:
    model_dirs: tuple[Path, ...]  # one model, or an ensemble's members (a single Path is taken as one)
    max_batch_size: int = 64  # documents per forward pass
    max_wait_ms: float = 5.0  # how long a batch waits for companions while the server is busy
    max_body_bytes: int = 1_000_000
    max_texts: int = 64  # per request
    max_text_chars: int = 100_000  # per text; documents are cut to the model's max_length tokens anyway
    max_k: int = 100
    combine: str = DEFAULT_COMBINE  # how an ensemble combines its members' scores (lcenet.ensemble)
    # A frozen encoder's vectors of the most recent texts, kept in memory (77 MB at MiniLM-L6's 5 x 384).
    remembered_texts: int = 10_000

    def __post_init__(self) -> None:
        dirs = (self.model_dirs,) if isinstance(self.model_dirs, (str, Path)) else self.model_dirs
        object.__setattr__(self, "model_dirs", tuple(Path(d) for d in dirs))

    def check(self) -> None:
        if not self.model_dirs:
            raise UserError("no model directory given")
        check_combine(self.combine)
        for name in ("max_batch_size", "max_body_bytes", "max_texts", "max_text_chars", "max_k"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be >= 1 (got {getattr(self, name)})")
        if self.max_wait_ms < 0:
            raise UserError(f"--max-wait-ms must be >= 0 (got {self.max_wait_ms})")
        if self.remembered_texts < 0:
            raise UserError(f"--remembered-texts must be >= 0 (got {self.remembered_texts})")


@dataclass
class _Job:
    texts: list[str]
    k: int
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future


class MicroBatcher:
    """Runs ``predictor.predict`` in one worker thread on batches of queued requests."""

    def __init__(self, predictor: SupportsPredict, max_batch_size: int, max_wait_ms: float):
        self.predictor = predictor
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000
        self.requests = self.batches = self.documents = 0  # totals, for /health
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="lcenet-model", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join()

    def pending(self) -> int:
        return self._queue.qsize()

    async def predict(self, texts: list[str], k: int) -> list[dict]:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.put(_Job(texts, k, loop, future))
        return await future

    def _run(self) -> None:
        busy = False  # the last batch had several requests: only then is waiting for companions worth its latency
        while (first := self._queue.get()) is not None:
            jobs, size = [first], len(first.texts)
            deadline = time.monotonic() + (self.max_wait_s if busy or not self._queue.empty() else 0.0)
            stopping = False
            while size < self.max_batch_size:
                try:
                    job = self._queue.get(timeout=max(deadline - time.monotonic(), 0))
                except queue.Empty:
                    break
                if job is None:
                    stopping = True
                    break
                jobs.append(job)
                size += len(job.texts)
            self._run_batch(jobs)
            busy = len(jobs) > 1
            if stopping:
                return

    def _run_batch(self, jobs: list[_Job]) -> None:
        self.requests += len(jobs)
        self.batches += 1
        self.documents += sum(len(job.texts) for job in jobs)
        for k in sorted({job.k for job in jobs}):  # one forward pass per distinct k (nearly always one)
            group = [job for job in jobs if job.k == k]
            try:
                results = self.predictor.predict([t for job in group for t in job.texts], k, self.max_batch_size)
            except Exception as error:  # a bug, not bad input (that was refused before queueing): answer 500
                log.exception("prediction failed")
                for job in group:
                    job.loop.call_soon_threadsafe(_settle, job.future, None, error)
                continue
            start = 0
            for job in group:
                job.loop.call_soon_threadsafe(_settle, job.future, results[start:start + len(job.texts)], None)
                start += len(job.texts)


def _settle(future: asyncio.Future, result: Any, error: BaseException | None) -> None:
    if future.done():  # the client went away and the request was cancelled
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class BodyLimit:
    """ASGI middleware: reads the request body up to ``max_bytes`` before the app sees it, answering 413 as
    soon as the Content-Length or the bytes streamed so far pass the limit (so a huge body never sits in memory)."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._too_large(scope, receive, send)
            return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client disconnected
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                await self._too_large(scope, receive, send)
                return
            more = message.get("more_body", False)
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, replay, send)

    async def _too_large(self, scope, receive, send) -> None:
        response = JSONResponse({"detail": f"request body over {self.max_bytes} bytes"}, status_code=413,
                                headers={"Connection": "close"})
        await response(scope, receive, send)


class PredictRequest(BaseModel):
    texts: list[str]
    k: int = 5


class Prediction(BaseModel):
    labels: list[str]
    names: list[str]
    scores: list[float]


class PredictResponse(BaseModel):
    predictions: list[Prediction]


def create_app(predictor: SupportsPredict, settings: ServeSettings) -> FastAPI:
    """The HTTP app: ``POST /predict``, ``GET /health``, ``GET /model``, the page at ``/``, docs at ``/docs``."""
    import lcenet

    settings.check()
    members = [member_info(model_dir) for model_dir in settings.model_dirs]
    num_labels = members[0]["num_labels"]
    top_k = min(settings.max_k, num_labels)
    batcher = MicroBatcher(predictor, settings.max_batch_size, settings.max_wait_ms)
    ensemble = len(members) > 1
    limits = {k: v for k, v in asdict(settings).items() if k not in ("model_dirs", "combine")}
    model_info = {"members": members, "combine": settings.combine if ensemble else None, "num_labels": num_labels,
                  "versions": {"serving": versions()}, "limits": {**limits, "top_k": top_k}}
    if not ensemble:  # one model: its own fields at the top level too, as before ensembles could be served
        model_info |= {key: value for key, value in members[0].items() if key != "trained_with"}
        model_info["versions"]["trained_with"] = members[0]["trained_with"]
    families = " + ".join(member["family"] for member in members)
    page = PAGE.read_text(encoding="utf-8")

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        try:
            yield
        finally:
            batcher.stop()

    app = FastAPI(title="lcenet", version=lcenet.__version__, lifespan=lifespan,
                  description=f"Top-k labels from {families} in {', '.join(map(str, settings.model_dirs))}"
                              + (f" (an ensemble: {settings.combine} rule)." if ensemble else "."))
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)

    @app.exception_handler(StarletteHTTPException)
    async def body_not_parsed(request: Request, error: StarletteHTTPException) -> JSONResponse:
        # FastAPI answers 400 "There was an error parsing the body" when JSON bytes are not UTF-8; say what it is,
        # with the status every other malformed body gets.
        if error.status_code == 400 and request.url.path == "/predict":
            return JSONResponse({"detail": "invalid JSON: the body is not UTF-8 text"}, status_code=422)
        return JSONResponse({"detail": error.detail}, status_code=error.status_code, headers=error.headers)

    @app.exception_handler(RequestValidationError)
    async def one_line_validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": one_line(error.errors())}, status_code=422)

    @app.post("/predict", response_model=PredictResponse)
    async def predict(body: PredictRequest) -> dict:
        """Top-k labels, their names (the ids when the server has no names file) and sigmoid scores, per text."""
        if not body.texts:
            raise HTTPException(422, "texts: empty list (send at least one text)")
        if len(body.texts) > settings.max_texts:
            raise HTTPException(422, f"texts: {len(body.texts)} texts, at most {settings.max_texts} per request")
        for i, text in enumerate(body.texts):
            if len(text) > settings.max_text_chars:
                raise HTTPException(422, f"texts.{i}: {len(text)} characters, at most {settings.max_text_chars}")
            if "\0" in text:  # as in data files: binary data or UTF-16 read as UTF-8, never meant as text
                raise HTTPException(422, f"texts.{i}: NUL character at offset {text.index(chr(0))} (binary data?)")
        texts = [text.removeprefix("\ufeff") for text in body.texts]  # a byte-order mark is no part of a text
        if not 1 <= body.k <= top_k:
            raise HTTPException(422, f"k: must be between 1 and {top_k} (got {body.k}; the model has {num_labels} "
                                     f"labels, the server allows at most {settings.max_k})")
        results = await batcher.predict(texts, body.k)
        return {"predictions": [{"labels": r["labels"], "names": r.get("names", r["labels"]), "scores": r["scores"]}
                                for r in results]}

    @app.get("/health")
    async def health() -> dict:
        """Liveness, and totals since start: requests, batches (model calls' worth of queued requests), documents."""
        return {"status": "ok", "requests": batcher.requests, "batches": batcher.batches,
                "documents": batcher.documents, "queued": batcher.pending()}

    @app.get("/model")
    async def model() -> dict:
        """Each member's family, LCENet settings and training metrics (if the run's metrics.json sits beside its
        model directory), the ensemble's combining rule, the number of labels, versions and this server's limits
        (one model: its fields at the top level too)."""
        return model_info

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> str:
        return page

    return app


def one_line(errors: list[dict]) -> str:
    """A validation error list as one line: where (``texts.2``) and what, and how many more there are."""
    first = errors[0]
    if first["type"] == "json_invalid":
        at = f" at character {first['loc'][-1]}" if isinstance(first["loc"][-1], int) else ""
        message = f"invalid JSON: {first.get('ctx', {}).get('error', first['msg'])}{at}"
    else:
        where = ".".join(str(part) for part in first["loc"] if part != "body") or "body"
        message = f"{where}: {first['msg']}"
    return message + (f" (and {len(errors) - 1} more)" if len(errors) > 1 else "")


def member_info(model_dir: Path) -> dict:
    """What /model tells of one saved model, from its config.json (read by Predictor.load before, so readable)."""
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    return {"model_dir": str(model_dir), "family": config["model"], "model_args": config.get("model_args"),
            "lcenet": config.get("lcenet"), "num_labels": int(config["num_labels"]),
            "max_length": config.get("max_length"), "format_version": config.get("format_version", 1),
            "metrics": training_metrics(model_dir), "trained_with": config.get("versions")}


def training_metrics(model_dir: Path) -> dict | None:
    """Dev and test metrics from the run's metrics.json beside the model directory, or None."""
    path = model_dir.parent / "metrics.json"
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
        return {"dev": metrics["dev"], "test": metrics["test"]}
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as error:
        log.warning("%s: ignored (%s)", path, error)
        return None


def listen(host: str, port: int) -> socket.socket:
    """A listening socket (port 0: any free port), bound before uvicorn starts so the real port is known.

    Made with proto IPPROTO_TCP, not socket.create_server's 0: asyncio sets TCP_NODELAY only on sockets that
    say they are TCP, and without it every response waits ~40 ms for the client's delayed ACK."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as error:
        sock.close()
        raise UserError(f"{host}:{port}: cannot listen ({error.strerror or error})") from None
    return sock


def default_threads() -> int:
    """Torch threads for serving: every core this process may use but one, left for the event loop."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores - 1)


def serve(settings: ServeSettings, host: str = "127.0.0.1", port: int = 8000, names_file: Path | None = None,
          device: str = "auto", threads: int | None = None) -> None:
    """Load the model, listen, and serve until interrupted."""
    import torch

    from lcenet.models.feature_store import VectorMemo
    from lcenet.predict import Predictor

    settings.check()
    sock = listen(host, port)  # first, so a busy port fails before the model loads
    torch.set_num_threads(threads or default_threads())
    VectorMemo.bound(settings.remembered_texts)  # a server runs for long: its memory stays bounded
    predictor = Predictor.load(list(settings.model_dirs), device, names_file, settings.combine)
    app = create_app(predictor, settings)
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    log.info("serving %s at http://%s:%d (page /, API docs /docs; %d torch threads)",
             " + ".join(map(str, settings.model_dirs)), shown, bound, torch.get_num_threads())
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl-C after its graceful shutdown
        pass
    log.info("stopped")
