"""Micro-batching: concurrent requests share one model call.

A request hands its texts to :meth:`MicroBatcher.submit` and awaits their results. One worker task takes
the first waiting request, then keeps collecting requests until ``max_batch_size`` texts are gathered or
``window_s`` has passed since the first one, and runs the whole batch in a single worker thread, off the
event loop (the loop keeps accepting requests meanwhile, and they form the next batch). A request larger
than ``max_batch_size`` runs as one call of its own. Results go back to each request in order; an error
in a batch call fails the requests of that batch only.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from dataclasses import dataclass, field
from typing import Callable, Generic, Sequence, TypeVar

R = TypeVar("R")


@dataclass
class _Pending(Generic[R]):
    texts: Sequence[str]
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)


class MicroBatcher(Generic[R]):
    """Batch ``predict(texts) -> results`` calls across concurrent requests (see the module docstring).

    ``on_batch(size, seconds)`` is called after every model call (for metrics).
    """

    def __init__(self, predict: Callable[[list[str]], list[R]], *, max_batch_size: int = 32,
                 window_s: float = 0.005, on_batch: Callable[[int, float], None] | None = None):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
        if window_s < 0:
            raise ValueError(f"window_s must be >= 0, got {window_s}")
        self.predict = predict
        self.max_batch_size = max_batch_size
        self.window_s = window_s
        self.on_batch = on_batch
        # one thread: batches run one after another (torch already uses every core inside one call)
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="kftune-infer")
        self._queue: asyncio.Queue[_Pending[R]] | None = None
        self._worker: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def submit(self, texts: Sequence[str]) -> list[R]:
        """The results for ``texts``, in order, computed in a batch with other waiting requests."""
        if not texts:
            return []
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # first use, or a new event loop (tests)
            self._loop, self._queue = loop, asyncio.Queue()
            self._worker = loop.create_task(self._run(), name="kftune-micro-batcher")
        future: asyncio.Future = loop.create_future()
        assert self._queue is not None
        self._queue.put_nowait(_Pending(list(texts), future))
        return await future

    async def _run(self) -> None:
        queue = self._queue
        assert queue is not None
        loop = asyncio.get_running_loop()
        carry: _Pending[R] | None = None
        while True:
            first = carry if carry is not None else await queue.get()
            carry = None
            batch = [first]
            size = len(first.texts)
            deadline = loop.time() + self.window_s
            while size < self.max_batch_size:
                try:
                    nxt = queue.get_nowait()
                except asyncio.QueueEmpty:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    try:
                        nxt = await asyncio.wait_for(queue.get(), remaining)
                    except asyncio.TimeoutError:
                        break
                if size + len(nxt.texts) > self.max_batch_size:
                    carry = nxt  # the next batch starts with it
                    break
                batch.append(nxt)
                size += len(nxt.texts)
            live = [p for p in batch if not p.future.done()]  # a cancelled request (client gone) is dropped
            if not live:
                continue
            texts = [t for p in live for t in p.texts]
            started = time.perf_counter()
            try:
                results = await loop.run_in_executor(self._executor, self.predict, texts)
            except Exception as exc:  # noqa: BLE001 - handed to the requests of this batch
                for p in live:
                    if not p.future.done():
                        p.future.set_exception(exc)
                continue
            if self.on_batch is not None:
                self.on_batch(len(texts), time.perf_counter() - started)
            start = 0
            for p in live:
                part = results[start:start + len(p.texts)]
                start += len(p.texts)
                if not p.future.done():
                    p.future.set_result(part)

    def close(self) -> None:
        """Stop the worker and the inference thread."""
        if self._worker is not None:
            self._worker.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)
