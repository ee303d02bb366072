"""A small Hugging Face Hub stand-in on 127.0.0.1 for upload tests (stdlib `http.server` in a thread).

It speaks the part of the Hub API that `huggingface_hub` 2.x uses to publish a dataset with Xet turned off
(`HF_HUB_DISABLE_XET=1`), as read from its `hf_api.py`, `_commit_api.py` and `lfs.py`:

    GET  /api/whoami-v2                                   who the bearer token belongs to
    POST /api/repos/create                                {"name", "organization", "type", "visibility"?}
    GET  /api/datasets/{ns}/{name}                        repo_info (create_repo(exist_ok) falls back to it)
    POST /api/datasets/{ns}/{name}/branch/{branch}        create_branch
    POST /api/validate-yaml                               {"content", "repoType"} -> {"errors", "warnings"}
    POST /api/datasets/{ns}/{name}/preupload/{rev}        {"files": [{"path", "sample", "size"}]} -> upload modes
    POST /datasets/{ns}/{name}.git/info/lfs/objects/batch git-lfs batch API: an upload action per new object
    PUT  /lfs/{oid}                                       the object's bytes (a pre-signed URL: no auth header)
    POST /api/datasets/{ns}/{name}/commit/{rev}           NDJSON: header, file (base64) and lfsFile lines

Every request is recorded (method, path, query, headers, body) so tests can check what travelled where.
`fail(method, pattern, status, times)` makes matching requests answer `status` the next `times` times.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

LFS_EXTENSIONS = (".tar", ".png", ".parquet", ".bin")


@dataclass
class Recorded:
    """One request as the server saw it."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Repo:
    """A dataset repo: owner, visibility and the files of each branch."""

    owner: str
    private: bool
    branches: dict[str, dict[str, bytes]] = field(default_factory=lambda: {"main": {}})
    commits: list[dict] = field(default_factory=list)


@dataclass
class _Fault:
    method: str
    pattern: re.Pattern
    status: int
    remaining: int


# A part of the Hub's licence list (hub-docs, repositories-licenses.md): the ids the tests use, and the catch-alls.
HUB_LICENSES = ("apache-2.0", "mit", "cc-by-4.0", "cc-by-sa-4.0", "cc-by-nc-4.0", "cc0-1.0", "other", "unknown")


class FakeHub:
    """The server and its state. Use as a context manager, or call `start()` / `stop()`.

    Args:
        tokens: bearer token -> user name.
        orgs: user name -> organisations the user belongs to.
    """

    def __init__(self, tokens: dict[str, str] | None = None, orgs: dict[str, list[str]] | None = None):
        self.tokens = dict(tokens or {})
        self.orgs = dict(orgs or {})
        self.repos: dict[str, Repo] = {}
        self.lfs: dict[str, bytes] = {}
        self.requests: list[Recorded] = []
        self._faults: list[_Fault] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeHub:
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, name="fake-hub", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def fail(self, method: str, pattern: str, status: int = 500, times: int = 1) -> None:
        """Answer the next `times` requests whose method and path match with `status`."""
        with self._lock:
            self._faults.append(_Fault(method.upper(), re.compile(pattern), status, times))

    def add_repo(self, repo_id: str, owner: str, private: bool = False) -> Repo:
        """Create a repo directly (e.g. one that belongs to somebody else)."""
        self.repos[repo_id] = Repo(owner=owner, private=private)
        return self.repos[repo_id]

    def files(self, repo_id: str, branch: str = "main") -> dict[str, bytes]:
        """The committed files of a branch."""
        return self.repos[repo_id].branches[branch]

    def _take_fault(self, method: str, path: str) -> int | None:
        with self._lock:
            for fault in self._faults:
                if fault.remaining > 0 and fault.method == method and fault.pattern.search(path):
                    fault.remaining -= 1
                    return fault.status
        return None

    def user_of(self, headers: dict[str, str]) -> str | None:
        auth = headers.get("authorization", "")
        if not auth.startswith("Bearer "):
            return None
        return self.tokens.get(auth[len("Bearer ") :])

    def may_write(self, user: str, namespace: str) -> bool:
        return user == namespace or namespace in self.orgs.get(user, [])


def _read_body(handler: BaseHTTPRequestHandler) -> bytes:
    if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
        chunks = []
        while True:
            size = int(handler.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while handler.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(chunks)
            chunks.append(handler.rfile.read(size))
            handler.rfile.readline()
    length = int(handler.headers.get("Content-Length") or 0)
    return handler.rfile.read(length) if length else b""


REPO = r"(?P<repo>[^/]+/[^/]+?)"


def _make_handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # quiet: tests read hub.requests
            pass

        def _send(self, status: int, payload: object = None, headers: dict[str, str] | None = None) -> None:
            body = b"" if payload is None else json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(body)

        def _error(self, status: int, message: str, code: str | None = None) -> None:
            headers = {"X-Error-Message": message}
            if code:
                headers["X-Error-Code"] = code
            self._send(status, {"error": message}, headers)

        def _handle(self, method: str) -> None:
            parts = urlsplit(self.path)
            path = unquote(parts.path)
            body = _read_body(self)
            headers = {k.lower(): v for k, v in self.headers.items()}
            hub.requests.append(Recorded(method, parts.path, parts.query, headers, body))
            status = hub._take_fault(method, path)
            if status is not None:
                self._error(status, f"injected {status}")
                return
            try:
                self._route(method, path, parse_qs(parts.query), headers, body)
            except Exception as err:  # a bug in a test server should show up as a 500, not a hang
                self._error(500, f"fake hub error: {err!r}")

        def do_GET(self) -> None:  # noqa: N802
            self._handle("GET")

        def do_POST(self) -> None:  # noqa: N802
            self._handle("POST")

        def do_PUT(self) -> None:  # noqa: N802
            self._handle("PUT")

        def _auth(self, headers: dict[str, str]) -> str | None:
            user = hub.user_of(headers)
            if user is None:
                self._error(401, "Invalid credentials in Authorization header")
            return user

        def _route(self, method: str, path: str, query: dict, headers: dict[str, str], body: bytes) -> None:
            if method == "GET" and path == "/api/whoami-v2":
                if (user := self._auth(headers)) is None:
                    return
                orgs = [{"name": o} for o in hub.orgs.get(user, [])]
                self._send(200, {"type": "user", "name": user, "orgs": orgs})
            elif method == "POST" and path == "/api/repos/create":
                self._create_repo(headers, json.loads(body))
            elif method == "POST" and path == "/api/validate-yaml":
                self._validate_yaml(json.loads(body))
            elif method == "PUT" and (m := re.fullmatch(r"/lfs/(?P<oid>[0-9a-f]{64})", path)):
                if hashlib.sha256(body).hexdigest() != m["oid"]:
                    self._error(400, "content does not match oid")
                    return
                hub.lfs[m["oid"]] = body
                self._send(200)
            elif m := re.fullmatch(rf"/datasets/{REPO}\.git/info/lfs/objects/batch", path):
                self._lfs_batch(m["repo"], headers, json.loads(body))
            elif m := re.fullmatch(rf"/api/datasets/{REPO}/preupload/(?P<rev>.+)", path):
                self._preupload(m["repo"], headers, json.loads(body))
            elif m := re.fullmatch(rf"/api/datasets/{REPO}/commit/(?P<rev>.+)", path):
                self._commit(m["repo"], m["rev"], headers, body)
            elif m := re.fullmatch(rf"/api/datasets/{REPO}/branch/(?P<branch>.+)", path):
                self._branch(m["repo"], m["branch"], headers)
            elif method == "GET" and (m := re.fullmatch(rf"/api/datasets/{REPO}(?:/revision/.+)?", path)):
                repo = hub.repos.get(m["repo"])
                user = hub.user_of(headers)
                if repo is None or (repo.private and user != repo.owner):
                    self._error(404, "Repository not found", "RepoNotFound")
                    return
                self._send(200, {"id": m["repo"], "sha": "0" * 40, "private": repo.private, "siblings": []})
            else:
                self._error(404, f"no route for {method} {path}")

        def _writable_repo(self, repo_id: str, headers: dict[str, str]) -> Repo | None:
            if (user := self._auth(headers)) is None:
                return None
            repo = hub.repos.get(repo_id)
            if repo is None or (repo.private and repo.owner != user and not hub.may_write(user, repo.owner)):
                self._error(404, "Repository not found", "RepoNotFound")
                return None
            if not hub.may_write(user, repo.owner):
                self._error(403, "You don't have the rights to write to this repo")
                return None
            return repo

        def _create_repo(self, headers: dict[str, str], payload: dict) -> None:
            if (user := self._auth(headers)) is None:
                return
            namespace = payload.get("organization") or user
            repo_id = f"{namespace}/{payload['name']}"
            if payload.get("type") != "dataset":
                self._error(400, f"expected a dataset repo, got type {payload.get('type')!r}")
            elif not hub.may_write(user, namespace):
                self._error(
                    403, f"You don't have the rights to create a dataset under the namespace {namespace}"
                )
            elif repo_id in hub.repos:  # the Hub's 409 names the existing repo, and the client reads that url
                message = "You already created this dataset repo"
                self._send(
                    409,
                    {"error": message, "url": f"{hub.url}/datasets/{repo_id}"},
                    {"X-Error-Message": message},
                )
            else:
                hub.add_repo(repo_id, owner=namespace, private=payload.get("visibility") == "private")
                self._send(200, {"url": f"{hub.url}/datasets/{repo_id}", "name": repo_id})

        def _branch(self, repo_id: str, branch: str, headers: dict[str, str]) -> None:
            if (repo := self._writable_repo(repo_id, headers)) is None:
                return
            if branch in repo.branches:
                self._error(409, "Reference already exists")
                return
            repo.branches[branch] = dict(repo.branches["main"])
            self._send(200, {})

        def _validate_yaml(self, payload: dict) -> None:
            content = payload.get("content", "")
            match = re.match(r"^---\n(.*?)\n---\n", content, re.S)
            try:
                header = yaml.safe_load(match.group(1)) if match else None
            except yaml.YAMLError as err:
                self._send(400, {"errors": [{"message": f"YAML does not parse: {err}"}], "warnings": []})
                return
            if not isinstance(header, dict):
                self._send(200, {"errors": [], "warnings": [{"message": "empty or missing yaml metadata"}]})
                return
            if "license" in header and header["license"] not in HUB_LICENSES:  # the Hub checks its own list
                self._send(400, {"errors": [{"message": f'"license" must be one of [{", ".join(HUB_LICENSES)}]'}],
                                 "warnings": []})
                return
            self._send(200, {"errors": [], "warnings": []})

        def _preupload(self, repo_id: str, headers: dict[str, str], payload: dict) -> None:
            if self._writable_repo(repo_id, headers) is None:
                return
            files = []
            for f in payload["files"]:
                base64.b64decode(f["sample"])  # must be valid base64
                mode = "lfs" if f["path"].endswith(LFS_EXTENSIONS) else "regular"
                files.append({"path": f["path"], "uploadMode": mode, "shouldIgnore": False, "oid": None})
            self._send(200, {"files": files, "commitOid": "0" * 40})

        def _lfs_batch(self, repo_id: str, headers: dict[str, str], payload: dict) -> None:
            if self._writable_repo(repo_id, headers) is None:
                return
            objects = []
            for obj in payload["objects"]:
                entry = {"oid": obj["oid"], "size": obj["size"]}
                if obj["oid"] not in hub.lfs:  # content-addressed: what the server holds is not sent again
                    entry["actions"] = {"upload": {"href": f"{hub.url}/lfs/{obj['oid']}", "header": {}}}
                objects.append(entry)
            self._send(200, {"transfer": "basic", "objects": objects})

        def _commit(self, repo_id: str, rev: str, headers: dict[str, str], body: bytes) -> None:
            if (repo := self._writable_repo(repo_id, headers)) is None:
                return
            if rev not in repo.branches:
                self._error(404, "Revision not found", "RevisionNotFound")
                return
            lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
            if not lines or lines[0].get("key") != "header":
                self._error(400, "commit payload must start with a header line")
                return
            staged = dict(repo.branches[rev])
            for line in lines[1:]:
                value = line["value"]
                if line["key"] == "file":
                    staged[value["path"]] = base64.b64decode(value["content"])
                elif line["key"] == "lfsFile":
                    if value["oid"] not in hub.lfs:
                        self._error(400, f"LFS object {value['oid']} was never uploaded")
                        return
                    staged[value["path"]] = hub.lfs[value["oid"]]
                else:
                    self._error(400, f"unsupported commit operation {line['key']}")
                    return
            repo.branches[rev] = staged
            oid = hashlib.sha1(body).hexdigest()
            repo.commits.append({"oid": oid, "summary": lines[0]["value"].get("summary"), "branch": rev})
            self._send(
                200,
                {
                    "commitUrl": f"{hub.url}/datasets/{repo_id}/commit/{oid}",
                    "commitOid": oid,
                    "success": True,
                },
            )

    return Handler
