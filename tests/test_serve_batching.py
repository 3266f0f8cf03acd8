"""The batching queue: requests arriving together are scored in one model call, on a thread off the event loop."""

from __future__ import annotations

import asyncio
import threading

import pytest

pytest.importorskip("fastapi", reason="needs the serve extra: pip install -e '.[serve]'")
from serve_support import multipart, serving  # noqa: E402
from vitdetect import Detector  # noqa: E402
from vitdetect.serve.batching import BatchingQueue  # noqa: E402


def test_the_model_runs_off_the_event_loop(checkpoint, images):
    """While one request's batch is in the model, other requests (here a health probe) are answered."""
    detector = Detector.from_checkpoint(checkpoint)
    started, release = threading.Event(), threading.Event()
    original = detector.predict

    def slow_predict(sources, unsure):
        started.set()
        assert release.wait(30)
        return original(sources, unsure)

    detector.predict = slow_predict
    with serving(detector, checkpoint) as client:
        answers = []
        request = threading.Thread(target=lambda: answers.append(client.post("/v1/predict", files=multipart(images))))
        request.start()
        assert started.wait(30)
        assert client.get("/healthz").status_code == 200 and not answers  # answered while the model is busy
        release.set()
        request.join(30)
    assert answers[0].status_code == 200


def test_requests_arriving_together_are_scored_together(checkpoint, images):
    detector = Detector.from_checkpoint(checkpoint)
    batches = []
    original = detector.predict
    detector.predict = lambda sources, unsure: batches.append(len(sources)) or original(sources, unsure)
    expected = {name: want.p_fake for name, want in zip(images, original(list(images.values())), strict=True)}
    with serving(detector, checkpoint, max_wait_ms=1500, max_batch=64) as client:
        answers = {}

        def send(name):
            answers[name] = client.post("/v1/predict", files=multipart({name: images[name]}))

        threads = [threading.Thread(target=send, args=(name,)) for name in images]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    assert sum(batches) == len(images) and len(batches) < len(images), batches
    for name, response in answers.items():
        assert response.json()["results"][0]["p_fake"] == pytest.approx(expected[name], abs=1e-6)


def test_batching_queue_combines_splits_and_reports_failures():
    async def scenario():
        calls = []

        def score(items):
            calls.append(list(items))
            if "boom" in items:
                raise ValueError("boom")
            return [item * 2 for item in items]

        queue = BatchingQueue(score, max_batch=5, max_wait_s=0.2)
        queue.start()
        try:
            together = await asyncio.gather(queue.submit([1, 2]), queue.submit([3]), queue.submit([4, 5, 6]),
                                            queue.submit([7]))
            alone = await queue.submit(list(range(9)))  # larger than max_batch: scored alone, not split
            with pytest.raises(ValueError, match="boom"):
                await queue.submit(["boom"])
            after = await queue.submit([10])
        finally:
            await queue.stop()
        return calls, together, alone, after

    calls, together, alone, after = asyncio.run(scenario())
    assert together == [[2, 4], [6], [8, 10, 12], [14]]
    assert calls[:2] == [[1, 2, 3], [4, 5, 6, 7]]  # the third request did not fit: it opened the next batch
    assert alone == [2 * i for i in range(9)] and calls[2] == list(range(9)) and after == [20]
