"""Load test for `lcenet serve`: throughput and latency at 1, 8 and 32 concurrent clients.

    python benchmarks/load_test.py                      # the demo XML-CNN + LCENet (trained first if missing)
    python benchmarks/load_test.py --model-dir runs/x/model --requests 500 --max-seconds 20
    python benchmarks/load_test.py --model-dir runs/a/model runs/b/model --serve-args '--remembered-texts 64'

Starts `lcenet serve` as a subprocess on a free loopback port (so the clients do not share its GIL), then for
each concurrency level sends single-document requests (k = 5, test documents of the bundled EURLEX57K sample)
from that many concurrent clients, until --requests have been answered or --max-seconds have passed, and stops
the server. Several model directories are served as an ensemble. The requests cycle through the sample's 500
texts, so a frozen encoder's memo (`lcenet serve --remembered-texts`, 10,000 by default) would answer them without
encoding: `--remembered-texts 64` (the largest batch) measures every text encoded once, its members sharing the
vectors of the batch; `--remembered-texts 0` every text encoded by each member that reads a frozen encoder.
Writes a JSON record to benchmarks/results/serve_load_<device>.json and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np

from lcenet import data
from lcenet.demo import SAMPLE_DIR, demo_config
from lcenet.io import atomic_write_json
from lcenet.pipeline import run_training

RESULTS = Path(__file__).parent / "results"
TARGETS = {"errors": 0, "p50_ms_at_1": 15.0, "docs_per_s_at_32": 200.0}  # issue #12, 2 CPU cores


def start_server(model_dirs: list[Path], device: str, extra: list[str]) -> tuple[subprocess.Popen, str]:
    command = [sys.executable, "-m", "lcenet.cli", "serve", *map(str, model_dirs), "--port", "0", "--device", device,
               *extra]
    server = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    for line in server.stderr:
        sys.stderr.write(line)
        if match := re.search(r"at (http://\S+)", line):
            # Keep reading its stderr, so a chatty server never blocks on a full pipe.
            threading.Thread(target=lambda: [sys.stderr.write(rest) for rest in server.stderr], daemon=True).start()
            return server, match.group(1)
        if time.monotonic() > deadline:
            break
    server.kill()
    raise SystemExit(f"the server did not start: {' '.join(command)}")


def stop_server(server: subprocess.Popen) -> None:
    server.send_signal(signal.SIGINT)
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


class Connection:
    """A minimal keep-alive HTTP/1.1 client on asyncio streams: the load generator shares the CPU with the
    server, and httpx spends several times more CPU per request, which capped the measured throughput."""

    def __init__(self, url: str):
        parsed = urllib.parse.urlsplit(url)
        self.host, self.port = parsed.hostname, parsed.port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
            self.writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            self.writer.write(f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
                              f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            head = await self.reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            headers = dict(line.lower().split(": ", 1) for line in lines[1:] if ": " in line)
            payload = await self.reader.readexactly(int(headers.get("content-length", 0)))
        except BaseException:
            self.close()
            raise
        if headers.get("connection") == "close":
            self.close()
        return int(lines[0].split(" ", 2)[1]), payload

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def load(url: str, texts: list[str], concurrency: int, requests: int, max_seconds: float) -> dict:
    """``concurrency`` clients, each sending one request after another, until the count or the time is up."""
    latencies: list[float] = []
    errors: list[str] = []
    sent = 0
    connections = [Connection(url) for _ in range(concurrency)]
    before = json.loads((await connections[0].request("GET", "/health"))[1])
    started = time.perf_counter()
    deadline = started + max_seconds

    async def worker(connection: Connection) -> None:
        nonlocal sent
        while sent < requests and time.perf_counter() < deadline:
            body = json.dumps({"texts": [texts[sent % len(texts)]], "k": 5}).encode()
            sent += 1
            begin = time.perf_counter()
            try:
                status, payload = await connection.request("POST", "/predict", body)
                if status == 200 and len(json.loads(payload)["predictions"][0]["labels"]) == 5:
                    latencies.append(time.perf_counter() - begin)
                else:
                    errors.append(f"{status}: {payload[:200]!r}")
            except (OSError, asyncio.IncompleteReadError, ValueError) as error:
                errors.append(repr(error))

    await asyncio.gather(*(worker(connection) for connection in connections))
    elapsed = time.perf_counter() - started
    after = json.loads((await connections[0].request("GET", "/health"))[1])
    for connection in connections:
        connection.close()
    ms = 1000 * np.asarray(latencies) if latencies else np.zeros(1)
    batches = after["batches"] - before["batches"]
    return {"concurrency": concurrency, "requests": sent, "ok": len(latencies), "errors": len(errors),
            "error_samples": errors[:5], "seconds": elapsed, "stopped_by_time": sent < requests,
            "docs_per_s": len(latencies) / elapsed, "p50_ms": float(np.percentile(ms, 50)),
            "p95_ms": float(np.percentile(ms, 95)), "p99_ms": float(np.percentile(ms, 99)),
            "mean_ms": float(ms.mean()), "max_ms": float(ms.max()), "batches": batches,
            "mean_batch_docs": (after["documents"] - before["documents"]) / max(batches, 1)}


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, nargs="+", default=[Path("runs/demo/xmlcnn_lcenet/model")],
                        help="model to serve (several: an ensemble); the demo XML-CNN + LCENet is trained there "
                             "first if one directory is given and it is missing")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests", type=int, default=2000, help="requests per concurrency level (at most)")
    parser.add_argument("--max-seconds", type=float, default=30.0, help="time per concurrency level (at most)")
    parser.add_argument("--warmup", type=int, default=50, help="requests before each level, not measured")
    parser.add_argument("--serve-args", default="", help="extra `lcenet serve` arguments, e.g. '--threads 2'")
    parser.add_argument("--note", default="", help="recorded as is, e.g. what else ran on the machine")
    parser.add_argument("--output", type=Path, help="record path (default results/serve_load_<device>.json)")
    args = parser.parse_args()

    for model_dir in args.model_dir:
        if (model_dir / "config.json").exists():
            continue
        if model_dir.name != "model" or len(args.model_dir) > 1:
            raise SystemExit(f"{model_dir}: not found (only one RUN_DIR/model path is trained when missing)")
        print(f"{model_dir}: missing; training the demo XML-CNN + LCENet there first", file=sys.stderr)
        run_training(demo_config(lcenet=True), SAMPLE_DIR, model_dir.parent,
                     cache_dir=model_dir.parent.parent / "cache", progress=False)
    texts = [text for text, _ in data.iter_split(SAMPLE_DIR, "test")]
    started = time.time()
    load_before = os.getloadavg()
    server, url = start_server(args.model_dir, args.device, args.serve_args.split())
    levels = []
    try:
        for concurrency in args.concurrency:
            asyncio.run(load(url, texts, concurrency, args.warmup, args.max_seconds))
            levels.append(asyncio.run(load(url, texts, concurrency, args.requests, args.max_seconds)))
            level = levels[-1]
            print(f"concurrency {concurrency:>3}: {level['docs_per_s']:7.1f} docs/s  p50 {level['p50_ms']:6.1f} ms  "
                  f"p95 {level['p95_ms']:6.1f} ms  p99 {level['p99_ms']:6.1f} ms  errors {level['errors']}  "
                  f"mean batch {level['mean_batch_docs']:.1f} docs", file=sys.stderr)
        model_info = json.loads(urllib.request.urlopen(f"{url}/model").read())
    finally:
        stop_server(server)
    by_concurrency = {level["concurrency"]: level for level in levels}
    met = {"errors": all(level["errors"] == 0 for level in levels)}
    if 1 in by_concurrency:
        met["p50_ms_at_1"] = by_concurrency[1]["p50_ms"] <= TARGETS["p50_ms_at_1"]
    if 32 in by_concurrency:
        met["docs_per_s_at_32"] = by_concurrency[32]["docs_per_s"] >= TARGETS["docs_per_s_at_32"]
    record = {
        "command": shlex.join(["python", *sys.argv]), "git_commit": git_commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": args.device, "cpu_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
        else os.cpu_count(), "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "note": args.note, "model_dirs": list(map(str, args.model_dir)),
        "members": [{"family": member["family"], "lcenet": member["lcenet"]} for member in model_info["members"]],
        "combine": model_info["combine"], "num_labels": model_info["num_labels"], "limits": model_info["limits"],
        "serve_args": args.serve_args, "versions": model_info["versions"]["serving"],
        "client": "keep-alive HTTP/1.1 on asyncio streams, one connection per client, in a separate process "
                  "on the same machine; single-document requests, k = 5, EURLEX57K sample test documents",
        "requests_per_level": args.requests, "max_seconds_per_level": args.max_seconds, "warmup": args.warmup,
        "levels": levels, "targets": TARGETS, "targets_met": met, "wall_seconds": time.time() - started,
    }
    output = args.output or RESULTS / f"serve_load_{args.device.split(':')[0]}.json"
    atomic_write_json(output, record)
    print(output)


if __name__ == "__main__":
    main()
