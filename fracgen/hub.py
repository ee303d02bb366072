"""The Hub client as a push uses it: a timeout on every request and one warning line per retry.

huggingface_hub's shared ``httpx`` client has no timeout (``default_client_factory`` passes ``timeout=None``), so
a server that accepts a connection and never answers would hold a push forever; ``with_timeouts`` installs a
client factory with timeouts (``set_client_factory``, the library's own hook) for the duration of the push, and
puts back the one that was there.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import threading
from collections.abc import Iterator

from fracgen.errors import UsageError

log = logging.getLogger("fracgen.publish")  # retries read as the push's own lines

# Seconds a request may wait to connect, and for each read or write; HF_HUB_DOWNLOAD_TIMEOUT overrides the latter.
HUB_CONNECT_TIMEOUT_S = 10.0


def _timeout_from_env() -> float:
    """HF_HUB_DOWNLOAD_TIMEOUT when it is a number of seconds > 0 (the CLI refuses any other value), else 60."""
    try:
        value = float(os.environ.get("HF_HUB_DOWNLOAD_TIMEOUT") or 60)
    except ValueError:
        return 60.0
    return value if 0 < value < float("inf") else 60.0


HUB_TIMEOUT_S = _timeout_from_env()
# A whole push may take this long, plus its bytes at HUB_MIN_RATE: a server that answers a byte at a time (which no
# per-read timeout catches) or keeps failing is given up on in one line, however the retries go.
HUB_BUDGET_S = 180.0
HUB_MIN_RATE = 100_000  # bytes/s


class HubTimeout(UsageError):
    """The push ran out of its time budget."""


@contextlib.contextmanager
def budget(seconds: float, what: str) -> Iterator[None]:
    """Raise HubTimeout in this thread once ``seconds`` have passed (a timer signal interrupts a blocking read or
    a retry's wait); a no-op off the main thread or where the platform has no interval timer."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return

    def expire(signum, frame) -> None:
        raise HubTimeout(f"{what} did not finish within {seconds:.0f} s (the time allowed for its requests and "
                         "their retries, and its bytes at 100 KB/s); the server is too slow or not answering")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class _OneLinePerRetry(logging.Filter):
    """huggingface_hub logs two lines per retry of its own (the error, then the wait): log one, as ours."""

    def __init__(self) -> None:
        super().__init__()
        self.error = "an error"

    def filter(self, record: logging.LogRecord) -> bool:
        text = " ".join(record.getMessage().split())
        if " thrown while requesting " in text:
            self.error = text.split(" thrown while requesting ")[0].strip("'")
            return False
        wait = re.search(r"(?:Retrying in|Waiting) ([\d.]+)s.*\[Retry (\d+)/(\d+)\]", text)
        if wait:
            log.warning("Hub request failed (%s); retry %s of %s in %s s", self.error, wait[2], wait[3], wait[1])
            return False
        return True


@contextlib.contextmanager
def with_timeouts(self_hosted: bool = False) -> Iterator[None]:
    """huggingface_hub's shared client with timeouts and one line per retry, for the duration of a push.

    ``self_hosted`` (``--endpoint``): uploads go through the LFS protocol, not Xet (a Hub-compatible server need not
    speak it, and hf_xet's own client has neither these timeouts nor these retry lines), and huggingface_hub's
    telemetry, which would look up huggingface.co for its user agent, is off.
    """
    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub.utils import _http, httpx

    previous = getattr(_http, "_GLOBAL_CLIENT_FACTORY", _http.default_client_factory)

    def factory():
        client = previous()
        client.timeout = httpx.Timeout(HUB_TIMEOUT_S, connect=min(HUB_CONNECT_TIMEOUT_S, HUB_TIMEOUT_S))
        return client

    retries = _OneLinePerRetry()
    hub_log = logging.getLogger(_http.__name__)
    flags = {"HF_HUB_DISABLE_XET": constants.HF_HUB_DISABLE_XET,
             "HF_HUB_DISABLE_TELEMETRY": constants.HF_HUB_DISABLE_TELEMETRY}
    huggingface_hub.set_client_factory(factory)
    hub_log.addFilter(retries)
    if self_hosted:
        for flag in flags:
            setattr(constants, flag, True)  # read by huggingface_hub at each call, so they take effect now
    try:
        yield
    finally:
        for flag, value in flags.items():
            setattr(constants, flag, value)
        hub_log.removeFilter(retries)
        huggingface_hub.set_client_factory(previous)


def check_token(token: str | None) -> None:
    """Refuse a token with spaces or control characters (a pasted line break) before it reaches a header."""
    if token and (token != token.strip() or any(c.isspace() or not c.isprintable() for c in token)):
        raise UsageError("the token contains a line break, space or control character; copy it again "
                         "(--token or HF_TOKEN)")


def url_problem(url: str) -> str | None:
    """What is wrong with a Hub URL (``--endpoint``, ``HF_ENDPOINT``), or None."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a port that is not a number in range
    except ValueError as err:
        return str(err)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "not an http(s) URL with a host"
    if parts.query or parts.fragment or any(c.isspace() for c in url):
        return "a query, fragment or space"
    return None


def check_environment() -> None:
    """The huggingface_hub settings it reads from the environment at import, checked first (one line, not its
    traceback): the timeouts are whole seconds > 0, HF_ENDPOINT an http(s) URL."""
    for name in ("HF_HUB_DOWNLOAD_TIMEOUT", "HF_HUB_ETAG_TIMEOUT"):
        value = os.environ.get(name)
        try:
            ok = value is None or int(value) > 0
        except ValueError:
            ok = False
        if not ok:
            raise UsageError(f"{name} must be a whole number of seconds > 0 (huggingface_hub reads it so), "
                             f"got {value!r}")
    endpoint = os.environ.get("HF_ENDPOINT")
    problem = url_problem(endpoint) if endpoint is not None else ""
    if problem:
        raise UsageError(f"HF_ENDPOINT must be an http(s) URL, got {endpoint!r} ({problem})")
