"""train.data.remote: datasets over HTTP with a time limit on every read and a budget per file; no other scheme.

Servers run in this process on 127.0.0.1: one serving the tiny dataset, one that accepts and never answers, one
that answers a byte at a time. The limits are lowered for the tests (30 s and 30 min by default)."""

import functools
import http.server
import socket
import threading
import time

import pytest
import torch
from train_helpers import QUICK, assert_one_line, cfg_of, run_cli

from train.data import remote
from train.data.pretraining import make_source
from train.data.samples import shard_samples
from train.data.shards import read_info
from train.errors import TrainError


@pytest.fixture
def served(tiny_dataset):
    """The tiny dataset over HTTP: its URL."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tiny_dataset))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def silent():
    """A server that accepts connections and never sends a byte: its URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    held = []
    stop = threading.Event()

    def accept():
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(sock.accept()[0])
            except OSError:
                continue

    threading.Thread(target=accept, daemon=True).start()
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    stop.set()
    for conn in held:
        conn.close()
    sock.close()


@pytest.fixture
def trickle():
    """A server that answers 200 and then one byte every 0.2 s: its URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    stop = threading.Event()

    def serve(conn):
        try:
            conn.recv(4096)
            conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 100000\r\n\r\n")
            while not stop.is_set():
                conn.sendall(b"{")
                time.sleep(0.2)
        except OSError:
            pass
        finally:
            conn.close()

    def accept():
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                threading.Thread(target=serve, args=(sock.accept()[0],), daemon=True).start()
            except OSError:
                continue

    threading.Thread(target=accept, daemon=True).start()
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    stop.set()
    sock.close()


def test_a_dataset_over_http_is_read(served):
    info = read_info(f"{served}/train-{{000000..000001}}.tar")
    assert info.num_classes == 16 and info.splits["train"].num_samples == 16
    samples = list(shard_samples(f"{served}/train-000001.tar"))
    assert len(samples) == 8 and all(s["__url__"] == f"{served}/train-000001.tar" for s in samples)
    cfg = cfg_of(f"{served}/train-{{000000..000001}}.tar", "data.workers=0")
    images, targets = next(make_source(cfg, torch.device("cpu"), 0, 1).batches(0))
    assert images.shape == (8, 3, 64, 64) and targets.shape == (8,)


def test_a_server_that_never_answers_is_one_line_within_the_time_limit(silent, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(remote, "READ_TIMEOUT_S", 1.0)
    t0 = time.monotonic()
    code, _, err = run_cli(["pretrain", "--config", "tiny", "--data", f"{silent}/ds/train-{{000000..000001}}.tar",
                            "--out", tmp_path / "run", *[a for q in QUICK for a in ("--set", q)]], capsys)
    assert_one_line(code, err, f"{silent}/ds/_info.json: cannot be read (no answer for 1 s)")
    assert time.monotonic() - t0 < 30 and not (tmp_path / "run").exists()


def test_a_server_that_answers_a_byte_at_a_time_runs_out_of_budget(trickle, monkeypatch):
    monkeypatch.setattr(remote, "FILE_BUDGET_S", 1.0)
    t0 = time.monotonic()
    with pytest.raises(TrainError, match=r"_info.json: not read whole within 1 s"):
        read_info(f"{trickle}/ds/train-000000.tar")
    assert time.monotonic() - t0 < 10


@pytest.mark.parametrize("url", ["pipe:cat /etc/passwd", "file:///etc/passwd", "s3://bucket/x.tar", "gs://b/x.tar",
                                 "ftp://host/x.tar", "HTTP://host/x.tar/../y"])
def test_only_http_urls_are_read(url):
    if url.startswith("HTTP"):  # the scheme is case-insensitive: this one is read (and fails to connect)
        remote.check_url(url, "shard")
        return
    with pytest.raises(TrainError, match="only http:// and https:// URLs are read"):
        remote.check_url(url, "shard")
    with pytest.raises(TrainError, match="only http:// and https:// URLs are read"):
        list(shard_samples(url))
