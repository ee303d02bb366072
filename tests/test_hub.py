"""The Hub client's limits (fracgen/hub.py): a server that never answers times out, one that answers a byte at a
time runs out of the push's time budget, each in one line; a self-hosted endpoint is spoken to without Xet or
telemetry, for the push only."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_publish import TOKEN, _assert_one_line_error, _push

from fracgen import hub, publish


@pytest.fixture(autouse=True)
def fast_and_private(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(publish, "BACKOFF_BASE_S", 0.01)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A server that accepts every connection and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    listener.close()


@pytest.fixture
def dripping_server() -> Iterator[str]:
    """A server that answers every request one byte every 0.2 s, for ever (no read ever times out)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    stop = threading.Event()

    def drip(conn: socket.socket) -> None:
        with conn:
            for byte in b"HTTP/1.1 200 OK\r\n" + b"X-Slow: " + b"a" * 10_000:
                if stop.wait(0.2):
                    return
                try:
                    conn.sendall(bytes([byte]))
                except OSError:
                    return

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                threading.Thread(target=drip, args=(listener.accept()[0],), daemon=True).start()
            except OSError:
                continue

    threading.Thread(target=accept, daemon=True).start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    listener.close()


def test_a_hub_that_answers_a_byte_at_a_time_runs_out_of_its_budget_in_one_line(tiny_copy, dripping_server,
                                                                                monkeypatch):
    monkeypatch.setattr(hub, "HUB_BUDGET_S", 1.5)
    start = time.monotonic()
    result = _push(tiny_copy, dripping_server, "--token", TOKEN)
    _assert_one_line_error(result, "did not finish within")
    assert time.monotonic() - start < 20


def test_a_hub_that_never_answers_times_out_in_one_line(tiny_copy, silent_server, monkeypatch):
    monkeypatch.setattr(hub, "HUB_TIMEOUT_S", 0.3)
    start = time.monotonic()
    result = _push(tiny_copy, silent_server, "--token", TOKEN)
    _assert_one_line_error(result, "did not answer within 0.3 s")
    assert time.monotonic() - start < 30


def test_a_self_hosted_push_uploads_by_lfs_without_telemetry_and_restores_the_flags():
    """--endpoint: a Hub-compatible server need not speak Xet (its upload failed with a 404 on xet-write-token),
    and the user agent's telemetry would look up huggingface.co; both are off for the push only."""
    from huggingface_hub import constants

    from fracgen import hub

    before = constants.HF_HUB_DISABLE_XET, constants.HF_HUB_DISABLE_TELEMETRY
    constants.HF_HUB_DISABLE_XET = constants.HF_HUB_DISABLE_TELEMETRY = False
    try:
        with hub.with_timeouts(self_hosted=True):
            assert constants.HF_HUB_DISABLE_XET and constants.HF_HUB_DISABLE_TELEMETRY
        assert not constants.HF_HUB_DISABLE_XET and not constants.HF_HUB_DISABLE_TELEMETRY
        with hub.with_timeouts():  # the Hub itself: the library's own choice stands
            assert not constants.HF_HUB_DISABLE_XET and not constants.HF_HUB_DISABLE_TELEMETRY
    finally:
        constants.HF_HUB_DISABLE_XET, constants.HF_HUB_DISABLE_TELEMETRY = before
