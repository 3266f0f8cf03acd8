"""API fuzzing: Schemathesis generates requests from a real `vitdetect serve`'s own /openapi.json and fails on any
5xx, undocumented status code or content type, or response that breaks the schema; plus regression tests for what
it (and reading the schema beside it) found. The error statuses are explained in docs/guide/serving-errors.md."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from conftest import random_checkpoint

pytest.importorskip("fastapi", reason="needs the serve extra: pip install -e '.[serve]'")
pytest.importorskip("schemathesis", reason="needs the dev extra: pip install -e '.[dev]'")
from serve_support import serving  # noqa: E402
from vitdetect import Detector  # noqa: E402
from vitdetect.serve.process import server_process  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("single_thread")]
SEED = 26
MAX_EXAMPLES = 500  # per operation and phase; with the coverage phase and the method probes: 500+ requests in all
MIN_REQUESTS = 500
# The page is not part of the API schema (/docs shows the API alone); Schemathesis fuzzes it from this addition.
PAGE = {"/": "text/html", "/static/app.js": "text/javascript", "/static/style.css": "text/css"}
# A schema-valid body may hold bytes that are no image: "nothing readable" (422) is the documented answer for those.
# Any other refusal of schema-valid data (400, 413, 415) stays a failure.
CONFIG = """
[checks.positive_data_acceptance]
expected-statuses = ["2xx", "422"]
"""
READ_TIMEOUT_S = 2
ACCESS_LOG = re.compile(r'"([A-Z]+) (\S+) HTTP/1\.1" (\d{3})')


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return random_checkpoint(tmp_path_factory.mktemp("fuzz-api") / "best_model.pth")


@pytest.fixture(scope="module")
def served(checkpoint, tmp_path_factory):
    """A real server with its access log on (the log counts the requests Schemathesis sent)."""
    log = tmp_path_factory.mktemp("fuzz-api-log") / "server.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # a micro model on a shared machine: no OpenMP spin-waits
    args = ["--checkpoint", str(checkpoint), "--cpu", "--read-timeout", str(READ_TIMEOUT_S)]
    with server_process(args, log, env) as server:
        yield server.url, log


def schema_with_page(base: str) -> dict:
    with urllib.request.urlopen(base + "openapi.json", timeout=60) as response:
        schema = json.load(response)
    for path, media_type in PAGE.items():
        schema["paths"][path] = {"get": {"responses": {"200": {
            "description": "The web page", "content": {media_type: {"schema": {"type": "string"}}}}}}}
    return schema


def run_schemathesis(base: str, work: Path) -> dict:
    """`schemathesis run` over every operation, every check, examples + coverage + fuzzing: its JSON report."""
    (work / "schema.json").write_text(json.dumps(schema_with_page(base)))
    (work / "schemathesis.toml").write_text(CONFIG)
    report = work / "report.json"
    command = [sys.executable, "-c", "from schemathesis.cli import schemathesis; schemathesis()",
               "--config-file", str(work / "schemathesis.toml"), "run", str(work / "schema.json"), "--url", base,
               "--checks", "all", "--seed", str(SEED), "--max-examples", str(MAX_EXAMPLES), "--workers", "1",
               "--generation-database", "none", "--continue-on-failure", "--request-timeout", "60",
               "--report", "json", "--report-json-path", str(report), "--no-color"]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=work)
    assert report.is_file(), completed.stdout[-3000:] + completed.stderr[-3000:]
    print(completed.stdout[completed.stdout.find("SUMMARY") - 40:])  # shown with -s: the run's summary
    return {**json.loads(report.read_text()), "output": completed.stdout}


def requests_by_status(log: Path) -> Counter[tuple[str, str, int]]:
    """(method, path, status) -> count, from the server's access log."""
    return Counter((method, path.split("?")[0], int(status))
                   for method, path, status in ACCESS_LOG.findall(log.read_text(errors="replace")))


def test_schemathesis_finds_no_failure_in_500_plus_requests(served, tmp_path):
    base, log = served
    report = run_schemathesis(base, tmp_path)
    assert report["failures"] == [] and report["errors"] == [], report["output"][-6000:]
    assert report["operations"]["tested"] == 3 + len(PAGE) and report["exit_code"] == 0
    counts = requests_by_status(log)
    print(f"{sum(counts.values())} requests: {dict(counts)}")
    assert sum(counts.values()) >= MIN_REQUESTS, counts
    assert not [key for key in counts if key[2] >= 500], counts
    statuses = {status for method, path, status in counts if path == "/v1/predict" and method == "POST"}
    assert {200, 400, 415, 422} <= statuses, counts  # the fuzzing reached the error paths, not only 200


def test_the_schema_says_what_the_server_accepts(served):
    """Schemathesis found schema-valid requests refused: an empty `files` array and an empty raw body (both 422).
    The schema now asks for at least one file and a non-empty body."""
    body = json.loads(urllib.request.urlopen(served[0] + "openapi.json", timeout=60).read())["paths"]["/v1/predict"]
    content = body["post"]["requestBody"]["content"]
    assert content["multipart/form-data"]["schema"]["properties"]["files"]["minItems"] == 1
    assert content["image/*"]["schema"]["minLength"] == 1 == content["application/octet-stream"]["schema"]["minLength"]


def test_explain_without_explanations_is_the_documented_501(checkpoint):
    """?explain=true on a server that cannot explain (its method's package, grad-cam or captum, not installed)
    answered 400 where the schema says 501."""
    detector = Detector.from_checkpoint(checkpoint)
    detector.explanations_unavailable = lambda: "grad-cam is not installed"
    with serving(detector, checkpoint) as client:
        response = client.post("/v1/predict?explain=true", content=b"x", headers={"content-type": "image/png"})
        documented = client.get("/openapi.json").json()["paths"]["/v1/predict"]["post"]["responses"]
    assert response.status_code == 501 and "501" in documented
    assert response.json() == {"error": "this server gives no explanations: grad-cam is not installed"}


def test_a_client_trickling_its_body_gets_408_when_the_read_timeout_passes(served):
    """uvicorn has no body read timeout: a client sending a byte now and then held its request forever."""
    host, port = served[0].removeprefix("http://").rstrip("/").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as client:
        client.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                       b"Content-Length: 1000\r\n\r\n")
        started, answer = time.monotonic(), b""
        while not answer.endswith(b"}") and time.monotonic() - started < 20:  # until the JSON error has come
            client.sendall(b"\xff")
            client.settimeout(0.3)
            try:
                answer += client.recv(65536)
            except TimeoutError:
                continue
    assert answer.startswith(b"HTTP/1.1 408 ") and READ_TIMEOUT_S <= time.monotonic() - started < READ_TIMEOUT_S + 10
    assert b"request body not received within 2 s" in answer
