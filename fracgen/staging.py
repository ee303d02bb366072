"""What a push sends: the files of a verified dataset with their sizes and sha256, the small ones read once (what
was checked is what is sent), the rendered card; and the folder a dry run writes instead of uploading."""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from fracgen import dataset
from fracgen.card import render_card
from fracgen.dataset import BUILD_JSON, CARD_MD, INFO_JSON, PARAMS_JSON, PNG_SIGNATURE, PREVIEW_PNG
from fracgen.errors import FracgenError, UsageError
from fracgen.folder import dump_json, link_or_copy, make_folders, read_regular, write_atomic

MAX_COMMIT_FILES = 20_000  # create_commit takes at most 25k LFS files
SMALL_MOST = 1 << 30  # bytes of a file sent from memory: the records, card, preview, a real-image build's photo


@dataclass
class StagedFile:
    """One file of the upload.

    Attributes:
        path_in_repo: where it lands in the repo.
        source: the local file that is uploaded.
        size: bytes.
        sha256: hex digest of the content.
        data: the content of a small file (records, card, preview, source image), read once at staging.
    """

    path_in_repo: str
    source: Path
    size: int
    sha256: str
    data: bytes | None = None  # a small file's content, read once: what was hashed is what is sent


def stage(
    root: Path | str, workdir: Path, *, license: str | None = None, repo_id: str = "USER/NAME",
    source_license: str | None = None, source_url: str | None = None, recipe: bool = False,
) -> list[StagedFile]:
    """The exact files of an upload, with sizes and sha256 (call it on a verified dataset).

    The card is rendered into `workdir/README.md`; the preview is `root/preview.png` when it exists,
    else it is drawn into `workdir/preview.png` (the dataset folder is not touched).

    Args:
        root: a complete dataset folder.
        workdir: a folder for generated files.
        license: the dataset's licence id for the card (required: the card refuses to guess one).
        repo_id: the target repo, named in the card's loading snippets.
        source_license, source_url: real-image builds: the photo's licence and provenance, for the card.
        recipe: send the records only, as a recipe (a recipe folder sends nothing else anyway); its build.json
            keeps the shards' sha256, so whoever renders it can check they get these bytes.

    Returns:
        Shards in build.json order (none for a recipe), then `_info.json`, `params.json`, `build.json`, the source
        image of a real-image build, `README.md`, `preview.png`.
    """
    root = Path(root)
    build, sent_build = _build_record(root, workdir, recipe)
    if len(build["shards"]) > MAX_COMMIT_FILES:
        raise UsageError(
            f"{len(build['shards'])} shards are more than one Hub commit takes ({MAX_COMMIT_FILES}); "
            "rebuild with a larger --shard-size"
        )
    card = render_card(root, license=license, repo_id=repo_id, source_license=source_license, source_url=source_url,
                       build=build)
    _check_card_header(card)
    write_atomic(workdir / CARD_MD, card.encode("utf-8"), then="push again")
    preview_path = root / PREVIEW_PNG  # read below once, without following a link, and checked to be a PNG
    if not preview_path.exists() and not preview_path.is_symlink():  # none drawn: drawn here, not in the dataset
        from fracgen.preview import preview

        preview_path = preview(root, out=workdir / PREVIEW_PNG)
    # shards: the sizes and digests of build.json, which verify has just checked against the bytes (a
    # second read of every shard would double the cost for large sets)
    staged = [] if dataset.is_recipe(build) else [
        StagedFile(str(r["filename"]), root / str(r["filename"]), int(r["bytes"]), str(r["sha256"]))
        for r in build["shards"]
    ]
    # the small files are read once here and sent as these bytes, each checked against what verify checked: a
    # file replaced since (or a link swapped in for the preview) is refused, not published
    recorded = build.get("records") if isinstance(build.get("records"), dict) else {}
    config = build.get("config") or {}
    expected = {INFO_JSON: recorded.get(INFO_JSON), PARAMS_JSON: recorded.get(PARAMS_JSON)}
    others = [(INFO_JSON, root / INFO_JSON, True), (PARAMS_JSON, root / PARAMS_JSON, True),
              (BUILD_JSON, sent_build, True)]
    source = str(config.get("source") or "")
    if source:  # the real-image preset rebuilds from this file, so it travels with the shards
        others.append((source, root / source, True))
        expected[source] = config.get("source_sha256")
    others += [(CARD_MD, workdir / CARD_MD, False), (PREVIEW_PNG, preview_path, False)]
    for name, path, follow in others:
        data = _read_once(path, follow)
        digest = hashlib.sha256(data).hexdigest()
        if expected.get(name) not in (None, digest) or (name == BUILD_JSON and _json(data) != build):
            raise UsageError(f"{path} changed since the dataset was verified; nothing was uploaded: run "
                             f"`fracgen verify {root}` and push again")
        if name == PREVIEW_PNG and not data.startswith(PNG_SIGNATURE):
            raise UsageError(f"{path} is not a PNG image; remove it, or run `fracgen preview {root}` to draw one")
        staged.append(StagedFile(name, path, len(data), digest, data))
    return staged


def _build_record(root: Path, workdir: Path, recipe: bool) -> tuple[dict, Path]:
    """build.json as it is sent, and the file it is sent from: a complete build sent as a recipe gets the record
    of a recipe (its first samples' json, for the card), written into ``workdir``."""
    build = dataset.read_build(root)
    if not recipe or dataset.is_recipe(build):
        return build, root / BUILD_JSON
    from fracgen.card import first_records

    build = {**build, "recipe": {"head": first_records(root, build)}}
    write_atomic(workdir / BUILD_JSON, dump_json(build), then="push again")
    return build, workdir / BUILD_JSON


def _json(data: bytes) -> object:
    try:
        return json.loads(data)
    except ValueError:
        return None


def _read_once(path: Path, follow: bool) -> bytes:
    """A small file's bytes, from one open (without following a link unless ``follow``).

    Raises:
        UsageError: it is gone, a link (``follow`` False), not a regular file, over 1 GiB, or unreadable.
    """
    data = read_regular(path, SMALL_MOST, follow=follow)
    if data is not None:
        return data
    if not os.path.lexists(path):
        raise UsageError(f"{path} is gone since the dataset was verified; nothing was uploaded")
    why = "is a link" if path.is_symlink() and not follow else "is not a regular file" if not path.is_file() else \
        f"is over {SMALL_MOST >> 30} GiB" if path.stat().st_size > SMALL_MOST else "cannot be read"
    raise UsageError(f"{path} {why} (fracgen publishes only regular files it can read); nothing was uploaded")


def _check_card_header(card: str) -> None:
    """Parse the card's YAML header locally, so a broken card fails before any upload."""
    match = re.match(r"^---\n(.*?)\n---\n", card, re.S)
    try:
        header = yaml.safe_load(match.group(1)) if match else None
    except yaml.YAMLError as err:
        raise UsageError(f"the rendered card's YAML header does not parse: {err}") from err
    if not isinstance(header, dict) or "license" not in header or "configs" not in header:
        raise UsageError("the rendered card has no YAML header with license and configs")


LISTING = ("files.json", "files.tsv")  # what a dry run writes besides the files themselves


def _check_dry_run_folder(out: Path, names: set[str]) -> None:
    """Refuse a --dry-run folder that holds anything but an earlier dry run's files (a user's README.md...)."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise UsageError(f"--dry-run {out} exists and is not a folder")
    if not out.exists():
        return
    entries = {p.name: p for p in out.iterdir()}
    foreign = sorted(n for n, p in entries.items() if (n not in names and n not in LISTING) or p.is_symlink()
                     or not p.is_file())
    if not foreign and entries:
        try:
            record = json.loads((out / LISTING[0]).read_text(encoding="utf-8"))
            ours = isinstance(record, dict) and record.get("repo_type") == "dataset" and "files" in record
        except (OSError, ValueError, RecursionError):
            ours = False
        foreign = [] if ours else sorted(entries)
    if foreign:
        raise UsageError(f"--dry-run folder {out} holds files fracgen did not write ({', '.join(foreign[:5])}); "
                         "give an empty or new folder")


def write_dry_run(files: list[StagedFile], out: Path, *, repo_id: str, summary: dict) -> Path:
    """Write what an upload would send into ``out``: the files themselves (the shards as hard links to the
    dataset's, or copies where the file system has none), so that ``datasets.load_dataset(out)`` loads what the Hub
    would serve, and the listing (`files.json`: path, size, sha256; `files.tsv`).

    Each file is written atomically, so a full disk leaves no half-written one; a folder holding anything else is
    refused before any write.
    """
    _check_dry_run_folder(out, {f.path_in_repo for f in files})
    listing = [{"path_in_repo": f.path_in_repo, "size": f.size, "sha256": f.sha256} for f in files]
    record = {"repo_id": repo_id, "repo_type": "dataset", **summary, "files": listing,
              "total_bytes": sum(f.size for f in files)}
    rows = ["path_in_repo\tsize\tsha256"] + [f"{f.path_in_repo}\t{f.size}\t{f.sha256}" for f in files]
    make_folders(out, "--dry-run folder")
    try:
        write_atomic(out / LISTING[0], (json.dumps(record, indent=1) + "\n").encode(), then="rerun")
        write_atomic(out / LISTING[1], ("\n".join(rows) + "\n").encode(), then="rerun")
        for f in files:
            if f.data is not None:
                write_atomic(out / f.path_in_repo, f.data, then="rerun")
            else:
                link_or_copy(f.source, out / f.path_in_repo)
    except OSError as err:
        raise UsageError(f"--dry-run folder {out} cannot be written: {err.strerror or err}") from None
    except FracgenError as err:
        raise UsageError(f"--dry-run folder {out}: {err}") from None
    return out
