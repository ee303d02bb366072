"""Hostile input to the builder, one table per entry point, one row per case.

Every row of a command's table must end in a clean refusal: exit status 2, one ``Error:`` line that names the
option or file at fault, no traceback, nothing written or half-written. Every row of verify's tables must fail
with a report line naming the fault. Behaviour tests that are not tables sit with their module's tests.
"""

import importlib.util
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import TINY, one_line
from hub_server import FakeHub
from PIL import Image
from test_publish import TOKEN, _push

from fracgen import dataset
from fracgen.build import BuildConfig, build
from fracgen.cli import cli
from fracgen.errors import FracgenError, UsageError
from fracgen.presets import real as realimage
from fracgen.verify import verify

REPO = Path(__file__).resolve().parents[1]
TINY_ARGS = ["--L", "8", "--size", "64", "--points", "3000", "--shard-size", "4", "--workers", "1", "--no-progress"]


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


# ---------------------------------------------------------------------------------- build options


def small(*given: str) -> list[str]:
    """A small build's options, less those the row gives itself."""
    base = {"--size": "64", "--points": "2000", "--shard-size": "8", "--workers": "1"}
    return [word for name, value in base.items() if name not in given for word in (name, value)] + ["--no-progress"]


def row(args: list[str], *fragments: str, prefix: list[str] | tuple[()] = ()):
    return pytest.param([*prefix, *args], fragments, id=" ".join(args))


BUILD_OPTIONS = [
    # bounds and types of the option table
    row(["--sigma", "0"], "--sigma", "(0, 6]", prefix=TINY_ARGS),
    row(["--sigma", "6.5"], "--sigma", "(0, 6]", prefix=TINY_ARGS),
    row(["--sigma", "9.5", "--maps", "3"], "--sigma", "(0, 9]", prefix=TINY_ARGS),
    row(["--delta", "-0.1"], "--delta", "a number in [0, 100]", prefix=TINY_ARGS),
    row(["--delta", "nan"], "--delta", "a number in [0, 100]", "'nan'", prefix=TINY_ARGS),
    row(["--delta", "lots"], "--delta", "a number in [0, 100]", "'lots'", prefix=TINY_ARGS),
    row(["--sigma", "inf"], "--sigma", "a finite number", prefix=TINY_ARGS),
    row(["--margin", "-1"], "--margin", "a number >= 0", prefix=TINY_ARGS),
    row(["--L", "0"], "--L", ">=1", prefix=TINY_ARGS),
    row(["--points", "1", "--min-fill", "0"], "--points", ">=2", prefix=TINY_ARGS),
    row(["--size", "12"], "--size", ">=16", prefix=TINY_ARGS),
    row(["--perturbation", "gaussian"], "--perturbation", "multiplicative", "additive", prefix=TINY_ARGS),
    row(["--min-fill", "1.5"], "--min-fill", "a number in [0, 1]", prefix=TINY_ARGS),
    row(["--shard-range", "3:1"], "--shard-range", "0 <= i < j", prefix=TINY_ARGS),
    row(["--shard-range", "0:5"], "--shard-range", "2", prefix=TINY_ARGS),  # the build has 2 shards
    row(["--patch-variants", "0"], "--patch-variants"),
    row(["--base-min-fill", "1.5"], "--base-min-fill"),
    row(["--preset", "ofdb", "--ofdb-weights", "csv"], "'csv' is not one of"),
    row(["--preset", "rcdb-lpce", "--radius-perturbation", "ring"], "'ring' is not one of"),
    row(["--preset", "rcdb", "--categories", "0"], "--categories"),
    # options the family does not read, or that contradict another
    row(["--preset", "fractaldb", "--delta", "0.2"], "--preset fractaldb takes no --delta"),
    row(["--preset", "ofdb", "--L", "10", "--sigma", "3"], "--preset ofdb takes no --L, --sigma"),
    row(["--preset", "ofdb", "--instances", "5"], "--preset ofdb takes no --instances"),
    row(["--preset", "gaussian-noise", "--fractals", "3"], "--preset gaussian-noise takes no --fractals"),
    row(["--preset", "uniform-noise", "--params", "p.json"], "--preset uniform-noise takes no --params"),
    row(["--preset", "fractaldb", "--patch-variants", "3"], "--preset fractaldb takes no --patch-variants"),
    row(["--preset", "fractaldb", "--ofdb-weights", "released"], "--preset fractaldb takes no --ofdb-weights"),
    row(["--preset", "ofdb", "--base-min-fill", "0"], "--preset ofdb takes no --base-min-fill: it does not use it"),
    row(["--patch-variants", "2", "--style", "points"], "--patch-variants needs --style reference"),
    row(["--preset", "rcdb", "--delta", "0.1"], "--preset rcdb takes no --delta"),
    row(["--preset", "visualatom", "--L", "5"], "--preset visualatom takes no --L"),
    row(["--preset", "rcdb-lpce", "--instances", "3"], "--preset rcdb-lpce takes no --instances"),
    row(["--preset", "visualatom-lpce", "--categories", "3"], "--preset visualatom-lpce takes no --categories"),
    row(["--preset", "rcdb", "--points", "10"], "--preset rcdb takes no --points"),
    row(["--preset", "1p-frac", "--radius-perturbation", "scalar"], "--preset 1p-frac takes no --radius-perturbation"),
    # products that would not fit this machine: refused before anything is allocated
    row(["--L", "1000000000"], "--L 1000000000 needs about", prefix=small()),
    row(["--size", "200000"], "--size 200000 needs about", prefix=small("--size")),
    row(["--points", "10000000000"], "--points 10000000000 needs about", prefix=small("--points")),
    row(["--fractals", "1000000"], "--fractals 1000000 needs about", prefix=small()),
    row(["--preset", "fractaldb", "--fractals", "1000000"], "--fractals 1000000 needs about", prefix=small()),
    row(["--maps", "1000000", "--sigma", "3.5"], "--maps", prefix=small()),
    row(["--delta", "1e308"], "'--delta': must be a number in [0, 100]", prefix=small()),
]


@pytest.mark.parametrize("args,fragments", BUILD_OPTIONS)
def test_a_bad_build_option_is_one_line_and_writes_nothing(tmp_path, args, fragments):
    out = tmp_path / "out"
    one_line(run("build", *args, out), *fragments)
    assert not out.exists()


@pytest.mark.parametrize("options,fragment", [
    ({"dleta": 0.1, "L": 4}, "unknown build option(s) build.dleta (known: L, "),
    ({"delta": -5}, "--delta must be"),
    ({"L": "many"}, "--L"),
    ({"L": 4, "size": 64, "points": float("nan")}, "--points"),
])
def test_options_from_a_mapping_are_refused_on_one_line(options, fragment):
    """Sweep grid points and repro variants name build options in a mapping: one checker refuses them for both."""
    with pytest.raises(UsageError) as e:
        BuildConfig.checked(options, prefix="build.")
    assert fragment in str(e.value) and "\n" not in str(e.value), e.value


@pytest.mark.parametrize("args", [["build", ""], ["build", "--resume", ""], ["build-real", "photo.png", " "]])
def test_an_empty_output_folder_is_refused(tmp_path, args, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2 and "must name a folder" in result.output, result.output
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------ params files


def system(**extra) -> str:
    maps = [[0.5, 0, 0, 0.5, 0, 0], [0.5, 0, 0, 0.5, 0.5, 0], [0.5, 0, 0, 0.5, 0.25, 0.5]]  # Sierpinski
    return json.dumps({"maps": maps, **extra})


@pytest.mark.parametrize("content,fragment", [
    ("[1, 2", "not valid JSON"),
    ("{not json", "not valid JSON"),
    ("[" * 100_000 + "]" * 100_000, "not valid JSON"),
    ('{"systems": []}', "expected a system"),
    ('{"maps": [[1, 2, 3]]}', "6 finite numbers"),
    ('{"maps": [[0.5, 0, 0, 0.5, 0, 0]], "probabilities": [0.3]}', "summing to 1"),
    ('{"maps": [[3, 0, 0, 3, 1, 1], [2.5, 0.1, 0, 2.5, -1, 0]]}', "diverges"),
    ('{"maps": [[0.5, 0, 0, 0.5, 1, 1], [0.5, 0, 0, 0.5, 0, 0]], "probabilities": "x"}', "'probabilities'"),
    ('{"maps": [[0.5, 0, 0, 0.5, 1, 1], [0.5, 0, 0, 0.5, 0, 0]], "sigma": "x"}', "'sigma' must be a number"),
    ('{"maps": [[0.5, 0, 0, 0.5, 1, 1], [0.5, 0, 0, 0.5, 0, 0]], "attempts": "x"}', "'attempts' must be"),
    (system(sigma=float("nan")), "'sigma' must be a finite number"),
    (system(sigma=float("inf")), "'sigma' must be a finite number"),
    (system(attempts=1e999), "'attempts' must be a number"),
    (system(note=float("nan")), "'note' holds a value standard JSON cannot write"),
    (system(note={"deep": [1e999]}), "'note' holds a value standard JSON cannot write"),
], ids=lambda x: x[:40] if isinstance(x, str) and len(x) > 40 else None)
def test_a_bad_params_file_is_refused_before_anything_is_written(tmp_path, content, fragment):
    params = tmp_path / "p.json"
    params.write_text(content)
    one_line(run("build", *TINY_ARGS, "--params", params, tmp_path / "out"), "--params", fragment)
    assert not (tmp_path / "out").exists()
    with pytest.raises(UsageError, match="--params") as err:  # the same refusal from build() itself
        build(BuildConfig(**TINY), tmp_path / "api", params=params)
    assert fragment in str(err.value) and not (tmp_path / "api").exists()


# ------------------------------------------------------------------------------ the output folder


@pytest.mark.parametrize("content", ["{broken", '{"L": "x"}'])
def test_a_damaged_stored_config_is_one_line_on_resume(tmp_path, content):
    out = tmp_path / "out"
    assert run("build", *TINY_ARGS, out).exit_code == 0
    (out / ".fracgen" / "config.json").write_text(content)
    one_line(run("build", "--resume", out), "damaged", "--overwrite")
    assert (out / "build.json").is_file()
    assert run("build", *TINY_ARGS, "--overwrite", out).exit_code == 0


@pytest.mark.parametrize("record", ["build.json", ".fracgen/config.json"])
def test_overwrite_refuses_a_folder_that_only_looks_like_a_build(tmp_path, record):
    proj = tmp_path / "proj"
    (proj / "src").mkdir(parents=True)
    (proj / "src" / "main.c").write_text("code")
    (proj / record).parent.mkdir(parents=True, exist_ok=True)
    (proj / record).write_text("{}")
    with pytest.raises(UsageError, match="not a fracgen build"):
        build(BuildConfig(**TINY), proj, overwrite=True, workers=1)
    assert (proj / "src" / "main.c").read_text() == "code"


@pytest.mark.parametrize("name", ["../victim.png", "/etc/passwd", "", "sub/../../victim.png"])
def test_a_recorded_name_that_leaves_the_dataset_folder_is_refused(tmp_path, name):
    with pytest.raises(FracgenError, match="not a file inside"):
        dataset.inside(tmp_path / "ds", name, "build.json")
    assert dataset.inside(tmp_path / "ds", "train-000000.tar", "x") == tmp_path / "ds" / "train-000000.tar"


# ------------------------------------------------------------------------------------------ preview


@pytest.mark.parametrize("filename", ["../outside/x.tar", "/etc/passwd"])
def test_preview_reads_no_shard_outside_the_folder(tiny_copy, tmp_path, filename):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "x.tar").write_bytes((tiny_copy / "train-000000.tar").read_bytes())
    record = json.loads((tiny_copy / "build.json").read_text())
    record["shards"][0]["filename"] = filename
    (tiny_copy / "build.json").write_text(json.dumps(record))
    one_line(CliRunner().invoke(cli, ["preview", str(tiny_copy)]), "not a file inside")


@pytest.mark.parametrize("key,value,fragment", [
    ("size", "abc", "config is damaged (--size must be an integer"),
    ("seed", -1, "--seed"),
    ("points", 10**10, "--points 10000000000 needs about"),
    (None, "x", "config is not an object"),
])
def test_preview_checks_the_recorded_options(tiny_copy, key, value, fragment):
    record = json.loads((tiny_copy / "build.json").read_text())
    if key is None:
        record["config"] = value
    else:
        record["config"][key] = value
    (tiny_copy / "build.json").write_text(json.dumps(record))
    one_line(CliRunner().invoke(cli, ["preview", str(tiny_copy)]), fragment)
    assert not (tiny_copy / "preview.png").exists()


# --------------------------------------------------------------------------------------- build-real


REAL_ARGS = ["--L", "4", "--size", "32", "--shard-size", "2", "--workers", "1", "--no-progress"]


@pytest.mark.parametrize("shape,value,edges", [((1, 1), 200, "none"), ((40, 40), 90, "none"),
                                               ((1, 300), 10, "none"), ((40, 40), 90, "canny")])
def test_a_flat_or_tiny_image_is_refused_before_writing(tmp_path, shape, value, edges):
    path = tmp_path / "flat.png"
    Image.fromarray(np.full(shape, value, np.uint8)).save(path)
    one_line(CliRunner().invoke(cli, ["build-real", str(path), str(tmp_path / "out"), "--edges", edges,
                                      *REAL_ARGS]), "fill 0.0000")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name, content, message", [
    ("notes.txt", b"this is text, not a picture\n", "not an image"),
    ("cut.png", None, "cannot read"),
    ("missing.png", False, "no such file"),
])
def test_a_source_that_is_not_an_image_is_one_line_naming_it(tmp_path, name, content, message):
    path = tmp_path / name
    if content is None:  # a PNG cut short in its pixel data
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
        path.write_bytes(path.read_bytes()[:200])
    elif content:
        path.write_bytes(content)
    with pytest.raises(UsageError, match=message) as info:
        realimage.load_image(path, 64)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


# ------------------------------------------------------------------------------------ the records


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("{", "not valid JSON"),
        ('{"num_classes": 0, "splits": {}}', "num_classes"),
        ('{"num_classes": 2}', "splits"),
        ('{"num_classes": 2, "splits": {"train": {"filenames": ["a"]}}}', "shard_lengths"),
        ('{"num_classes": 2, "splits": {"train": {"filenames": ["a"], "shard_lengths": [1, 2]}}}', "1 filenames"),
        ('{"num_classes": 2, "splits": {"train": {"filenames": ["a"], "shard_lengths": [2], "num_samples": 3}}}',
         "num_samples 3"),
    ],
)
def test_a_malformed_info_is_refused_naming_the_problem(tmp_path, text, match):
    (tmp_path / dataset.INFO_JSON).write_text(text)
    with pytest.raises(dataset.DatasetError, match=match):
        dataset.read_info(tmp_path)


# ------------------------------------------------------------------------------------------- verify


def _edit(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data, indent=1))


@pytest.mark.parametrize("change, fragment", [
    (lambda root: (root / "_info.json").unlink() or (root / "_info.json").mkdir(), "_info.json is not a regular file"),
    (lambda root: (root / "params.json").unlink() or (root / "params.json").mkdir(), "params.json is not a regular file"),
    (lambda root: _edit(root / "_info.json", lambda d: d.update(num_classes=7)), "_info.json num_classes 7"),
    (lambda root: _edit(root / "_info.json", lambda d: d["splits"]["train"].update(shard_lengths="88")),
     "not lists"),
    (lambda root: _edit(root / "params.json", lambda d: d["systems"][0]["maps"][0].__setitem__(0, 0.5)),
     "params.json was changed after the build"),
    (lambda root: _edit(root / "build.json", lambda d: d["config"].update(L=17)),
     "config makes 17 classes, but build.json num_classes is 16"),
])
def test_verify_names_edited_records(tiny_copy: Path, change, fragment) -> None:
    change(tiny_copy)
    report = verify(tiny_copy)
    assert not report.ok and any(fragment in line for line in report.lines()), report.lines()


@pytest.mark.parametrize("change,expected", [
    (lambda b: b.update(config="x"), "build.json config is not an object (got 'x')"),
    (lambda b: b["shards"][0].update(num_samples="8"), "build.json records num_samples '8', not int"),
    (lambda b: b.update(num_samples="16"), "build.json num_samples '16' is not an integer"),
    (lambda b: b.update(name="two\nlines"), "build.json name 'two\\nlines' is not one line of printable text"),
])
def test_a_malformed_build_json_gives_one_line_per_fault(tiny_copy: Path, change, expected) -> None:
    _edit(tiny_copy / "build.json", change)
    result = CliRunner().invoke(cli, ["verify", str(tiny_copy)])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert any(line.endswith(expected) for line in result.output.splitlines()), result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("record, kind, fragment", [
    ("_info.json", "fifo", "_info.json is not a regular file"),
    ("params.json", "zero", "params.json is not a regular file"),
])
def test_a_record_that_is_a_fifo_or_a_device_link_is_named_not_read(tiny_copy: Path, record, kind, fragment):
    """Reading a FIFO would block verify for ever and a link to /dev/zero would fill the memory: both are named
    without being read (in a process of its own, so a hang fails the test instead of the suite)."""
    path = tiny_copy / record
    path.unlink()
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path.symlink_to("/dev/zero")
    proc = subprocess.run([sys.executable, "-m", "fracgen.cli", "verify", str(tiny_copy)], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 1 and fragment in proc.stdout + proc.stderr, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr


def _png(array) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "PNG")
    return buf.getvalue()


def _repack(root: Path, change) -> None:
    """Rewrite shard 0 with its second sample changed, and record the new checksum (what a re-packing tool
    leaves): only the content checks can tell."""
    samples = [{k: v for k, v in s.items() if k != "__url__"} for s in dataset.iter_shard(root / "train-000000.tar")]
    change(samples[1])
    digest, count, size = dataset.write_shard(root, 0, samples)
    _edit(root / "build.json", lambda b: b["shards"][0].update(sha256=digest, bytes=size, num_samples=count))


def _grey(sample: dict):
    return dataset.decode_grey(sample["png"])


@pytest.mark.parametrize("change, fragment", [
    (lambda s: s.update(png=_png(np.repeat(_grey(s)[..., None], 3, axis=2))), "colour type 2"),
    (lambda s: s.update(png=_png(_grey(s).astype(np.uint16) * 257)), "16-bit"),
    (lambda s: s.update(png=_png(_grey(s) * 2)), "other than the fractal looks' 0 and 127"),
    (lambda s: s.update(png=_png(np.zeros_like(_grey(s)))), "none lit"),
    (lambda s: s.update(png=b"\xff\xd8\xff\xe0" + s["png"][4:]), "not a PNG"),
    (lambda s: s.update(__key__="99999999"), "is not its index"),
    (lambda s: s.update(cls=b" " + s["cls"]), "plain digits"),
    (lambda s: s.update(txt=b"note"), "holds members no build writes: txt"),
    (lambda s: s.update(png=s["png"][:-1] + bytes([s["png"][-1] ^ 1])), "bad CRC in its 'IEND'"),
    (lambda s: s.update(png=s["png"][:40] + bytes([s["png"][40] ^ 1]) + s["png"][41:]), "bad CRC"),
    (lambda s: s.update(png=s["png"] + bytes(30_000)), "30000 bytes after its end"),
    (lambda s: s.update(png=s["png"][:-12]), "has no end"),
    (lambda s: s.update(png=_png(np.dstack([_grey(s)] * 4))), "colour type 6"),
])
def test_verify_names_a_repacked_sample(tiny_copy: Path, change, fragment) -> None:
    assert verify(tiny_copy).ok
    _repack(tiny_copy, change)
    report = verify(tiny_copy)
    assert not report.ok and any(fragment in line for line in report.lines()), report.lines()


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.DIRTYPE])
def test_verify_names_a_member_that_is_not_a_file(tiny_copy: Path, kind: bytes) -> None:
    # webdataset and the trainer skip such a member; fracgen never writes one, so a shard holding one was altered
    shard = tiny_copy / "train-000000.tar"
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    link = tarfile.TarInfo("00000001.png.orig")
    link.type, link.linkname = kind, "/etc/passwd"
    with tarfile.open(shard, "w", format=tarfile.USTAR_FORMAT) as tar:
        for i, (member, data) in enumerate(members):
            tar.addfile(member, io.BytesIO(data))
            if i == 2:
                tar.addfile(link)
    _edit(tiny_copy / "build.json",
          lambda b: b["shards"][0].update(sha256=dataset.sha256_file(shard), bytes=shard.stat().st_size))
    report = verify(tiny_copy)
    assert not report.ok
    assert any("'00000001.png.orig' is not a regular file" in line for line in report.lines()), report.lines()


@pytest.mark.parametrize("options,tamper", [
    (dict(L=4, patch_variants=2, size=32, points=2000), lambda c: c["maps"][0].__setitem__(0, c["maps"][0][0] + 0.5)),
    (dict(preset="rcdb", categories=3, instances=2, size=32), lambda c: c["params"].update(rings=c["params"]["rings"] + 1)),
    (dict(preset="rcdb-lpce", L=3, size=32), lambda c: c.update(u=[2 * u for u in c["u"]])),
    (dict(preset="gaussian-noise", L=3, size=16), lambda c: c.update(params={"tampered": 1})),
], ids=["1p-frac", "rcdb", "rcdb-lpce", "gaussian-noise"])
def test_a_class_record_that_disagrees_with_its_images_is_named(tmp_path: Path, options, tamper) -> None:
    """params.json is the dataset's record of every class's parameters (the card says so): a class whose record
    does not match the parameters its images carry (maps, contour draws, LPCE radii, noise parameters) fails."""
    root = tmp_path / "ds"
    build(BuildConfig(shard_size=4, seed=0, **options), root, workers=1)
    assert verify(root).ok
    _edit(root / "params.json", lambda p: tamper(p["classes"][1]))
    report = verify(root)
    assert not report.ok and any("params.json class 1" in line for line in report.lines()), report.lines()


# -------------------------------------------------------------------------------------- push-to-hub


@pytest.fixture
def hub():
    with FakeHub(tokens={TOKEN: "alice"}) as server:
        yield server


@pytest.mark.parametrize("extra, fragment", [
    (["--repo-id", "alice/b--c"], "Cannot have -- or .."),
    (["--repo-id", "alice/b.git"], ".git"),
    (["--revision", ""], "--revision must be a branch name"),
    (["--revision", "a..b"], "--revision must be a branch name"),
    (["--source-license", "cc0-1.0"], "describe the photo of a build-real dataset"),
])
def test_a_dry_run_refuses_what_the_push_would(tiny_copy: Path, hub, tmp_path: Path, extra, fragment) -> None:
    one_line(_push(tiny_copy, hub.url, "--dry-run", str(tmp_path / "dry"), *extra), fragment)
    assert hub.requests == [] and not (tmp_path / "dry").exists()


@pytest.mark.parametrize("kind, fragment", [("link", "is a link"), ("text", "is not a PNG")])
def test_a_preview_that_is_a_link_or_not_a_png_is_refused(tiny_copy: Path, hub, tmp_path: Path, kind,
                                                          fragment) -> None:
    """preview.png is published as it is: a link to a private file (or any non-PNG) would be sent to the Hub."""
    secret = tmp_path / "id_rsa"
    secret.write_text("PRIVATE KEY")
    if kind == "link":
        (tiny_copy / "preview.png").symlink_to(secret)
    else:
        (tiny_copy / "preview.png").write_text("my notes")
    one_line(_push(tiny_copy, hub.url, "--dry-run", str(tmp_path / "dry"), "--license", "mit"), fragment)
    assert hub.requests == [] and not (tmp_path / "dry").exists()


@pytest.mark.parametrize("token", [TOKEN + "\r\n", TOKEN + "\n", " " + TOKEN], ids=["crlf", "lf", "space"])
def test_a_token_with_a_line_break_is_reported_as_such(tiny_copy, hub, token):
    result = _push(tiny_copy, hub.url, "--token", token)
    one_line(result, "line break")
    assert TOKEN not in result.output and hub.requests == []


@pytest.mark.parametrize("args", [["--repo-id", "alice/b\n"], ["--license", "mit\n"]])
def test_a_newline_in_repo_id_or_license_is_refused(tiny_copy, tmp_path, args):
    base = ["push-to-hub", str(tiny_copy), "--dry-run", str(tmp_path / "dry"), "--repo-id", "alice/b"]
    result = CliRunner().invoke(cli, base + (args if "--license" in args else [*args, "--license", "mit"]))
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert not (tmp_path / "dry").exists()


@pytest.mark.parametrize("env, extra, fragment", [
    ({"HF_HUB_DOWNLOAD_TIMEOUT": "abc"}, [], "HF_HUB_DOWNLOAD_TIMEOUT must be a whole number"),
    ({"HF_HUB_DOWNLOAD_TIMEOUT": "1.5"}, [], "HF_HUB_DOWNLOAD_TIMEOUT must be a whole number"),
    ({"HF_HUB_ETAG_TIMEOUT": "0"}, [], "HF_HUB_ETAG_TIMEOUT must be a whole number"),
    ({"HF_ENDPOINT": "http://[::1"}, [], "HF_ENDPOINT must be an http(s) URL"),
    ({}, ["--endpoint", "http://127.0.0.1:1/?x=1"], "without query or fragment"),
])
def test_hub_settings_huggingface_hub_would_crash_on_are_one_line(tiny_copy: Path, tmp_path: Path, monkeypatch, env,
                                                                  extra, fragment) -> None:
    """huggingface_hub parses these when imported (int(), the URL): a bad value would be its traceback, or a
    misleading 404 for a URL with a query."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    args = ["push-to-hub", str(tiny_copy), "--repo-id", "alice/x", "--license", "mit", *extra]
    one_line(CliRunner().invoke(cli, [*args, "--dry-run", str(tmp_path / "dry")]), fragment)


# ---------------------------------------------------------------------- the attack table, end to end


@pytest.mark.slow
def test_every_case_of_the_attack_table_is_a_clean_refusal(capsys):
    """benchmarks/attack.py's table (about 100 hostile commands, each in a process of its own): one line, exit 2,
    nothing written or half-written; a failed verify prints its report and exits 1."""
    spec = importlib.util.spec_from_file_location("attack", REPO / "benchmarks" / "attack.py")
    attack = importlib.util.module_from_spec(spec)
    sys.modules["attack"] = attack  # dataclasses look their module up there
    spec.loader.exec_module(attack)
    status = attack.main(["--jobs", "4"])
    out = capsys.readouterr().out
    assert status == 0, "\n".join(line for line in out.splitlines() if not line.startswith("clean"))
    tried = int(out.split("tried ")[-1].split(",")[0])
    assert tried >= 90 and f"tried {tried}, clean {tried}" in out
