"""The dynamic batcher on its own: a fake model that records the batches it sees."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

pytest.importorskip("prometheus_client", reason="the serve extra is not installed")

from spiga.serve.batcher import Batcher  # noqa: E402
from spiga.serve.errors import ApiError  # noqa: E402


class FakeModel:
    """predict: landmark (i, 0) of a crop is its first pixel value, so rows can be traced."""

    def __init__(self, fail: bool = False, together: int = 0) -> None:
        self.fail = fail
        self.batches: list[int] = []
        self.seen: list[int] = []
        self.release = threading.Event()
        self.release.set()
        # with `together`, each pass waits until that many passes run at once (or fails)
        self.barrier = threading.Barrier(together, timeout=5) if together else None

    def predict(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.release.wait(5)
        if self.barrier is not None:
            self.barrier.wait()
        if self.fail:
            raise RuntimeError("model exploded")
        self.batches.append(len(crops))
        self.seen.extend(int(v) for v in crops[:, 0, 0, 0])
        marks = crops[:, 0, 0, 0].astype(np.float64)
        landmarks = np.repeat(marks[:, None, None], 2, axis=2)
        return landmarks, np.tile(marks[:, None], (1, 6))


def crops_marked(*marks: int) -> np.ndarray:
    crops = np.zeros((len(marks), 4, 4, 3), np.uint8)
    crops[:, 0, 0, 0] = marks
    return crops


def run(coro):
    return asyncio.run(coro)


def test_concurrent_requests_share_one_pass_and_get_their_own_rows():
    model = FakeModel()

    async def main():
        batcher = Batcher(model.predict, max_batch=64, max_wait_ms=200, max_queue=100)
        results = await asyncio.gather(*(batcher.submit(crops_marked(i, i + 100)) for i in range(10)))
        await batcher.stop()
        return results

    results = run(main())
    assert model.batches == [20]  # ten requests, two faces each: one forward pass
    for i, (landmarks, poses) in enumerate(results):
        assert landmarks.shape == (2, 1, 2) and poses.shape == (2, 6)
        assert landmarks[:, 0, 0].tolist() == [i, i + 100]


def test_max_batch_caps_a_pass_without_splitting_requests_that_fit():
    model = FakeModel()

    async def main():
        batcher = Batcher(model.predict, max_batch=5, max_wait_ms=200, max_queue=100)
        results = await asyncio.gather(*(batcher.submit(crops_marked(i, i)) for i in range(6)))
        big = await batcher.submit(crops_marked(*range(9)))  # larger than max_batch: alone, 5 faces a pass
        await batcher.stop()
        return results, big

    results, big = run(main())
    assert model.batches[:3] == [4, 4, 4]  # 2 + 2 fit in 5, a third request would not
    assert model.batches[3:] == [5, 4]
    assert [r[0][0, 0, 0] for r in results] == list(range(6))
    assert big[0][:, 0, 0].tolist() == list(range(9)) and big[1][:, 0].tolist() == list(range(9))


def test_a_large_request_answered_504_is_dropped_at_the_next_pass():
    model = FakeModel()
    model.release.clear()

    async def main():
        batcher = Batcher(model.predict, max_batch=2, max_wait_ms=0, max_queue=100)
        with pytest.raises(ApiError) as late:  # 10 faces in 5 passes; the first is held past the deadline
            await batcher.submit(crops_marked(*range(10)), deadline=asyncio.get_running_loop().time() + 0.2)
        queued_after = batcher.queued_faces
        model.release.set()
        after = await batcher.submit(crops_marked(42))
        await batcher.stop()
        return late.value, queued_after, after

    late, queued_after, after = run(main())
    assert late.code == "timeout"
    assert queued_after == 0  # the faces not yet in a pass left the queue at the answer
    assert model.seen == [0, 1, 42]  # the pass under way finished; the other four never ran
    assert after[0][0, 0, 0] == 42


def test_a_lone_request_waits_at_most_max_wait():
    model = FakeModel()

    async def main():
        batcher = Batcher(model.predict, max_batch=64, max_wait_ms=0, max_queue=10)
        first = await batcher.submit(crops_marked(1))
        second = await batcher.submit(crops_marked(2))
        await batcher.stop()
        return first, second

    first, second = run(main())
    assert model.batches == [1, 1]
    assert first[0][0, 0, 0] == 1 and second[0][0, 0, 0] == 2


def test_full_queue_is_refused_with_retry_after():
    model = FakeModel()
    model.release.clear()  # the model blocks until released: requests pile up

    async def main():
        batcher = Batcher(model.predict, max_batch=1, max_wait_ms=0, max_queue=2, model_threads=1)
        running = asyncio.ensure_future(batcher.submit(crops_marked(0)))
        await asyncio.sleep(0.05)  # taken by the (blocked) model: no longer queued
        queued = [asyncio.ensure_future(batcher.submit(crops_marked(i))) for i in (1, 2)]
        await asyncio.sleep(0.05)
        with pytest.raises(ApiError) as refused:
            await batcher.submit(crops_marked(3))
        model.release.set()
        done = await asyncio.gather(running, *queued)
        await batcher.stop()
        return refused.value, done

    refused, done = run(main())
    assert refused.code == "overloaded" and refused.status == 503
    assert int(refused.headers["Retry-After"]) >= 1
    assert [d[0][0, 0, 0] for d in done] == [0, 1, 2]


def test_timeout_drops_the_request_from_the_queue():
    model = FakeModel()
    model.release.clear()

    async def main():
        batcher = Batcher(model.predict, max_batch=1, max_wait_ms=0, max_queue=10, timeout=0.2)
        blocked = asyncio.ensure_future(batcher.submit(crops_marked(0)))
        await asyncio.sleep(0.05)
        with pytest.raises(ApiError) as late:
            await batcher.submit(crops_marked(1))
        queued_after = batcher.queued_faces
        model.release.set()
        with pytest.raises(ApiError):
            await blocked  # waited as long, also timed out
        after = await batcher.submit(crops_marked(2))
        await batcher.stop()
        return late.value, queued_after, after

    late, queued_after, after = run(main())
    assert late.code == "timeout" and late.status == 504
    assert queued_after == 0  # the timed-out request left the queue
    assert after[0][0, 0, 0] == 2
    assert model.seen == [0, 2]  # no pass ran for the dropped request


def test_model_errors_reach_every_request_of_the_batch():
    model = FakeModel(fail=True)

    async def main():
        batcher = Batcher(model.predict, max_batch=8, max_wait_ms=100, max_queue=10)
        results = await asyncio.gather(*(batcher.submit(crops_marked(i)) for i in range(3)),
                                       return_exceptions=True)
        await batcher.stop()
        return results

    results = run(main())
    assert all(isinstance(r, RuntimeError) and "exploded" in str(r) for r in results)


def test_several_model_threads_run_passes_at_once():
    model = FakeModel(together=3)  # a pass returns only once three passes run at the same time

    async def main():
        batcher = Batcher(model.predict, max_batch=1, max_wait_ms=0, max_queue=10, model_threads=3)
        results = await asyncio.gather(*(batcher.submit(crops_marked(i)) for i in range(3)))
        await batcher.stop()
        return results

    results = run(main())
    assert model.batches == [1, 1, 1]
    assert sorted(r[0][0, 0, 0] for r in results) == [0, 1, 2]


def test_bad_settings_are_refused():
    with pytest.raises(ValueError):
        Batcher(FakeModel().predict, max_batch=0)
