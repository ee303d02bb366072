"""Publish a verified dataset to a Hugging Face Hub dataset repo in one commit.

Steps: verify (refuse a broken dataset) -> stage (shards, `_info.json`, `params.json`, `build.json`, the
rendered card as `README.md`, `preview.png`) -> check the token (whoami) -> `create_repo(exist_ok=True)` ->
upload the large files -> one `create_commit`.

Retries, without doubling huggingface_hub's own: the client already retries the preupload, LFS batch,
upload and verify requests (`http_backoff`: connection errors, 408, 429, 5xx; 5 retries) but not whoami,
`create_repo`, `create_branch`, YAML validation or the commit itself. So the upload step runs bare and the
other calls run under `_with_retries`. A rerun after a failure resumes: the Hub keeps content-addressed
objects, and the LFS batch answer says which ones it already holds, so they are not sent again.

Every request has a timeout and every retry, ours or the client's, is one warning line (`fracgen.hub`).

The token goes to `HfApi` and from there only into the Authorization header; no message of this module
contains it (`_scrub` removes it from any text that reaches the user).
"""

from __future__ import annotations

import logging
import re
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import fracgen
from fracgen import dataset, hub
from fracgen.errors import UsageError
from fracgen.staging import StagedFile, stage, write_dry_run
from fracgen.verify import verify

logger = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_ENDPOINT = "https://huggingface.co"
RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
RETRY_ATTEMPTS = 5
BACKOFF_BASE_S = 1.0  # waits 1, 2, 4, 8 s between attempts (tests lower it)
BACKOFF_MAX_S = 30.0
REPO_ID_RE = re.compile(r"[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}\Z")  # use .match: \Z, not $ (newline)



def _scrub(text: str, token: str | None) -> str:
    """`text` with the token (if any) replaced, so no message can leak it."""
    if token:
        text = text.replace(token, "***")
    return " ".join(text.split())


def _status(err: BaseException) -> int | None:
    response = getattr(err, "response", None)
    return getattr(response, "status_code", None)


def _is_transient(err: BaseException) -> bool:
    from huggingface_hub.errors import HfHubHTTPError
    from huggingface_hub.utils import httpx

    if isinstance(err, HfHubHTTPError):
        return _status(err) in RETRY_STATUS
    return isinstance(err, httpx.TransportError)


def _retry_after(err: BaseException) -> float | None:
    response = getattr(err, "response", None)
    value = response.headers.get("Retry-After") if response is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _with_retries(what: str, call: Callable[[], T], attempts: int = RETRY_ATTEMPTS) -> T:
    """Run `call`, retrying connection errors, 408, 429 and 5xx with exponential backoff."""
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except Exception as err:
            if not _is_transient(err) or attempt == attempts:
                raise
            wait = min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** (attempt - 1))
            wait = max(wait, min(BACKOFF_MAX_S, _retry_after(err) or 0.0))
            logger.warning(
                "%s failed (%s); attempt %d of %d in %.1f s",
                what,
                _describe(err),
                attempt + 1,
                attempts,
                wait,
            )
            time.sleep(wait)
    raise AssertionError("unreachable")  # the loop returns or raises


def _describe(err: BaseException) -> str:
    status = _status(err)
    return f"HTTP {status}" if status is not None else type(err).__name__


def _hub_accepts_card(api, files: list[StagedFile]) -> None:
    """Have the Hub check the card's metadata (its licence among its list) before any file is uploaded.

    ``create_commit`` asks this too, but only once the shards are uploaded; this is the same request
    (``HfApi._validate_yaml``, private, so skipped where a huggingface_hub lacks it).

    Raises:
        UsageError: the Hub's reasons, on one line.
    """
    validate = getattr(api, "_validate_yaml", None)
    card = next((f for f in files if f.path_in_repo == dataset.CARD_MD), None)
    if validate is None or card is None or card.data is None:
        return
    try:
        validate(card.data.decode("utf-8"), repo_type="dataset")
    except ValueError as err:
        reasons = "; ".join(line.strip("- ").strip() for line in str(err).splitlines()[1:] if line.strip())
        raise UsageError(f"the Hub refuses the card's metadata ({reasons or err}); nothing was uploaded: a "
                         "licence must be one of the Hub's ids (https://huggingface.co/docs/hub/repositories-licenses)"
                         ", or `other`") from None


def _explain(err: BaseException, *, repo_id: str, endpoint: str, revision: str | None) -> UsageError:
    """Turn a client failure into the one-line error the user sees."""
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalTokenNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )
    from huggingface_hub.utils import httpx

    # the LFS upload step wraps the real failure ("Error while uploading 'x' to the Hub.") in a RuntimeError
    cause: BaseException | None = err
    while cause is not None and not isinstance(cause, HfHubHTTPError | httpx.TransportError | OSError):
        cause = cause.__cause__ or cause.__context__
    err = cause if cause is not None else err

    tokens = f"{endpoint}/settings/tokens"
    if isinstance(err, LocalTokenNotFoundError):
        return UsageError(
            f"no Hugging Face token: pass --token, set HF_TOKEN, or run `hf auth login` (tokens: {tokens})"
        )
    if isinstance(err, OfflineModeIsEnabled):
        return UsageError("HF_HUB_OFFLINE is set, so the Hub cannot be contacted; unset it to publish")
    if isinstance(err, httpx.TimeoutException):
        return UsageError(
            f"{endpoint} did not answer within {hub.HUB_TIMEOUT_S:g} s ({type(err).__name__}), {RETRY_ATTEMPTS} times: "
            "check --endpoint and the network, then rerun the same command; files already uploaded are not sent again"
        )
    if isinstance(err, httpx.TransportError):
        return UsageError(
            f"cannot reach {endpoint} ({type(err).__name__}) after {RETRY_ATTEMPTS} attempts: check the network "
            "connection (or --endpoint) and rerun the same command; files already uploaded are not sent again"
        )
    if isinstance(err, RevisionNotFoundError):
        return UsageError(f"branch {revision!r} does not exist in dataset {repo_id} and could not be created")
    if isinstance(err, HfHubHTTPError):
        status = _status(err)
        if status == 401:
            return UsageError(
                f"the Hub rejected the token (HTTP 401): it is invalid or expired; create a token with write "
                f"access at {tokens} and pass it with --token or HF_TOKEN"
            )
        if status == 403:
            return UsageError(
                f"the token may not write to dataset {repo_id} (HTTP 403): the repo belongs to someone else or the "
                "token is read-only; push to a repo in your own namespace or use a write token for this one"
            )
        if isinstance(err, RepositoryNotFoundError) or status == 404:
            return UsageError(
                f"dataset repo {repo_id} is not visible to this token (HTTP 404): it belongs to someone else "
                "or could not be created; check --repo-id"
            )
        if status in RETRY_STATUS:
            return UsageError(
                f"the Hub kept failing (HTTP {status}) after {RETRY_ATTEMPTS} attempts; try again later (a rerun "
                "resumes: files already uploaded are not sent again)"
            )
        server = getattr(err, "server_message", None) or str(err).splitlines()[0]
        return UsageError(f"the Hub refused the upload (HTTP {status}): {server}")
    return UsageError(f"upload failed: {type(err).__name__}: {err}")


def _check_namespace(api: object, repo_id: str) -> None:
    """Ask whoami who the token belongs to; refuse a namespace the token's user cannot write to.

    A 401 propagates (rejected token). A server without whoami (some self-hosted Hubs answer 404) skips the
    namespace check and lets the Hub decide.
    """
    from huggingface_hub.errors import HfHubHTTPError

    try:
        who = _with_retries("whoami", lambda: api.whoami())  # type: ignore[attr-defined]
    except HfHubHTTPError as err:
        if _status(err) == 404:
            logger.info("the endpoint has no whoami; skipping the namespace check")
            return
        raise
    user = who.get("name")
    orgs = {o.get("name") for o in who.get("orgs", []) if isinstance(o, dict)}
    namespace = repo_id.split("/", 1)[0]
    if user and namespace != user and namespace not in orgs:
        member_of = ", ".join(sorted(o for o in orgs if o)) or "no organisation"
        raise UsageError(
            f"the token belongs to {user!r} (member of {member_of}), who cannot write to namespace {namespace!r}: "
            f"use --repo-id {user}/{repo_id.split('/', 1)[1]} or a token of {namespace!r}"
        )


def push_to_hub(
    root: Path | str,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    token: str | None = None,
    endpoint: str | None = None,
    dry_run: Path | str | None = None,
    license: str | None = None,
    source_license: str | None = None,
    source_url: str | None = None,
    recipe: bool = False,
) -> str:
    """Verify a dataset and upload it to a Hub dataset repo in one commit.

    Args:
        root: a complete dataset folder (what `fracgen build` wrote).
        repo_id: `USER/NAME` or `ORG/NAME`.
        private: create the repo private (an existing repo keeps its visibility).
        revision: branch to commit to (created from main if missing); default main.
        commit_message: commit summary; default names the dataset and its size.
        token: Hub token; default HF_TOKEN, then the login stored by `hf auth login`.
        endpoint: Hub URL; default HF_ENDPOINT or https://huggingface.co.
        dry_run: a folder: write the file list and the card there and contact nothing.
        license: the dataset's licence id for the card's YAML header (required).
        source_license, source_url: real-image builds: the photo's licence and provenance, for the card.
        recipe: publish the records only (``fracgen.staging.stage``): a recipe that renders this dataset.

    Returns:
        The dataset's URL, or for a dry run the folder written.

    Raises:
        UsageError: a broken dataset, a bad option, a missing or rejected token, a repo the token cannot
            write to, a network outage or a Hub that keeps failing; the message is one line without the token.
    """
    _check_target(repo_id, revision)
    root = Path(root)
    message = commit_message or _verified(root)
    with tempfile.TemporaryDirectory(prefix="fracgen-publish-") as tmp:
        files = stage(root, Path(tmp), license=license, repo_id=repo_id, source_license=source_license,
                      source_url=source_url, recipe=recipe)
        if dry_run is None:
            return _upload(files, repo_id, private=private, revision=revision, message=message, token=token,
                           endpoint=endpoint)
        summary = {"private": private, "revision": revision or "main", "commit_message": message,
                   "endpoint": endpoint or "(default)"}
        out = write_dry_run(files, Path(dry_run), repo_id=repo_id, summary=summary)
        logger.info("dry run: %d files, %d bytes listed in %s; nothing contacted", len(files),
                    sum(f.size for f in files), out)
        return str(out)


def _check_target(repo_id: str, revision: str | None) -> None:
    """The repo id by the Hub's own rules (no "--" or "..", no ".git" ending...) and the branch name, so that a
    dry run refuses what a push would."""
    if not REPO_ID_RE.match(repo_id):
        raise UsageError(f"--repo-id must look like USER/NAME, got {repo_id!r}")
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise UsageError(f"--repo-id {repo_id!r}: {' '.join(str(err).split())}") from None
    if revision is not None and not re.fullmatch(r"(?!.*\.\.)(?!-)[\w./-]*\w", revision):
        raise UsageError(f"--revision must be a branch name such as main or v1, got {revision!r}")


def _verified(root: Path) -> str:
    """Verify the dataset (a broken one is refused); returns the default commit message."""
    report = verify(root)
    if not report.ok:
        problems = report.lines()[1:]
        raise UsageError(f"refusing to publish {root}: verification failed ({problems[0]}"
                         + (f"; and {len(problems) - 1} more problem(s)" if len(problems) > 1 else "")
                         + f"); run `fracgen verify {root}` for the full list")
    build = dataset.read_build(root)
    return (f"Upload {build.get('name', root.name)}: {report.num_samples} images, {report.num_classes} classes "
            f"(fracgen {fracgen.__version__})")


def _upload(
    files: list[StagedFile],
    repo_id: str,
    *,
    private: bool,
    revision: str | None,
    message: str,
    token: str | None,
    endpoint: str | None,
) -> str:
    from huggingface_hub import CommitOperationAdd, HfApi, constants, get_token

    base = (endpoint or constants.ENDPOINT or DEFAULT_ENDPOINT).rstrip("/")
    if not token:  # an empty --token/HF_TOKEN means "not given": fall back to the stored login
        token = get_token()
    if not token:
        raise UsageError(
            f"no Hugging Face token: pass --token, set HF_TOKEN, or run `hf auth login` (tokens: {base}/settings/tokens)"
        )
    hub.check_token(token)
    api = HfApi(endpoint=base, token=token, library_name="fracgen", library_version=fracgen.__version__)
    allowed = hub.HUB_BUDGET_S + sum(f.size for f in files) / hub.HUB_MIN_RATE
    with hub.with_timeouts(self_hosted=endpoint is not None), hub.budget(allowed, f"the push to {base}"):
        try:
            _check_namespace(api, repo_id)
            _with_retries(
                "create_repo",
                lambda: api.create_repo(
                    repo_id, repo_type="dataset", exist_ok=True, private=True if private else None
                ),
            )
            if revision and revision != "main":
                _with_retries(
                    "create_branch",
                    lambda: api.create_branch(repo_id, branch=revision, repo_type="dataset", exist_ok=True),
                )
            operations = [
                CommitOperationAdd(path_in_repo=f.path_in_repo,
                                   path_or_fileobj=f.data if f.data is not None else str(f.source))
                for f in files
            ]
            _with_retries("card check", lambda: _hub_accepts_card(api, files))
            total = sum(f.size for f in files)
            logger.info("uploading %d files (%d bytes) to dataset %s", len(files), total, repo_id)
            # huggingface_hub retries each request of this step itself
            api.preupload_lfs_files(repo_id, additions=operations, repo_type="dataset", revision=revision)
            # the digests of what was read to upload (by Xet or LFS) against build.json's, which verify checked:
            # a shard replaced since is refused before the commit makes anything visible
            changed = [f.path_in_repo for f, op in zip(files, operations, strict=True)
                       if op.upload_info.sha256.hex() != f.sha256]
            if changed:
                raise UsageError(f"{changed[0]}{f' and {len(changed) - 1} more' if len(changed) > 1 else ''} "
                                 "changed since the dataset was verified; nothing was committed: run `fracgen "
                                 "verify` and push again")
            commit = _with_retries(
                "commit",
                lambda: api.create_commit(
                    repo_id, operations=operations, commit_message=message, repo_type="dataset", revision=revision
                ),
            )
        except UsageError:
            raise
        except Exception as err:
            explained = _explain(err, repo_id=repo_id, endpoint=base, revision=revision)
            logger.debug("upload failed: %s", _scrub(repr(err), token))
            raise UsageError(_scrub(str(explained), token)) from None
    logger.info("committed %s", getattr(commit, "commit_url", ""))
    url = f"{base}/datasets/{repo_id}"
    return url + (f"/tree/{revision}" if revision and revision != "main" else "")
