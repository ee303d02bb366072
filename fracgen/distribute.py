"""The one process pool: a build's shards, and the searches that run before them, with a progress bar and retries.

Workers are forked, so they inherit the parent's imported modules and compiled numba kernels instead of
re-importing them (about 0.5 s per process), and the job is handed over once at fork time, not pickled per item.
A worker dies with its parent, whatever killed the parent.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from tqdm import tqdm

from fracgen.errors import FracgenError

log = logging.getLogger(__name__)

RETRIES = 2  # attempts after the first for a shard that failed with an unexpected error

_job: Callable[[int], Any] | None = None
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


def _init(job: Callable[[int], Any], parent: int) -> None:
    global _job
    _die_with(parent)
    _job = job


def _run(item: int) -> Any:
    return _job(item)


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


def run_shards(job: Callable[[int], dict], shard_ids: Sequence[int], sizes: Sequence[int], workers: int,
               progress: bool = True) -> list[dict]:
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
        FracgenError: a shard failed for good, or a worker process died ("rerun with --resume").
    """
    return run_jobs(job, shard_ids, sizes, workers, progress, unit="img", what="shard", then="rerun with --resume")


def run_jobs(job: Callable[[int], Any], items: Sequence[int], sizes: Sequence[int], workers: int,
             progress: bool = True, *, unit: str = "item", what: str = "item", then: str = "rerun") -> list[Any]:
    """Run ``job(item)`` for every item (a shard, a category to search), forked across ``workers`` processes.

    Args:
        job: returns the item's result; raises FracgenError for failures a retry cannot fix (an unexpected
            error is retried RETRIES times).
        items: the items, in the order of the results.
        sizes: the bar's units in each item.
        workers: processes to use (1: in this process).
        progress: show a tqdm bar.
        unit, what: the bar's unit, and what an item is (the bar counts items as well when they differ).
        then: what to do after a worker died.

    Returns:
        The results, in the order of ``items``.

    Raises:
        FracgenError: an item failed for good, or a worker process died.
    """
    results: dict[int, Any] = {}
    size_of = dict(zip(items, sizes, strict=True))
    tries = dict.fromkeys(items, 0)
    bar = tqdm(total=sum(sizes), unit=unit, disable=not progress or not items, smoothing=0, dynamic_ncols=True)
    start = time.perf_counter()

    def done(item: int, result: Any) -> None:
        results[item] = result
        bar.update(size_of[item])
        if unit != what:
            bar.set_postfix_str(f"{len(results)}/{len(items)} {what}s")

    def failed(item: int, error: BaseException) -> bool:
        if isinstance(error, FracgenError) or tries[item] >= RETRIES:
            raise error if isinstance(error, FracgenError) else FracgenError(
                f"{what} {item} failed {tries[item] + 1} times: {type(error).__name__}: {error}") from error
        tries[item] += 1
        log.warning("%s %d failed (%s: %s); retrying", what, item, type(error).__name__, error)
        return True

    try:
        if workers <= 1 or len(items) <= 1:
            _in_process(job, items, done, failed)
        else:
            with ProcessPoolExecutor(min(workers, len(items)), mp_context=mp.get_context("fork"), initializer=_init,
                                     initargs=(job, os.getpid())) as pool:
                pending = {pool.submit(_run, s): s for s in items}
                try:
                    _drain(pool, pending, done, failed)
                except BaseException:
                    pool.shutdown(wait=True, cancel_futures=True)  # finish running items, start no more
                    raise
    except BrokenProcessPool:
        missing = sorted(set(items) - set(results))
        raise FracgenError(f"a worker process died; {len(missing)} {what}(s) unfinished ({ranges(missing)}): "
                           f"{then}") from None
    finally:
        bar.close()
    log.info("%d %s in %.2f s", sum(sizes), unit, time.perf_counter() - start)
    return [results[s] for s in items]


def _in_process(job: Callable[[int], Any], items: Sequence[int], done, failed) -> None:
    for item in items:
        while True:
            try:
                done(item, job(item))
                break
            except Exception as e:  # noqa: BLE001 - classified in failed()
                failed(item, e)


def _drain(pool, pending: dict, done, failed) -> None:
    while pending:
        finished, _ = wait(pending, return_when=FIRST_COMPLETED)
        for future in finished:
            item = pending.pop(future)
            try:
                done(item, future.result())
            except BrokenProcessPool:
                raise
            except Exception as e:  # noqa: BLE001 - classified in failed()
                failed(item, e)
                pending[pool.submit(_run, item)] = item
