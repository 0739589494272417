"""The decoder processes' hard limits (pipeline.inference.isolation): memory, CPU time and wall clock hold
whatever the decoding code does, the caller gets an InvalidImage with the reason, and the pool
replaces a killed decoder."""
from __future__ import annotations

import os
import time

import pytest

from pipeline.inference import isolation, upload
from pipeline.data.preprocess import InvalidImage


def allocate(mb: int) -> int:
    return len(bytearray(mb << 20))


def spin(seconds: float) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def sleep(seconds: float) -> None:
    time.sleep(seconds)


def pid() -> int:
    return os.getpid()


@pytest.fixture
def pool():
    p = isolation.DecoderPool(size=1, memory_mb=256, cpu_seconds=1, wall_seconds=4)
    yield p
    p.close()


def test_memory_past_the_limit_fails_in_the_decoder_not_the_caller(pool):
    assert pool.run(allocate, 64) == 64 << 20
    with pytest.raises(InvalidImage, match="more than 256 MB"):
        pool.run(allocate, 1024)
    assert pool.run(allocate, 64) == 64 << 20  # the same decoder goes on


def test_cpu_time_past_the_limit_kills_the_decoder_and_a_new_one_takes_over(pool):
    first = pool.run(pid)
    started = time.perf_counter()
    with pytest.raises(InvalidImage, match="CPU time"):
        pool.run(spin, 30)
    assert time.perf_counter() - started < 4
    assert pool.run(pid) != first
    pool.run(spin, 0.3)  # the limit is per file, not per decoder lifetime
    pool.run(spin, 0.3)
    pool.run(spin, 0.3)


def test_wall_clock_past_the_limit_is_refused(pool):
    with pytest.raises(InvalidImage, match="took more than 4 s"):
        pool.run(sleep, 60)
    assert pool.run(pid) > 0


def test_decoders_are_shared_by_threads_and_return_the_same_answer_as_in_process(pool):
    from concurrent.futures import ThreadPoolExecutor

    from tests.hostile_files import film, _jpeg

    blob = _jpeg(film(800))
    expected = upload.decode(blob, 64).array
    two = isolation.DecoderPool(size=2)
    try:
        with ThreadPoolExecutor(4) as ex:
            answers = list(ex.map(lambda _: two.run(upload.decode, blob, 64).array, range(8)))
    finally:
        two.close()
    assert all((a == expected).all() for a in answers)
