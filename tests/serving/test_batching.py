"""The micro-batcher on its own: requests share calls, sizes are bounded, order and errors stay per request."""

from __future__ import annotations

import asyncio
import threading

import pytest

from kftune.serving.batching import MicroBatcher


class Recorder:
    def __init__(self, fail_on: str | None = None, delay: float = 0.0):
        self.calls: list[list[str]] = []
        self.threads: set[str] = set()
        self.fail_on = fail_on
        self.delay = delay

    def __call__(self, texts: list[str]) -> list[str]:
        import time

        self.calls.append(list(texts))
        self.threads.add(threading.current_thread().name)
        if self.delay:
            time.sleep(self.delay)
        if self.fail_on is not None and self.fail_on in texts:
            raise RuntimeError(f"cannot predict {self.fail_on!r}")
        return [t.upper() for t in texts]


def run(coro):
    return asyncio.run(coro)


def test_concurrent_requests_share_a_call_and_get_their_own_results_in_order():
    rec = Recorder()
    batcher = MicroBatcher(rec, max_batch_size=64, window_s=0.05)

    async def main():
        return await asyncio.gather(*(batcher.submit([f"a{i}", f"b{i}"]) for i in range(10)))

    results = run(main())
    batcher.close()
    assert results == [[f"A{i}", f"B{i}"] for i in range(10)]
    assert len(rec.calls) < 10 and sum(len(c) for c in rec.calls) == 20
    assert all(name.startswith("kftune-infer") for name in rec.threads)  # off the event loop


def test_batches_never_exceed_the_maximum_and_a_large_request_runs_alone():
    rec = Recorder()
    batcher = MicroBatcher(rec, max_batch_size=4, window_s=0.05)

    async def main():
        small = [batcher.submit([f"t{i}"]) for i in range(9)]
        big = batcher.submit([f"big{i}" for i in range(7)])
        return await asyncio.gather(*small, big)

    results = run(main())
    batcher.close()
    assert results[-1] == [f"BIG{i}" for i in range(7)]
    assert [r[0] for r in results[:-1]] == [f"T{i}" for i in range(9)]
    for call in rec.calls:
        assert len(call) <= 4 or all(t.startswith("big") for t in call)


def test_an_error_fails_only_the_requests_of_its_batch():
    rec = Recorder(fail_on="bad")
    batcher = MicroBatcher(rec, max_batch_size=8, window_s=0.0)

    async def main():
        with pytest.raises(RuntimeError, match="cannot predict 'bad'"):
            await batcher.submit(["bad"])
        return await batcher.submit(["good"])

    assert run(main()) == ["GOOD"]
    batcher.close()


def test_a_lone_request_waits_at_most_the_window():
    rec = Recorder()
    batcher = MicroBatcher(rec, max_batch_size=32, window_s=0.0)
    assert run(batcher.submit(["x"])) == ["X"]
    assert run(batcher.submit([])) == []
    batcher.close()


@pytest.mark.parametrize("kwargs", [{"max_batch_size": 0}, {"window_s": -1.0}])
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        MicroBatcher(lambda t: t, **kwargs)
