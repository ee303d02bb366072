"""Datasets over HTTP(S): ``_info.json`` and shards read with a time limit on every read and a budget per file.

Only ``http://`` and ``https://`` URLs are read: webdataset's ``pipe:`` (a shell command) and the other schemes its
``gopen`` runs programs for are refused, since a config file shared with a run could name one. A server that
accepts and never answers, or answers a byte at a time, ends the read with one line: no byte for
``READ_TIMEOUT_S``, or the file not whole after ``FILE_BUDGET_S``. The download runs in a thread of its own so the
budget holds while the headers are read too; the reader waits on it with the time left. Cost: one thread and up to
``_AHEAD`` chunks of 1 MiB in memory per file being read.
"""

from __future__ import annotations

import queue
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import IO

from train.errors import TrainError

READ_TIMEOUT_S = 30.0
"""The longest wait for any byte (connecting included)."""
FILE_BUDGET_S = 1800.0
"""The longest a whole file may take: a shard of a few GB at a few MB/s."""
SCHEMES = ("http", "https")
_CHUNK = 1 << 20
_AHEAD = 8
_DONE = object()


def is_remote(path: str) -> bool:
    """True for a URL (``https://``, ``pipe:``, ``s3://``...), false for a local path (``C:\\`` included)."""
    return bool(re.match(r"^[a-z][a-z0-9+.-]*:", path)) and not re.match(r"^[A-Za-z]:\\", path)


def check_url(url: str, what: str) -> None:
    """Refuse a URL of a scheme other than http(s) before anything is read.

    Raises:
        TrainError: ``<what> <url>: only http:// and https:// URLs are read ...``.
    """
    scheme = url.split(":", 1)[0].lower()
    if scheme not in SCHEMES:
        raise TrainError(f"{what} {url[:80]}: only http:// and https:// URLs are read (a {scheme}: URL would run a "
                         "program); download the dataset and pass its folder")


class _Download(threading.Thread):
    """Reads one URL into a bounded queue of chunks; an error (or ``_DONE``) ends the queue."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True, name=f"download {url[:60]}")
        self.url, self.chunks, self.stop = url, queue.Queue(maxsize=_AHEAD), threading.Event()

    def run(self) -> None:
        try:
            request = urllib.request.Request(self.url, headers={"User-Agent": "fracgen-train"})
            with urllib.request.urlopen(request, timeout=READ_TIMEOUT_S) as response:
                read = getattr(response, "read1", response.read)  # read1: what has arrived, not a full MiB
                while not self.stop.is_set():
                    chunk = read(_CHUNK)
                    if not chunk:
                        break
                    self._put(chunk)
            self._put(_DONE)
        except Exception as e:  # noqa: BLE001 - urllib, http.client, ssl and socket raise many kinds
            self._put(e)

    def _put(self, item: object) -> None:
        while not self.stop.is_set():
            try:
                self.chunks.put(item, timeout=1.0)
                return
            except queue.Full:
                continue


def _why(e: BaseException) -> str:
    if isinstance(e, urllib.error.HTTPError):
        return f"HTTP {e.code} {e.reason}"
    if isinstance(e, TimeoutError) or "timed out" in str(e):
        return f"no answer for {READ_TIMEOUT_S:g} s"
    reason = getattr(e, "reason", None) or e
    return f"{type(e).__name__}: {str(reason).splitlines()[0] if str(reason) else ''}".rstrip(": ")


def iter_url(url: str, what: str = "URL") -> Iterator[bytes]:
    """The bytes of ``url`` in chunks of up to 1 MiB.

    Args:
        url: an http(s) URL.
        what: what it is, for the messages (``shard``, ``dataset``).

    Raises:
        TrainError: ``<what> <url>: cannot be read (...)``, or ``<what> <url>: not read whole within N s``.
    """
    check_url(url, what)
    download = _Download(url)
    download.start()
    deadline = time.monotonic() + FILE_BUDGET_S
    try:
        while True:
            if time.monotonic() >= deadline:
                raise TrainError(f"{what} {url}: not read whole within {FILE_BUDGET_S:g} s (a slow or stalled "
                                 "server); download the dataset and pass its folder")
            wait = min(deadline - time.monotonic(), READ_TIMEOUT_S + 1.0)
            try:
                item = download.chunks.get(timeout=max(wait, 0.0))
            except queue.Empty:
                if time.monotonic() < deadline:  # the thread's own time limit says so first, as a rule
                    raise TrainError(f"{what} {url}: cannot be read (no answer for {READ_TIMEOUT_S:g} s)") from None
                continue
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise TrainError(f"{what} {url}: cannot be read ({_why(item)})")
            yield item
    finally:
        download.stop.set()


class RemoteFile:
    """A read-only binary stream over ``iter_url`` (what ``tarfile`` reads a remote shard from)."""

    def __init__(self, url: str, what: str = "shard") -> None:
        self.name, self._chunks = url, iter_url(url, what)
        self._buffer, self._pos = bytearray(), 0

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self._buffer) - self._pos < size:
            chunk = next(self._chunks, None)
            if chunk is None:
                break
            del self._buffer[:self._pos]  # once per chunk: a read of a few bytes never copies the whole buffer
            self._pos = 0
            self._buffer += chunk
        end = len(self._buffer) if size < 0 else min(self._pos + size, len(self._buffer))
        data = bytes(self._buffer[self._pos:end])
        self._pos = end
        return data

    def close(self) -> None:
        self._chunks.close()


def read_url(url: str, what: str = "dataset") -> bytes:
    """The whole of ``url`` (a small file: ``_info.json``), under the same limits."""
    return b"".join(iter_url(url, what))


def open_url(url: str, what: str = "shard") -> IO[bytes]:
    """``url`` as a binary stream for ``fracgen.dataset.iter_shard``."""
    return RemoteFile(url, what)  # type: ignore[return-value]
