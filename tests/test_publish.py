"""push-to-hub (fracgen/publish.py, fracgen/staging.py) against a real HTTP server on 127.0.0.1 that speaks the
Hub's upload API (tests/hub_server.py): every file sent byte for byte in one commit, retried, resumed; the
token kept out of everything but its header; what cannot be published refused in one line; a dry run that
contacts nothing and writes only a folder of its own.

The real `huggingface_hub` client does the talking (Xet off: conftest sets HF_HUB_DISABLE_XET before import).
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from conftest import one_line
from hub_server import FakeHub

from fracgen import folder, publish
from fracgen.cli import cli
from fracgen.errors import UsageError

TOKEN = "hf_TestTokenThatMustNeverLeak0123456789"
EXPECTED = {"_info.json", "params.json", "build.json", "README.md", "preview.png"}


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Our own retries wait 10 ms instead of seconds (huggingface_hub's own still wait 1 s)."""
    monkeypatch.setattr(publish, "BACKOFF_BASE_S", 0.01)


@pytest.fixture(autouse=True)
def quiet_progress_bars() -> Iterator[None]:
    """huggingface_hub's upload bars go to stderr; off, so the output is only what fracgen says."""
    from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

    disable_progress_bars()
    yield
    enable_progress_bars()


@pytest.fixture(autouse=True)
def no_ambient_token(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Neither the developer's HF_TOKEN nor their stored login may take part."""
    from huggingface_hub import constants

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    with FakeHub(tokens={TOKEN: "alice"}, orgs={"alice": ["fracorg"]}) as server:
        yield server


def _push(root: Path, hub_url: str, *extra: str) -> object:
    license = [] if "--license" in extra else ["--license", "cc-by-4.0"]
    args = [str(root), "--repo-id", "alice/one-frac", "--endpoint", hub_url, *license, *extra]
    return CliRunner().invoke(cli, ["push-to-hub", *args])


def _shards(root: Path) -> list[str]:
    return [s["filename"] for s in json.loads((root / "build.json").read_text())["shards"]]


def _card_header(card: str) -> dict:
    match = re.match(r"^---\n(.*?)\n---\n", card, re.S)
    assert match, card[:200]
    return yaml.safe_load(match.group(1))


def test_push_uploads_every_file_byte_identical_and_retries(
    tiny_copy: Path,
    hub: FakeHub,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    # first attempts fail with 500: create_repo and the commit are retried by fracgen, the preupload by
    # huggingface_hub itself
    hub.fail("POST", r"^/api/repos/create$", 500)
    hub.fail("POST", r"/preupload/", 500)
    hub.fail("POST", r"/commit/", 500)
    caplog.set_level(logging.DEBUG)
    result = _push(tiny_copy, hub.url, "--token", TOKEN, "--commit-message", "first upload")
    assert result.exit_code == 0, result.output
    assert result.output.strip().endswith(f"{hub.url}/datasets/alice/one-frac")

    files = hub.files("alice/one-frac")
    assert set(files) == set(_shards(tiny_copy)) | EXPECTED
    for name in [*_shards(tiny_copy), "_info.json", "params.json", "build.json"]:
        assert files[name] == (tiny_copy / name).read_bytes(), name
    assert files["preview.png"].startswith(b"\x89PNG\r\n\x1a\n")
    header = _card_header(files["README.md"].decode())
    assert header["license"] == "cc-by-4.0"
    assert header["configs"][0]["data_files"][0]["path"] == "train-*.tar"
    assert hub.repos["alice/one-frac"].commits[-1]["summary"] == "first upload"
    assert len(hub.repos["alice/one-frac"].commits) == 1

    def count(pattern: str) -> int:
        return sum(1 for r in hub.requests if re.search(pattern, r.path))

    assert count(r"^/api/repos/create$") == 2
    assert count(r"/preupload/") == 2
    assert count(r"/commit/") == 2
    assert count(r"^/lfs/") == len(_shards(tiny_copy)) + 1  # shards and preview.png, each sent once

    # the token travels only in the Authorization header
    secret = TOKEN.encode()
    for r in hub.requests:
        assert secret not in r.body, r.path
        assert TOKEN not in r.path and TOKEN not in r.query
        for key, value in r.headers.items():
            if key == "authorization":
                assert value == f"Bearer {TOKEN}"
            else:
                assert TOKEN not in value, key
    assert all("authorization" not in r.headers for r in hub.requests if r.method == "PUT")
    assert TOKEN not in result.output
    assert TOKEN not in caplog.text
    assert secret not in files["README.md"]
    for path in [*tiny_copy.rglob("*"), *tmp_path.rglob("*")]:
        if path.is_file():
            assert secret not in path.read_bytes(), path


def test_rerun_resumes_without_resending_shards(tiny_copy: Path, hub: FakeHub) -> None:
    assert _push(tiny_copy, hub.url, "--token", TOKEN).exit_code == 0
    puts = sum(1 for r in hub.requests if r.method == "PUT")
    result = _push(tiny_copy, hub.url, "--token", TOKEN)
    assert result.exit_code == 0, result.output
    assert sum(1 for r in hub.requests if r.method == "PUT") == puts


def test_every_retry_is_one_line(tiny_copy, hub, caplog):
    hub.fail("POST", r"^/api/repos/create$", 500)
    hub.fail("POST", r"/preupload/", 503)  # retried by huggingface_hub itself
    caplog.set_level(logging.INFO)
    result = _push(tiny_copy, hub.url, "--token", TOKEN)
    assert result.exit_code == 0, result.output
    retries = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(retries) == 2, [r.getMessage() for r in retries]
    assert all(r.name == "fracgen.publish" and "\n" not in r.getMessage() for r in retries)
    assert "HTTP 500" in retries[0].getMessage() and "503" in retries[1].getMessage()


def test_revision_and_private(tiny_copy: Path, hub: FakeHub) -> None:
    result = _push(tiny_copy, hub.url, "--token", TOKEN, "--revision", "dev", "--private")
    assert result.exit_code == 0, result.output
    assert result.output.strip().endswith("/datasets/alice/one-frac/tree/dev")
    assert hub.repos["alice/one-frac"].private
    assert set(hub.files("alice/one-frac", "dev")) >= EXPECTED
    assert hub.files("alice/one-frac", "main") == {}


def _assert_one_line_error(result: object, *needles: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("Error: ")
    assert "Traceback" not in result.output
    assert TOKEN not in result.output
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_rejected_token_is_one_clear_line(tiny_copy: Path, hub: FakeHub) -> None:
    result = _push(tiny_copy, hub.url, "--token", TOKEN + "x")
    _assert_one_line_error(result, "401", "--token")
    assert "alice/one-frac" not in hub.repos


def test_missing_token_is_one_clear_line(tiny_copy: Path, hub: FakeHub) -> None:
    result = _push(tiny_copy, hub.url)
    _assert_one_line_error(result, "no Hugging Face token", "HF_TOKEN")
    assert hub.requests == []


def test_token_from_environment(tiny_copy: Path, hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    result = _push(tiny_copy, hub.url)
    assert result.exit_code == 0, result.output
    assert TOKEN not in result.output


def test_repo_of_someone_else_is_one_clear_line(tiny_copy: Path, hub: FakeHub) -> None:
    hub.add_repo("bob/frac", owner="bob")
    result = CliRunner().invoke(
        cli,
        ["push-to-hub", str(tiny_copy), "--repo-id", "bob/frac", "--endpoint", hub.url, "--token", TOKEN,
         "--license", "mit"],
    )
    _assert_one_line_error(result, "'bob'", "--repo-id alice/frac")
    assert hub.files("bob/frac") == {}


def test_forbidden_by_the_hub_is_one_clear_line(tiny_copy: Path, hub: FakeHub) -> None:
    # whoami says the org is alice's, but the Hub refuses the write (e.g. a read-only token)
    hub.fail("POST", r"^/api/repos/create$", 403)
    result = CliRunner().invoke(
        cli,
        ["push-to-hub", str(tiny_copy), "--repo-id", "fracorg/frac", "--endpoint", hub.url, "--token", TOKEN,
         "--license", "mit"],
    )
    _assert_one_line_error(result, "403", "read-only")


def test_failed_shard_upload_is_one_clear_line(tiny_copy: Path, hub: FakeHub) -> None:
    hub.fail("PUT", r"^/lfs/", 400, times=10)  # 4xx: neither the client nor fracgen retries it
    result = _push(tiny_copy, hub.url, "--token", TOKEN)
    _assert_one_line_error(result, "HTTP 400")
    assert hub.repos["alice/one-frac"].commits == []


def test_network_outage_is_one_clear_line(tiny_copy: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = _push(tiny_copy, f"http://127.0.0.1:{port}", "--token", TOKEN)
    _assert_one_line_error(result, "cannot reach", "network")


def test_dry_run_contacts_nothing(tiny_copy: Path, hub: FakeHub, tmp_path: Path) -> None:
    out = tmp_path / "dry"
    result = _push(tiny_copy, hub.url, "--dry-run", str(out), "--license", "mit")  # no token needed
    assert result.exit_code == 0, result.output
    assert "nothing was contacted" in result.output
    assert hub.requests == []
    listing = json.loads((out / "files.json").read_text())
    names = [f["path_in_repo"] for f in listing["files"]]
    assert names == [
        *_shards(tiny_copy),
        "_info.json",
        "params.json",
        "build.json",
        "README.md",
        "preview.png",
    ]
    for entry in listing["files"]:
        local = (
            out / entry["path_in_repo"]
            if entry["path_in_repo"] in ("README.md", "preview.png")
            else (tiny_copy / entry["path_in_repo"])
        )
        data = local.read_bytes()
        assert entry["size"] == len(data)
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
    assert _card_header((out / "README.md").read_text())["license"] == "mit"
    assert not (tiny_copy / "preview.png").exists()  # the dataset folder is left as it was


def test_a_null_recipe_record_is_a_full_build_to_verify_the_card_and_the_push(tiny_copy, tmp_path):
    """What verify checks is what a push sends: a build.json whose ``recipe`` is not a recipe's record is a full
    build everywhere, its shards sent and its card a build's."""
    from fracgen.verify import verify

    record = json.loads((tiny_copy / "build.json").read_text())
    (tiny_copy / "build.json").write_text(json.dumps(dict(record, recipe=None)))
    report = verify(tiny_copy)
    assert report.ok and not report.recipe
    out = Path(publish.push_to_hub(tiny_copy, "alice/frac", dry_run=tmp_path / "dry", license="mit"))
    names = [f["path_in_repo"] for f in json.loads((out / "files.json").read_text())["files"]]
    assert names[:len(_shards(tiny_copy))] == _shards(tiny_copy)
    assert "## A recipe" not in (out / "README.md").read_text()


def test_dry_run_never_overwrites_a_users_folder(tiny_copy, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "README.md").write_text("my readme")
    result = _push(tiny_copy, "http://127.0.0.1:9", "--dry-run", str(mine))
    _assert_one_line_error(result, "did not write (README.md)")
    assert [p.name for p in mine.iterdir()] == ["README.md"] and (mine / "README.md").read_text() == "my readme"
    ours = tmp_path / "ours"
    assert _push(tiny_copy, "http://127.0.0.1:9", "--dry-run", str(ours)).exit_code == 0
    assert _push(tiny_copy, "http://127.0.0.1:9", "--dry-run", str(ours)).exit_code == 0  # its own: rewritten


def test_dry_run_on_a_full_disk_leaves_no_truncated_file(tiny_copy, tmp_path, monkeypatch):
    class Full:
        def __init__(self, path, mode):
            self.f = open(path, mode)  # noqa: SIM115 - closed in __exit__

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            self.f.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")

    real_open = folder.open_new
    monkeypatch.setattr(folder, "open_new", lambda p, then="rerun": Full(p, "wb") if "preview.png" in str(p)
                        else real_open(p, then))
    out = tmp_path / "dry"
    result = _push(tiny_copy, "http://127.0.0.1:9", "--dry-run", str(out))
    _assert_one_line_error(result, "disk full")
    assert "--resume" not in result.output
    assert not (out / "preview.png").exists() and not list(out.glob("*.tmp*"))


def test_refuses_a_broken_dataset(tiny_copy: Path, hub: FakeHub) -> None:
    name = _shards(tiny_copy)[0]
    data = bytearray((tiny_copy / name).read_bytes())
    data[-2000] ^= 0xFF
    (tiny_copy / name).write_bytes(bytes(data))
    with pytest.raises(UsageError, match=rf"refusing to publish .*{name}"):
        publish.push_to_hub(tiny_copy, "alice/one-frac", token=TOKEN, endpoint=hub.url, license="mit")
    assert hub.requests == []


def test_round_trip_through_datasets(tiny_copy: Path, hub: FakeHub, tmp_path: Path) -> None:
    """Shards fetched back from the server load with datasets' webdataset builder, labels and sizes intact."""
    from datasets import load_dataset

    assert _push(tiny_copy, hub.url, "--token", TOKEN).exit_code == 0
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for name, data in hub.files("alice/one-frac").items():
        (mirror / name).write_bytes(data)
    build = json.loads((mirror / "build.json").read_text())
    ds = load_dataset(
        "webdataset",
        data_files={"train": str(mirror / "train-*.tar")},
        split="train",
        cache_dir=str(tmp_path / "hf-cache"),
    )
    assert len(ds) == build["num_samples"]
    labels = sorted(int(row["cls"]) for row in ds)
    assert labels == sorted(range(build["num_classes"]))
    size = build["config"]["size"]
    for row in ds:
        assert row["png"].size == (size, size)
        assert row["json"]["label"] == int(row["cls"])


def test_real_image_source_travels_and_is_verified(tmp_path: Path) -> None:
    from PIL import Image

    from fracgen.build import BuildConfig, build
    from fracgen.verify import verify

    source = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(source)
    root = tmp_path / "real"
    build(BuildConfig(preset="real", L=3, size=32, shard_size=4, seed=0), root, workers=1, source=source)
    name = json.loads((root / "build.json").read_text())["config"]["source"]
    out = tmp_path / "dry"
    assert publish.push_to_hub(root, "alice/real", dry_run=out, license="cc0-1.0") == str(out)
    listing = json.loads((out / "files.json").read_text())["files"]
    assert name in [f["path_in_repo"] for f in listing]
    (root / name).write_bytes(b"not the source")
    report = verify(root)
    assert not report.ok and any(name in p for p in report.dataset_problems)


@pytest.mark.parametrize("change", ["shard", "params", "preview-link"])
def test_a_dataset_changed_after_verify_is_not_published(tiny_copy: Path, hub: FakeHub, tmp_path: Path,
                                                          monkeypatch, change) -> None:
    """A second writer between verify and the upload: a shard replaced (same size), a record edited, or the preview
    swapped for a link to a private file. The push re-checks what it sends against what verify read and stops
    before its commit: nothing is visible on the Hub."""
    import fracgen.publish as publish

    secret = tmp_path / "id_rsa"
    secret.write_bytes(b"\x89PNG\r\n\x1a\nPRIVATE KEY")
    real_verify = publish.verify

    def verify_then_change(root, *args, **kwargs):
        report = real_verify(root, *args, **kwargs)
        if change == "shard":
            shard = tiny_copy / _shards(tiny_copy)[0]
            shard.write_bytes(bytes(shard.stat().st_size))
        elif change == "params":
            (tiny_copy / "params.json").write_text((tiny_copy / "params.json").read_text().replace("0", "1", 1))
        else:
            (tiny_copy / "preview.png").symlink_to(secret)
        return report

    monkeypatch.setattr(publish, "verify", verify_then_change)
    result = _push(tiny_copy, hub.url, "--token", TOKEN)
    one_line(result, "changed since the dataset was verified" if change != "preview-link" else "preview.png")
    assert not any(repo.commits for repo in hub.repos.values())
    assert all(b"PRIVATE KEY" not in data for data in hub.lfs.values())


def test_a_licence_the_hub_does_not_know_is_refused_before_any_upload(tiny_copy: Path, hub: FakeHub) -> None:
    """The Hub refuses a card whose licence is not on its list, and create_commit would learn it only after every
    shard was uploaded; the push asks first and stops with nothing sent."""
    one_line(_push(tiny_copy, hub.url, "--token", TOKEN, "--license", "not-a-licence"),
             "the Hub refuses the card's metadata", '"license" must be one of')
    assert not any(r.method == "PUT" for r in hub.requests) and not any(repo.commits for repo in hub.repos.values())
