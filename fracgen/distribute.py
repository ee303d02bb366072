"""The shards' process pool, the progress bar and the retries. (The FractalDB/OFDB category search, before
the shards, runs in a pool of its own in ``fracgen.category_search``.)

Workers are forked, so they inherit the parent's imported modules and compiled numba kernels instead of
re-importing them (about 0.5 s per process), and the job is handed over once at fork time, not pickled per shard.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

from tqdm import tqdm

from fracgen.errors import FracgenError

log = logging.getLogger(__name__)

RETRIES = 2  # attempts after the first for a shard that failed with an unexpected error

_job: Callable[[int], dict] | None = None
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _die_with(parent: int) -> None:
    """Make this worker die when ``parent`` does, whatever signal ended it (kill -9 included).

    Linux sends SIGKILL on the parent's death (prctl PR_SET_PDEATHSIG); the pid check covers a parent that died
    before the request was made. Elsewhere a thread polls the parent's pid. Without this, a worker of a killed
    build blocks on its pipe forever, holding the caller's stdout.
    """
    import ctypes
    import signal
    import threading

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        armed = libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
    except (OSError, AttributeError):
        armed = False
    if os.getppid() != parent:
        os._exit(1)
    if not armed:
        def watch() -> None:
            while os.getppid() == parent:
                time.sleep(1.0)
            os._exit(1)

        threading.Thread(target=watch, daemon=True).start()


def _init(job: Callable[[int], dict], parent: int) -> None:
    global _job
    _die_with(parent)
    _job = job


def _run(shard: int) -> dict:
    return _job(shard)


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def ranges(numbers: list[int], most: int = 6) -> str:
    """Sorted integers as short ranges, "0-3, 7, 9-12", the first ``most`` of them (a million stay one line)."""
    spans: list[list[int]] = []
    for n in numbers:
        if spans and n == spans[-1][1] + 1:
            spans[-1][1] = n
        else:
            spans.append([n, n])
    shown = [f"{a}-{b}" if b > a else str(a) for a, b in spans[:most]]
    return ", ".join(shown) + (f", ... ({len(spans) - most} more ranges)" if len(spans) > most else "")


def run_shards(
    job: Callable[[int], dict],
    shard_ids: Sequence[int],
    sizes: Sequence[int],
    workers: int,
    progress: bool = True,
) -> list[dict]:
    """Run ``job(shard)`` for every shard, in worker processes when ``workers`` > 1.

    Args:
        job: builds one shard and returns its marker dict; raises FracgenError for failures a retry cannot fix.
        shard_ids: the shards to build.
        sizes: images in each of those shards (for the progress bar).
        workers: processes to use.
        progress: show a tqdm bar with images/s.

    Returns:
        The markers, in the order of ``shard_ids``.

    Raises:
        FracgenError: a shard failed for good, or a worker process died.
    """
    results: dict[int, dict] = {}
    size_of = dict(zip(shard_ids, sizes, strict=True))
    tries = dict.fromkeys(shard_ids, 0)
    bar = tqdm(total=sum(sizes), unit="img", disable=not progress or not shard_ids, smoothing=0, dynamic_ncols=True)
    start = time.perf_counter()

    def done(shard: int, marker: dict) -> None:
        results[shard] = marker
        bar.update(size_of[shard])
        bar.set_postfix_str(f"{len(results)}/{len(shard_ids)} shards")

    def failed(shard: int, error: BaseException) -> bool:
        if isinstance(error, FracgenError) or tries[shard] >= RETRIES:
            raise error if isinstance(error, FracgenError) else FracgenError(
                f"shard {shard} failed {tries[shard] + 1} times: {type(error).__name__}: {error}") from error
        tries[shard] += 1
        log.warning("shard %d failed (%s: %s); retrying", shard, type(error).__name__, error)
        return True

    try:
        if workers <= 1 or len(shard_ids) <= 1:
            for shard in shard_ids:
                while True:
                    try:
                        done(shard, job(shard))
                        break
                    except Exception as e:  # noqa: BLE001 - classified in failed()
                        failed(shard, e)
        else:
            ctx = mp.get_context("fork")
            with ProcessPoolExecutor(min(workers, len(shard_ids)), mp_context=ctx, initializer=_init,
                                     initargs=(job, os.getpid())) as pool:
                pending = {pool.submit(_run, s): s for s in shard_ids}
                try:
                    _drain(pool, pending, done, failed)
                except BaseException:
                    pool.shutdown(wait=True, cancel_futures=True)  # finish running shards, start no more
                    raise

    except BrokenProcessPool:
        missing = sorted(set(shard_ids) - set(results))
        raise FracgenError(f"a worker process died; {len(missing)} shard(s) unfinished ({ranges(missing)}): "
                           "rerun with --resume") from None
    finally:
        bar.close()
    elapsed = time.perf_counter() - start
    log.info("%d images in %.2f s", sum(sizes), elapsed)
    return [results[s] for s in shard_ids]


def _drain(pool, pending: dict, done, failed) -> None:
    while pending:
        finished, _ = wait(pending, return_when=FIRST_COMPLETED)
        for future in finished:
            shard = pending.pop(future)
            try:
                done(shard, future.result())
            except BrokenProcessPool:
                raise
            except Exception as e:  # noqa: BLE001 - classified in failed()
                failed(shard, e)
                pending[pool.submit(_run, shard)] = shard
