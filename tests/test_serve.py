"""`vitdetect serve`'s API through FastAPI's TestClient: same P(FAKE) as Detector.predict, limits and bad input
answered as clean JSON errors (never a 500 with a traceback), nothing written to disk; the CLI's one-line errors."""

from __future__ import annotations

import base64
import io
import os
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import run_main, user_error

pytest.importorskip("fastapi", reason="needs the serve extra: pip install -e '.[serve]'")
from serve_support import multipart, serving  # noqa: E402
from vitdetect import Detector  # noqa: E402
from vitdetect.models.checkpoint import save_checkpoint  # noqa: E402

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | getattr(os, "O_TMPFILE", 0)
opened: list[tuple[str, object]] | None = None  # while a test records: every file opened in this process


def record_opens(event: str, args: tuple) -> None:
    if event == "open" and opened is not None:
        path, mode, flags = args
        opened.append((str(path), mode if mode is not None else flags))


sys.addaudithook(record_opens)


def writes(records):
    return [(path, how) for path, how in records
            if (isinstance(how, str) and any(c in how for c in "wax+")) or (isinstance(how, int) and how & WRITE_FLAGS)]


@pytest.fixture(scope="module")
def detector(checkpoint):
    return Detector.from_checkpoint(checkpoint)


@pytest.fixture(scope="module")
def client(detector, checkpoint):
    with serving(detector, checkpoint) as client:
        yield client


def assert_json_error(response, status: int, *fragments: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert isinstance(body["error"], str) and "Traceback" not in response.text
    for fragment in fragments:
        assert fragment in body["error"], body["error"]
    return body


def test_predictions_equal_detector_predict_on_the_same_bytes(client, detector, images):
    response = client.post("/v1/predict", files=multipart(images))
    assert response.status_code == 200, response.text
    body = response.json()
    expected = detector.predict(list(images.values()))
    assert body["threshold"] == detector.threshold
    assert [result["name"] for result in body["results"]] == list(images)
    for result, want in zip(body["results"], expected, strict=True):
        assert result["label"] == want.label and result["error"] is None and result["heatmap_png"] is None
        assert abs(result["p_fake"] - want.p_fake) <= 1e-6 and abs(result["confidence"] - want.confidence) <= 1e-6
    assert {result["label"] for result in body["results"]} == {"REAL", "FAKE"}  # not a constant answer


def test_raw_image_body_and_the_file_alias(client, detector, images):
    name, data = next(iter(images.items()))
    want = detector.predict([data])[0]
    for response in (client.post("/v1/predict", content=data, headers={"content-type": "image/jpeg"}),
                     client.post("/v1/predict", content=data, headers={"content-type": "application/octet-stream"}),
                     client.post("/v1/predict", files=multipart({name: data}, field="file"))):
        result, = response.json()["results"]
        assert response.status_code == 200 and result["p_fake"] == pytest.approx(want.p_fake, abs=1e-6)
    assert client.post("/v1/predict", content=data, headers={"content-type": "image/jpeg"}).json()[
        "results"][0]["name"] == "body"


def test_unreadable_files_are_error_rows_and_the_others_are_judged(client, images):
    good = next(iter(images.values()))
    files = {"truncated.jpg": good[:300], "ok.jpg": good, "empty.png": b"", "notes.txt": b"just text\n",
             "fake-header.png": b"\x89PNG\r\n\x1a\n" + b"\x00" * 64}
    response = client.post("/v1/predict", files=multipart(files))
    assert response.status_code == 200, response.text
    results = {result["name"]: result for result in response.json()["results"]}
    assert results["ok.jpg"]["label"] in {"REAL", "FAKE"} and results["ok.jpg"]["error"] is None
    assert results["empty.png"]["error"] == "empty file"
    assert "not an image" in results["notes.txt"]["error"]
    for name in ("truncated.jpg", "empty.png", "notes.txt", "fake-header.png"):
        assert results[name]["error"] and results[name]["label"] is None and results[name]["p_fake"] is None


def test_nothing_readable_is_422_with_the_reason_per_file(client):
    body = assert_json_error(client.post("/v1/predict", files=multipart({"a.jpg": b"", "b.jpg": b"GIF89a..."})),
                             422, "no uploaded file is an image")
    assert [result["error"] for result in body["results"]][0] == "empty file"
    assert_json_error(client.post("/v1/predict", content=b"", headers={"content-type": "image/png"}), 422)


def test_size_limit_413_from_content_length_and_while_reading(client, images):
    big = os.urandom(1_100_000)
    assert_json_error(client.post("/v1/predict", files=multipart({"big.jpg": big})), 413, "at most 1 MB")
    assert_json_error(client.post("/v1/predict", content=big, headers={"content-type": "image/jpeg"}), 413)

    def chunked():  # no Content-Length: the limit must hold while the body arrives
        for start in range(0, len(big), 65536):
            yield big[start:start + 65536]

    response = client.post("/v1/predict", content=chunked(), headers={"content-type": "image/jpeg"})
    assert "content-length" not in response.request.headers
    assert_json_error(response, 413, "request too large")
    assert_json_error(client.post("/v1/predict", content=b"x", headers={"content-type": "image/jpeg",
                                                                        "content-length": "abc"}), 400)
    assert client.post("/v1/predict", files=multipart(images)).status_code == 200  # still serving


def test_too_many_files_is_413(client, images):
    data = next(iter(images.values()))
    files = [("files", (f"{index}.jpg", data, "image/jpeg")) for index in range(9)]
    assert_json_error(client.post("/v1/predict", files=files), 413, "too many files", "at most 8")
    assert client.post("/v1/predict", files=files[:8]).status_code == 200


@pytest.mark.parametrize("content_type", ["application/json", "text/plain", "application/x-www-form-urlencoded",
                                          None])
def test_wrong_content_type_is_415(client, content_type):
    headers = {"content-type": content_type} if content_type else {}
    assert_json_error(client.post("/v1/predict", content=b'{"image": "x"}', headers=headers), 415,
                      "unsupported content type", "multipart/form-data")


def test_missing_field_and_malformed_multipart_are_clean_errors(client, images):
    assert_json_error(client.post("/v1/predict", data={"image": "x"}, files=multipart({"a": b"1"}, field="img")),
                      422, "no images in the request", "'files'")
    assert_json_error(client.post("/v1/predict", content=b"--x\r\n", headers={
        "content-type": "multipart/form-data"}), 400, "without a boundary")
    data = next(iter(images.values()))
    cut = (b"--b\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a.jpg\"\r\n\r\n" + data)
    assert_json_error(client.post("/v1/predict", content=cut, headers={
        "content-type": "multipart/form-data; boundary=b"}), 400, "malformed multipart")
    assert_json_error(client.post("/v1/predict", content=b"garbage", headers={
        "content-type": "multipart/form-data; boundary=b"}), 400, "malformed multipart")


def test_bad_query_unknown_route_and_method_are_json(client, images):
    assert_json_error(client.post("/v1/predict?explain=maybe", files=multipart(images)), 422, "explain")
    assert_json_error(client.get("/v1/nothing"), 404)
    assert_json_error(client.get("/v1/predict"), 405)


def test_explain_gives_the_detectors_heatmap_per_readable_image(client, detector, images):
    response = client.post("/v1/predict?explain=true", files=multipart(images))
    results = response.json()["results"]
    assert response.status_code == 200 and client.get("/v1/model").json()["explanations"] is True
    for result in results:
        if result["error"] is None:
            heatmap = Image.open(io.BytesIO(base64.b64decode(result["heatmap_png"])))
            assert heatmap.format == "PNG" and heatmap.size == (32, 32)  # the stored image size
        else:
            assert result["heatmap_png"] is None


def test_explain_returns_a_png_heatmap_per_readable_image(checkpoint, images):
    class ExplainingDetector(Detector):
        def explain(self, sources):
            return [np.outer(np.arange(4), np.ones(6)) + index for index, _ in enumerate(sources)]

    good = dict(list(images.items())[:2])
    with serving(ExplainingDetector.from_checkpoint(checkpoint), checkpoint) as client:
        assert client.get("/v1/model").json()["explanations"] is True
        response = client.post("/v1/predict?explain=true", files=multipart({**good, "broken.jpg": b"x"}))
    results = response.json()["results"]
    assert response.status_code == 200 and results[2]["heatmap_png"] is None
    heatmap = Image.open(io.BytesIO(base64.b64decode(results[0]["heatmap_png"])))
    assert heatmap.format == "PNG" and heatmap.size == (6, 4)
    column = np.asarray(heatmap.convert("L"))[:, 0]
    assert column[0] < column[1] < column[2] < column[3]  # brighter where the map is larger


def test_unsure_query_fields_give_unsure_with_the_reason(client, checkpoint, images):
    from vitdetect import UnsureRule

    readable = dict(images)
    plain = client.post("/v1/predict", files=multipart(readable)).json()
    cut = float(np.median([result["confidence"] for result in plain["results"]]))
    body = client.post(f"/v1/predict?min_confidence={cut}", files=multipart(readable)).json()
    assert body["min_confidence"] == cut and body["check_stability"] is False
    for result, before in zip(body["results"], plain["results"], strict=True):
        assert result["p_fake"] == before["p_fake"] and result["confidence"] == before["confidence"]
        assert (result["label"] == "UNSURE") == (result["confidence"] < cut)
        assert (result["reason"] is not None) == (result["label"] == "UNSURE")
    assert "UNSURE" in {result["label"] for result in body["results"]}
    assert all(result["reason"] is None for result in plain["results"])

    threshold = float(np.median([result["p_fake"] for result in plain["results"]]))
    with Detector.from_checkpoint(checkpoint, threshold=threshold) as near, serving(near, checkpoint) as other:
        want = near.predict(list(readable.values()), UnsureRule(check_stability=True))
        body = other.post("/v1/predict?check_stability=true", files=multipart(readable)).json()
    assert body["check_stability"] is True
    assert [(r["label"], r["reason"]) for r in body["results"]] == [(w.label, w.reason) for w in want]
    assert any(w.label == "UNSURE" and " turns it " in w.reason for w in want)
    for bad in ("min_confidence=1.5", "min_confidence=nan", "check_stability=maybe"):
        assert_json_error(client.post(f"/v1/predict?{bad}", files=multipart(readable)), 422, bad.split("=")[0])


def test_requests_with_different_unsure_rules_share_a_batch_but_keep_their_own_rule(detector, images):
    from vitdetect import UnsureRule
    from vitdetect.serve.app import judge_batch

    data = list(images.values())[:4]
    plain, always = UnsureRule(), UnsureRule(min_confidence=1.0)
    judged = judge_batch(detector, [(data[0], plain), (data[1], always), (data[2], plain), (data[3], always)])
    assert [r.label == "UNSURE" for r in judged] == [False, True, False, True]
    assert [r.p_fake for r in judged] == pytest.approx([r.p_fake for r in detector.predict(data)], abs=1e-6)


def test_model_card_and_health(client, checkpoint, detector, evaluated_run, tmp_path):
    info = client.get("/v1/model").json()
    payload = detector.trained.checkpoint
    assert info["name"] == "scratch:vit-micro-32" and info["checkpoint"] == "best_model.pth"
    assert info["parameters"] == sum(p.numel() for p in detector.trained.model.parameters())
    assert info["threshold"] == 0.5 and info["temperature"] == 1.0 and info["positive_class"] == "FAKE"
    assert info["labels"] == {"0": "REAL", "1": "FAKE"} and info["epoch"] == payload["epoch"]
    assert info["metrics"] == pytest.approx(payload["metrics"]) and "accuracy" in info["metrics"]
    assert info["preprocessing"] == {"image_size": 32, "storage_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3}
    assert info["limits"] == {"max_files": 8, "max_upload_mb": 1.0, "max_batch": 64}
    assert client.get("/healthz").json() == {"status": "ok"}
    calibrated = tmp_path / "calibrated.pth"
    save_checkpoint(calibrated, {**torch.load(checkpoint, weights_only=True), "temperature": 1.7,
                                 "threshold": 0.8})
    with serving(Detector.from_checkpoint(calibrated), calibrated) as other:
        info = other.get("/v1/model").json()
    assert info["temperature"] == 1.7 and info["threshold"] == 0.8 and info["checkpoint"] == "calibrated.pth"


def test_openapi_documents_the_api(client):
    spec = client.get("/openapi.json").json()
    predict = spec["paths"]["/v1/predict"]["post"]
    assert set(predict["requestBody"]["content"]) == {"multipart/form-data", "image/*", "application/octet-stream"}
    assert {"200", "413", "415", "422"} <= set(predict["responses"])
    assert {"/v1/model", "/healthz"} <= set(spec["paths"]) and "/" not in spec["paths"]


def test_page_is_self_contained_and_request_paths_never_reach_the_disk(client):
    global opened
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for path, kind in (("/static/app.js", "text/javascript"), ("/static/style.css", "text/css")):
        response = client.get(path)
        assert response.status_code == 200 and response.headers["content-type"].startswith(kind)
        assert "http://" not in response.text and "https://" not in response.text  # no CDN: works offline
    assert "http" not in page.text.replace("http-equiv", "")
    opened = []
    try:
        for path in ("/static/../../../../etc/passwd", "/static/%2e%2e/%2e%2e/etc/passwd", "/static/index.html",
                     "/static/app.py", "/..%2f..%2fetc%2fpasswd", "//etc/passwd"):
            assert client.get(path).status_code == 404, path
    finally:
        records, opened = opened, None
    assert records == []


def test_nothing_is_written_to_disk_even_for_parts_over_starlettes_spool_size(detector, checkpoint, images):
    global opened
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (700, 700, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    noise.save(buffer, format="PNG")
    assert len(buffer.getvalue()) > 1024 * 1024  # Starlette's form parser would spool this part to a temp file
    with serving(detector, checkpoint, max_upload_mb=8, max_files=16) as client:
        client.post("/v1/predict", files=multipart(images))  # warm up: imports open files once
        opened = []
        try:
            response = client.post("/v1/predict", files=multipart({"noise.png": buffer.getvalue(), **images}))
        finally:
            records, opened = opened, None
    assert response.status_code == 200 and response.json()["results"][0]["label"] in {"REAL", "FAKE"}
    assert writes(records) == [], records


def test_an_unexpected_failure_is_a_json_500_without_traceback(checkpoint, images):
    broken = Detector.from_checkpoint(checkpoint)
    broken.predict = lambda sources, unsure: 1 / 0
    with serving(broken, checkpoint) as client:
        assert_json_error(client.post("/v1/predict", files=multipart(images)), 500, "internal server error")
        assert client.get("/healthz").status_code == 200  # the batching worker survived


def test_cli_missing_extra_busy_port_and_bad_flags_are_one_line(capsys, checkpoint, monkeypatch):
    import socket

    import vitdetect.serve

    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        line = user_error(run_main(capsys, "serve", "--checkpoint", checkpoint, "--port", port), 1)
    assert f"cannot listen on 127.0.0.1:{port}" in line
    assert "checkpoint not found" in user_error(run_main(capsys, "serve", "--checkpoint", "nowhere.pth",
                                                         "--port", "0"), 2)
    assert "--max-files" in user_error(run_main(capsys, "serve", "--max-files", "0"), 2)
    monkeypatch.setattr(vitdetect.serve, "missing_packages", lambda: ["fastapi"])
    line = user_error(run_main(capsys, "serve", "--checkpoint", checkpoint), 1)
    assert "fastapi" in line and "pip install \"vitdetect[serve]\"" in line
