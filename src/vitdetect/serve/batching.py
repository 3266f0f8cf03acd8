"""A small batching queue: requests that arrive together are scored in one model call, off the event loop.

Each request submits its images and awaits its own results. One worker task takes the first waiting
request, adds those that arrive within `max_wait` of it (or have been waiting while the model was busy)
up to `max_batch` images, and runs the batch on the single model thread. The event loop stays free
meanwhile: uploads are read and other routes answered while the model works.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


@dataclass
class _Job(Generic[Item]):
    items: Sequence[Item]
    arrived: float
    future: asyncio.Future


class BatchingQueue(Generic[Item, Result]):
    """score_batch(items) -> one result per item, called on one worker thread with the items of
    several requests at once (a request larger than max_batch is scored alone, never split)."""

    def __init__(self, score_batch: Callable[[list[Item]], Sequence[Result]], max_batch: int, max_wait_s: float):
        self.score_batch = score_batch
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vitdetect-model")
        self._waiting: asyncio.Queue[_Job] | None = None
        self._held: _Job | None = None  # the job that did not fit into the last batch: it opens the next one
        self._worker: asyncio.Task | None = None

    def start(self) -> None:
        """Start the worker on the running event loop (the app's lifespan calls this)."""
        self._waiting = asyncio.Queue()
        self._worker = asyncio.get_running_loop().create_task(self._score_forever())

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        self.model_thread.shutdown(wait=True)

    async def submit(self, items: Sequence[Item]) -> list[Result]:
        """The results for these items, in order, once the batch they joined has been scored."""
        if self._waiting is None:
            raise RuntimeError("BatchingQueue.start() has not been called")
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._waiting.put_nowait(_Job(items, loop.time(), future))
        return await future

    async def run_on_model_thread(self, function: Callable[..., Any], *args: Any) -> Any:
        """Run other model work (explanations) on the model thread, between batches."""
        return await asyncio.get_running_loop().run_in_executor(self.model_thread, function, *args)

    async def _score_forever(self) -> None:
        while True:
            jobs = [job for job in await self._next_batch() if not job.future.done()]  # gone clients drop out
            items = [item for job in jobs for item in job.items]
            try:
                results = list(await self.run_on_model_thread(self.score_batch, items)) if items else []
            except Exception as exc:  # noqa: BLE001 - the requests answer it; the worker keeps serving
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            start = 0
            for job in jobs:
                if not job.future.done():
                    job.future.set_result(results[start:start + len(job.items)])
                start += len(job.items)

    async def _next_batch(self) -> list[_Job]:
        assert self._waiting is not None
        first, self._held = self._held or await self._waiting.get(), None
        batch, size = [first], len(first.items)
        deadline = first.arrived + self.max_wait_s
        loop = asyncio.get_running_loop()
        while size < self.max_batch:
            remaining = deadline - loop.time()
            try:
                job = (self._waiting.get_nowait() if remaining <= 0
                       else await asyncio.wait_for(self._waiting.get(), remaining))
            except (asyncio.QueueEmpty, asyncio.TimeoutError):
                break
            if size + len(job.items) > self.max_batch:
                self._held = job
                break
            batch.append(job)
            size += len(job.items)
        return batch
