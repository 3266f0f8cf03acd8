"""`vitdetect serve` under load: concurrent HTTP clients against a real server process on 127.0.0.1.

    python benchmarks/bench_serve.py --checkpoint results/best_model.pth
    python benchmarks/bench_serve.py --soak 600    # a 10-minute soak under mixed load instead (see _soak.py)

Starts `vitdetect serve --port 0 --quiet --cpu` (its own process), then --clients concurrent clients
(httpx, one asyncio loop) each send --requests requests of --per-request CIFAKE test images
(multipart, bodies built before the clock). Every answer is checked: status 200, one result per image,
in order, with the label and P(FAKE) that `Detector.predict` gives the same files in this process
(to 1e-5). The baseline is `vitdetect predict`'s batch rate: `Detector.predict` on the same images at
its default batch size, in this process, while the server idles. The sides alternate --repeats times
and each side's fastest run counts. Prints throughput, p50/p99 request latency, CPU time per image
(server + clients; the clients share the machine with the server), and last the ratio of served
images/s to the batch rate.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from _common import REAL_CIFAKE, print_ratio, timer
from _soak import soak
from vitdetect import Detector, Prediction
from vitdetect.config.commands import PredictSettings, ServeSettings
from vitdetect.data.dataset import list_split
from vitdetect.serve.process import server_process
from vitdetect.utils.distributed import make_accelerator

TARGET = 0.5
TOLERANCE = 1e-5
BOUNDARY = "vitdetect-bench-boundary"
HEADERS = {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=PredictSettings.model_fields["checkpoint"].default)
    parser.add_argument("--data-dir", type=Path, default=REAL_CIFAKE, help="CIFAKE root with test/{REAL,FAKE}")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=50, help="requests per client")
    parser.add_argument("--per-request", type=int, default=4, help="images per request")
    parser.add_argument("--pool", type=int, default=400, help="distinct test images the requests draw from")
    parser.add_argument("--max-batch", type=int, default=ServeSettings.model_fields["max_batch"].default)
    parser.add_argument("--max-wait-ms", type=float, default=ServeSettings.model_fields["max_wait_ms"].default)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--soak", type=float, metavar="SECONDS",
                        help="instead: a soak of this many seconds under mixed load, with a per-minute table")
    parser.add_argument("--soak-clients", type=int, default=4, help="soak: concurrent senders of valid images")
    parser.add_argument("--soak-think-ms", type=float, default=50.0, help="soak: pause between a client's requests")
    return parser.parse_args()


@dataclass
class Request:
    images: list[int]  # indices into the image pool
    body: bytes


def image_pool(data_dir: Path, count: int) -> list[Path]:
    paths = list_split(data_dir, "test").paths  # REAL then FAKE: an even spread takes both
    return [paths[i] for i in np.linspace(0, len(paths) - 1, min(count, len(paths))).round().astype(int)]


def client_requests(pool: list[Path], args: argparse.Namespace) -> list[list[Request]]:
    """Each client's requests: consecutive runs of per-request pool images, every client its own stretch."""
    data = [path.read_bytes() for path in pool]
    clients = []
    for client in range(args.clients):
        requests = []
        for number in range(args.requests):
            first = (client * args.requests + number) * args.per_request
            chosen = [(first + offset) % len(pool) for offset in range(args.per_request)]
            requests.append(Request(chosen, multipart_body([(pool[i].name, data[i]) for i in chosen])))
        clients.append(requests)
    return clients


def multipart_body(files: list[tuple[str, bytes]]) -> bytes:
    parts = [f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
             f"Content-Type: image/jpeg\r\n\r\n".encode() + data + b"\r\n" for name, data in files]
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


async def load(base: str, clients: list[list[Request]], pool: list[Path],
               expected: list[Prediction]) -> tuple[list[float], list[str]]:
    """Every client sends its requests one after another, all clients at once: (latencies in s, problems)."""
    import httpx

    latencies: list[float] = []
    problems: list[str] = []
    limits = httpx.Limits(max_connections=len(clients), max_keepalive_connections=len(clients))
    async with httpx.AsyncClient(base_url=base, timeout=300, limits=limits) as http:
        async def one_client(requests: list[Request]) -> None:
            loop = asyncio.get_running_loop()
            for request in requests:
                started = loop.time()
                response = await http.post("/v1/predict", content=request.body, headers=HEADERS)
                latencies.append(loop.time() - started)
                problems.extend(check(response, request.images, pool, expected))

        await asyncio.gather(*(one_client(requests) for requests in clients))
    return latencies, problems


def check(response, chosen: list[int], pool: list[Path], expected: list[Prediction]) -> list[str]:
    if response.status_code != 200:
        return [f"HTTP {response.status_code}: {response.text[:200]}"]
    results = response.json()["results"]
    if [r["name"] for r in results] != [pool[i].name for i in chosen]:
        return ["results out of order or missing"]
    return [f"{pool[i].name}: {r['label']} {r['p_fake']} vs {expected[i].label} {expected[i].p_fake}"
            for r, i in zip(results, chosen, strict=True)
            if r["label"] != expected[i].label or abs(r["p_fake"] - expected[i].p_fake) > TOLERANCE]


def process_cpu_seconds(pid: int) -> float:
    """CPU time (user + system, all threads) of another running process, from /proc (Linux); 0 elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    import torch

    args = parse_args()
    if args.soak:
        sys.exit(soak(args))
    pool = image_pool(args.data_dir, args.pool)
    clients = client_requests(pool, args)
    workload = [pool[i] for requests in clients for request in requests for i in request.images]
    detector = Detector.from_checkpoint(args.checkpoint, accelerator=make_accelerator(cpu=True))
    expected = detector.predict(pool)
    print(f"machine: {os.cpu_count()} CPU cores, {torch.get_num_threads()} torch threads, CPU only; "
          f"python {sys.version.split()[0]}, torch {torch.__version__}; load average "
          f"{', '.join(f'{v:.1f}' for v in os.getloadavg())}")
    print(f"checkpoint {args.checkpoint}; {len(pool)} distinct CIFAKE test images from {args.data_dir}")
    serve_args = ["--checkpoint", str(args.checkpoint), "--cpu", "--quiet", "--max-batch", str(args.max_batch),
                  "--max-wait-ms", str(args.max_wait_ms)]
    runs: dict[str, list[dict]] = {"predict": [], "served": []}
    with tempfile.TemporaryDirectory() as scratch, server_process(serve_args, Path(scratch) / "server.log") as server:
        detector.predict(workload[:256])  # warm-up, both sides
        asyncio.run(load(server.url, [requests[:2] for requests in clients], pool, expected))
        for _ in range(args.repeats):  # alternating: both sides share the machine's load
            with timer() as elapsed:
                detector.predict(workload)
            runs["predict"].append({**elapsed, "server_cpu": 0.0})
            server_cpu = process_cpu_seconds(server.pid)
            with timer() as elapsed:
                latencies, problems = asyncio.run(load(server.url, clients, pool, expected))
            runs["served"].append({**elapsed, "server_cpu": process_cpu_seconds(server.pid) - server_cpu,
                                   "latencies": latencies, "problems": problems})
    report(args, len(workload), {side: min(side_runs, key=lambda run: run["seconds"])
                                 for side, side_runs in runs.items()})


def report(args: argparse.Namespace, total: int, best: dict[str, dict]) -> None:
    served = best["served"]
    latencies, problems = served["latencies"], served["problems"]
    p50, p99 = np.percentile(np.array(latencies) * 1000, [50, 99])
    rate = {side: total / run["seconds"] for side, run in best.items()}
    cpu_ms = {side: (run["cpu_seconds"] + run["server_cpu"]) / total * 1000 for side, run in best.items()}
    print(f"\neach side's best of {args.repeats} alternating runs:")
    print(f"served: {args.clients} clients x {args.requests} requests x {args.per_request} images = {total:,} images "
          f"in {served['seconds']:.1f} s (server --max-batch {args.max_batch} --max-wait-ms {args.max_wait_ms:g})")
    print(f"  {len(latencies) / served['seconds']:,.1f} requests/s, {rate['served']:,.1f} images/s; request latency "
          f"p50 {p50:.0f} ms, p99 {p99:.0f} ms")
    print(f"  CPU time {cpu_ms['served']:.2f} ms per image (server {served['server_cpu']:.1f} s + clients "
          f"{served['cpu_seconds']:.1f} s)")
    print(f"  errors: {len(problems)} of {len(latencies):,} requests (every answer checked against "
          f"Detector.predict: status, names, order, label, P(FAKE) to {TOLERANCE:g})")
    for problem in problems[:5]:
        print(f"    {problem}")
    print(f"vitdetect predict's batch rate (Detector.predict on the same {total:,} images, batch size "
          f"{PredictSettings.model_fields['batch_size'].default}): {rate['predict']:,.1f} images/s; "
          f"CPU time {cpu_ms['predict']:.2f} ms per image")
    print_ratio("served images/s / vitdetect predict's images/s", rate["served"] / rate["predict"], TARGET)
    if problems:
        sys.exit(1)


if __name__ == "__main__":
    main()
