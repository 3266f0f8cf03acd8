"""`bench_serve.py --soak SECONDS`: a real `vitdetect serve` on 127.0.0.1 under sustained mixed load for SECONDS,
then a per-minute table (requests, p50/p99 latency, answers by status, the server's RSS) and three checks: no 5xx,
RSS growth under 10% after the first minute (the warm-up), every minute's p99 within 2x of the first minute's.

The clients, all at once, each until the time is up: --soak-clients senders of valid images (JPEG, PNG, WebP, GIF,
BMP; 1-4 per request), one sender of ?explain=true requests, one of garbage (random bytes, damaged images among good
ones, a wrong content type, a broken multipart body, an empty body), one of oversized uploads (over the server's
--max-upload-mb, with and without Content-Length), and two slow clients that upload at a trickle (10 bytes a second)
until the server's --read-timeout answers 408. Slow clients' latency is their timeout by design: it is counted in the
status columns, not in p50/p99. Exit code 1 when a check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import math
import os
import random
import tempfile
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from vitdetect.serve.process import server_process

MAX_UPLOAD_MB = 2
READ_TIMEOUT_S = 20
SLOW_CLIENTS = 2
TRICKLE = b"\xff" * 10  # bytes a slow client sends each second
RSS_EVERY_S = 2.0
RSS_GROWTH_LIMIT = 0.10
P99_FACTOR = 2.0
EXPECTED = {"valid": {200}, "explain": {200}, "garbage": {200, 400, 415, 422}, "oversized": {413}, "slow": {408}}


@dataclass
class Record:
    """What the clients saw and what the server's memory did, minute by minute."""

    started: float
    last_minute: int  # answers that arrive after the deadline count in the last minute
    latencies: dict[int, list[float]] = field(default_factory=lambda: defaultdict(list))
    statuses: dict[int, Counter] = field(default_factory=lambda: defaultdict(Counter))
    unexpected: list[str] = field(default_factory=list)
    rss_mb: dict[int, float] = field(default_factory=dict)  # the last sample of each minute

    def minute(self, now: float) -> int:
        return min(int((now - self.started) // 60) + 1, self.last_minute)

    def answer(self, kind: str, status: int, started: float, now: float, detail: str = "") -> None:
        minute = self.minute(now)
        self.statuses[minute][status] += 1
        if kind != "slow":
            self.latencies[minute].append(now - started)
        if status not in EXPECTED[kind]:
            self.unexpected.append(f"minute {minute}: {kind} request answered {status} {detail}".rstrip())


def encoded(pixels: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image = Image.fromarray(pixels)
    (image.convert("P") if fmt == "GIF" else image).save(buffer, fmt)
    return buffer.getvalue()


def image_pool(count: int = 40) -> list[tuple[str, bytes]]:
    """CIFAKE-like 32x32 images (and a few at 256x256) in the five formats the page accepts."""
    rng = np.random.default_rng(26)
    pool = []
    for index in range(count):
        side = 256 if index % 10 == 9 else 32
        pixels = np.clip(rng.normal(120, 40, (side, side, 3)), 0, 255).astype(np.uint8)
        fmt, suffix = [("JPEG", "jpg"), ("PNG", "png"), ("WEBP", "webp"), ("GIF", "gif"), ("BMP", "bmp")][index % 5]
        pool.append((f"soak-{index}.{suffix}", encoded(pixels, fmt)))
    return pool


def garbage_request(rng: random.Random, pool: list[tuple[str, bytes]]) -> dict:
    """httpx.post keyword arguments for one kind of bad request, drawn at random."""
    name, good = rng.choice(pool)
    damaged = bytearray(good)
    for _ in range(8):
        damaged[rng.randrange(len(damaged))] = rng.randrange(256)
    return rng.choice([
        {"files": [("files", ("noise.jpg", os.urandom(rng.randrange(1, 4096))))]},
        {"files": [("files", (name, good)), ("files", ("damaged-" + name, bytes(damaged[: len(damaged) // 2])))]},
        {"content": b"not an image", "headers": {"content-type": "text/plain"}},
        {"content": b"--x\r\nbroken", "headers": {"content-type": "multipart/form-data; boundary=x"}},
        {"content": b"", "headers": {"content-type": "image/png"}},
    ])


def oversized_request(rng: random.Random) -> dict:
    body = os.urandom(int(MAX_UPLOAD_MB * 1.25e6))
    if rng.random() < 0.5:  # chunked, no Content-Length: the server counts the bytes as they arrive
        return {"content": chunks(body), "headers": {"content-type": "image/jpeg"}}
    return {"content": body, "headers": {"content-type": "image/jpeg"}}


async def chunks(body: bytes, size: int = 65536):
    for start in range(0, len(body), size):
        yield body[start:start + size]


async def sender(http, record: Record, kind: str, deadline: float, think_s: float, make) -> None:
    """Send make()'s requests one after another until the deadline, recording each answer."""
    loop = asyncio.get_running_loop()
    while loop.time() < deadline:
        path, request = make()
        started, detail = loop.time(), ""
        try:
            status = (await http.post(path, **request)).status_code
        except Exception as exc:  # noqa: BLE001 - a dropped connection is an answer to record, not a crash
            status, detail = -1, f"({type(exc).__name__}: {exc})"
        record.answer(kind, status, started, loop.time(), detail)
        await asyncio.sleep(think_s)


async def slow_client(host: str, port: int, record: Record, deadline: float) -> None:
    """POST a 100 kB body at 10 bytes a second until the server answers (408 after its read timeout)."""
    loop = asyncio.get_running_loop()
    while loop.time() < deadline:
        reader, writer = await asyncio.open_connection(host, port)
        started, status = loop.time(), None
        writer.write(b"POST /v1/predict HTTP/1.1\r\nHost: soak\r\nContent-Type: image/jpeg\r\n"
                     b"Content-Length: 100000\r\n\r\n")
        while status is None and loop.time() < deadline + READ_TIMEOUT_S:
            try:
                writer.write(TRICKLE)
                await writer.drain()
                line = await asyncio.wait_for(reader.readline(), 1.0)
                status = int(line.split()[1]) if line else -1
            except asyncio.TimeoutError:
                continue
            except OSError:
                status = -1
        writer.close()
        record.answer("slow", status if status is not None else -1, started, loop.time())


async def sample_rss(pid: int, record: Record, deadline: float) -> None:
    loop = asyncio.get_running_loop()
    while loop.time() < deadline:
        record.rss_mb[record.minute(loop.time())] = rss_mb(pid)
        await asyncio.sleep(RSS_EVERY_S)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def run_load(base: str, pid: int, seconds: float, clients: int, think_s: float) -> Record:
    import httpx

    loop = asyncio.get_running_loop()
    record, pool, rng = Record(loop.time(), math.ceil(seconds / 60)), image_pool(), random.Random(26)
    deadline = record.started + seconds
    host, port = base.removeprefix("http://").rstrip("/").rsplit(":", 1)

    def valid(path="/v1/predict"):
        return path, {"files": [("files", item) for item in rng.sample(pool, rng.randint(1, 4))]}

    makers = [("valid", valid)] * clients + [
        ("explain", lambda: valid("/v1/predict?explain=true")),
        ("garbage", lambda: ("/v1/predict", garbage_request(rng, pool))),
        ("oversized", lambda: ("/v1/predict", oversized_request(rng)))]
    async with httpx.AsyncClient(base_url=base, timeout=120) as http:
        await asyncio.gather(*(sender(http, record, kind, deadline, think_s, make) for kind, make in makers),
                             *(slow_client(host, int(port), record, deadline) for _ in range(SLOW_CLIENTS)),
                             sample_rss(pid, record, deadline))
    return record


def report(record: Record) -> list[str]:
    """Print the per-minute table; return the failed checks."""
    minutes = sorted(record.latencies)
    statuses = sorted({status for counts in record.statuses.values() for status in counts})
    print("minute | requests | p50 ms | p99 ms | " + " | ".join(f"HTTP {status}" for status in statuses)
          + " | server RSS MB")
    print("|".join(["---"] * (5 + len(statuses))))
    p99 = {}
    for minute in minutes:
        p50, p99[minute] = np.percentile(np.array(record.latencies[minute]) * 1000, [50, 99])
        counts = record.statuses[minute]
        print(f"{minute} | {sum(counts.values()):,} | {p50:.0f} | {p99[minute]:.0f} | "
              + " | ".join(f"{counts.get(status, 0):,}" for status in statuses)
              + f" | {record.rss_mb.get(minute, float('nan')):.0f}")
    return checks(record, minutes, p99)


def checks(record: Record, minutes: list[int], p99: dict[int, float]) -> list[str]:
    failed = [f"{count} answers with HTTP {status}" for minute in minutes
              for status, count in record.statuses[minute].items() if status >= 500]
    failed += record.unexpected[:10]
    if len(minutes) > 1:
        growth = record.rss_mb[minutes[-1]] / record.rss_mb[minutes[0]] - 1
        print(f"RSS growth after the first minute: {growth:+.1%} (limit {RSS_GROWTH_LIMIT:.0%})")
        failed += [f"RSS grew {growth:.1%}"] if growth >= RSS_GROWTH_LIMIT else []
        worst = max(minutes[1:], key=lambda minute: p99[minute])
        print(f"worst p99: minute {worst}, {p99[worst] / p99[minutes[0]]:.2f}x minute 1's (limit {P99_FACTOR:g}x)")
        failed += [f"p99 of minute {worst} over {P99_FACTOR:g}x minute 1's"] if p99[worst] > P99_FACTOR * p99[
            minutes[0]] else []
    return failed


def soak(args: argparse.Namespace) -> int:
    """Run the soak against a fresh server; the exit code: 0 when every check passes."""
    model = ["--checkpoint", str(args.checkpoint)] if args.checkpoint else []  # none: the built-in detector
    serve_args = [*model, "--cpu", "--quiet", "--max-upload-mb", str(MAX_UPLOAD_MB), "--read-timeout",
                  str(READ_TIMEOUT_S)]
    print(f"soak: {args.soak:g} s against `vitdetect serve {' '.join(serve_args)}` on 127.0.0.1; "
          f"{args.soak_clients} valid-image clients, 1 explain, 1 garbage, 1 oversized, {SLOW_CLIENTS} slow "
          f"(10 bytes/s); load average {', '.join(f'{v:.1f}' for v in os.getloadavg())}")
    with tempfile.TemporaryDirectory() as scratch, server_process(serve_args, Path(scratch) / "server.log") as server:
        record = asyncio.run(run_load(server.url, server.pid, args.soak, args.soak_clients, args.soak_think_ms / 1e3))
    failed = report(record)
    print(f"slow clients: answered 408 after the server's --read-timeout {READ_TIMEOUT_S} s (default 60 s)")
    print("checks: " + ("all passed (no 5xx, RSS, p99)" if not failed else "FAILED: " + "; ".join(failed)))
    return 1 if failed else 0
