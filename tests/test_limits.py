"""Options whose product would not fit are refused before anything is allocated or written, with the figure and
what fits; names the system cannot take are one line (issue 9, item 11)."""

import pytest
from click.testing import CliRunner
from conftest import one_line

from fracgen.cli import cli
from fracgen.config import BuildConfig, check_memory
from fracgen.errors import UsageError

GIB = 1 << 30
SMALL = ["--size", "64", "--points", "2000", "--shard-size", "8", "--workers", "1", "--no-progress"]


def test_the_refusal_says_what_fits_and_that_fits():
    cfg = BuildConfig(L=10**9, size=64, points=2000)
    with pytest.raises(UsageError, match=r"16.0 GiB are available: at most --L (\d+) fits") as err:
        check_memory(cfg, available=16 * GIB)
    fits = int(str(err.value).split("at most --L ")[1].split()[0])
    check_memory(BuildConfig(L=fits, size=64, points=2000), available=16 * GIB)  # the advice holds
    with pytest.raises(UsageError, match="--L"):
        check_memory(BuildConfig(L=fits * 2, size=64, points=2000), available=16 * GIB)
    with pytest.raises(UsageError, match="fewer --workers"):
        check_memory(BuildConfig(size=20000), workers=16, available=16 * GIB)
    check_memory(BuildConfig(), workers=16, available=16 * GIB)  # the defaults fit a modest machine


def test_an_out_name_over_255_characters_is_one_line(tmp_path):
    result = CliRunner().invoke(cli, ["build", *SMALL, "--L", "8", str(tmp_path / ("x" * 300))])
    one_line(result, "File name too long")
    result = CliRunner().invoke(cli, ["build", "--resume", str(tmp_path / ("x" * 300))])
    one_line(result, "File name too long")


def test_search_refuses_what_cannot_fit():
    one_line(CliRunner().invoke(cli, ["search", "--points", "10000000000"]), "--points 10000000000 needs about")


@pytest.mark.parametrize("options,option", [
    (dict(preset="rcdb", categories=10**9), "--categories"),
    (dict(preset="visualatom", categories=10**4, instances=10**5), "--instances"),
    (dict(L=1000, patch_variants=10**9), "--patch-variants"),
    (dict(preset="ofdb", fractals=2, patch_variants=10**9), "--patch-variants"),
])
def test_the_refusal_names_the_option_that_grew_and_its_advice_holds(options, option):
    """Categories and patch variants multiply the samples too: the refusal names them (not an option left at
    its default, with 'at most 0 fits'), and the value it says fits does fit."""
    cfg = BuildConfig(size=64, points=2000, **options)
    with pytest.raises(UsageError, match=rf"^{option} \d+ needs about .* at most {option} (\d+) fits") as err:
        check_memory(cfg, available=16 * GIB)
    fits = int(str(err.value).split(f"at most {option} ")[1].split()[0])
    name = option[2:].replace("-", "_")
    check_memory(BuildConfig(size=64, points=2000, **dict(options, **{name: fits})), available=16 * GIB)


@pytest.mark.parametrize("options,classes", [
    # measured on this machine (peak RSS of the whole command, python 3.11): VisualAtom-LPCE keeps a u per start
    # vertex (up to 1,000) for every class, about 180 KB a class at 902 vertices; a contour category about 4 KB
    (dict(preset="visualatom-lpce"), "L"),
    (dict(preset="rcdb-lpce"), "L"),
    (dict(preset="visualatom"), "categories"),
    (dict(preset="gaussian-noise"), "L"),
])
def test_the_estimate_counts_each_presets_class_records(options, classes):
    """What a class costs the parent (its record in params.json) is counted for every preset: 100,000 classes
    of VisualAtom-LPCE need about 18 GB, which the old 96 bytes a sample put at 10 MB."""
    measured = {"visualatom-lpce": 180_000, "rcdb-lpce": 11_000, "visualatom": 4_000, "gaussian-noise": 4_500}
    cfg = BuildConfig(size=64, **options, **{classes: 100_000})
    from fracgen.config import memory_needs

    assert memory_needs(cfg)["classes"] >= 100_000 * measured[options["preset"]]


def test_resuming_a_recorded_build_too_large_for_the_machine_is_the_memory_refusal(tmp_path):
    import json
    import time

    build_dir = tmp_path / "huge"
    from fracgen.build import build

    build(BuildConfig(L=4, size=32, points=500, shard_size=2), build_dir, workers=1, shard_range=(0, 1))
    path = build_dir / ".fracgen" / "config.json"
    path.write_text(json.dumps(dict(json.loads(path.read_text()), L=10**12)))
    start = time.monotonic()
    one_line(CliRunner().invoke(cli, ["build", "--resume", str(build_dir)]), "--L 1000000000000 needs about")
    assert time.monotonic() - start < 10
