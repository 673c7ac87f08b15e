"""Micro-batching: concurrent requests share one model call.

A request hands its texts to :meth:`MicroBatcher.submit` and awaits their results. Once one of ``workers``
inference threads is free, a collector task takes the first waiting request, then keeps collecting requests
until ``max_batch_size`` texts are gathered or ``window_s`` has passed since the first one, and runs the whole
batch in that thread, off the event loop (the loop keeps accepting requests meanwhile, and they form the next
batch). The window is waited only under load, when the previous batch was at least half full: then more
requests are on their way, and fuller batches cost less per text; a lone client never waits for company. A request larger
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
                 window_s: float = 0.005, workers: int = 1, on_batch: Callable[[int, float], None] | None = None):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        if window_s < 0:
            raise ValueError(f"window_s must be >= 0, got {window_s}")
        self.predict = predict
        self.max_batch_size = max_batch_size
        self.window_s = window_s
        self.on_batch = on_batch
        # ``workers`` threads (default one: batches run one after another, torch uses the cores inside a call;
        # two let one batch tokenize while another runs the network, which the GIL-free parts allow)
        self.workers = workers
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kftune-infer")
        self._running: set[asyncio.Task] = set()
        self._last_size = 0
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
        slots = asyncio.Semaphore(self.workers)
        carry: _Pending[R] | None = None
        while True:
            await slots.acquire()  # a batch is formed only when a worker can take it: it grows meanwhile
            first = carry if carry is not None else await queue.get()
            carry = None
            batch = [first]
            size = len(first.texts)
            # wait for company only under load: when the previous batch was at least half full, more requests
            # are on their way (their clients were just answered); a lone client never waits
            window = self.window_s if self._last_size * 2 >= self.max_batch_size else 0.0
            deadline = loop.time() + window
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
            self._last_size = sum(len(p.texts) for p in live)
            if not live:
                slots.release()
                continue
            task = loop.create_task(self._execute(live, slots))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _execute(self, live: list[_Pending[R]], slots: asyncio.Semaphore) -> None:
        loop = asyncio.get_running_loop()
        texts = [t for p in live for t in p.texts]
        started = time.perf_counter()
        try:
            results = await loop.run_in_executor(self._executor, self.predict, texts)
        except Exception as exc:  # noqa: BLE001 - handed to the requests of this batch
            for p in live:
                if not p.future.done():
                    p.future.set_exception(exc)
            return
        finally:
            slots.release()
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
        for task in list(self._running):
            task.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)
