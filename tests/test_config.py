"""BuildConfig (fracgen/config.py): every option resolved once and checked, from the command line or a mapping,
and the memory check: what cannot fit is refused with the figure and what fits, and that advice holds."""

import json
import time

import pytest
from click.testing import CliRunner
from conftest import TINY, one_line

from fracgen import dataset
from fracgen.build import build
from fracgen.cli import cli
from fracgen.config import BuildConfig, check_memory, memory_needs
from fracgen.errors import UsageError

GIB = 1 << 30


def _digests(root) -> dict[str, str]:
    return {p.name: dataset.sha256_file(p) for p in sorted(root.glob("train-*.tar"))}


def test_options_from_a_mapping_give_the_cli_config():
    assert BuildConfig.checked(dict(TINY)) == BuildConfig(**TINY)


def test_negative_zero_delta_is_zero(tmp_path):
    tiny = {"L": 2, "size": 32, "points": 500, "shard_size": 2}
    build(BuildConfig(**tiny, delta=0.0), tmp_path / "zero", workers=1)
    result = CliRunner().invoke(cli, ["build", "--L", "2", "--size", "32", "--points", "500", "--shard-size", "2",
                                      "--workers", "1", "--no-progress", "--delta", "-0.0", str(tmp_path / "neg")])
    assert result.exit_code == 0, result.output
    assert _digests(tmp_path / "neg") == _digests(tmp_path / "zero")
    with pytest.raises(Exception, match="--delta"):
        BuildConfig(**tiny, delta=-0.0).validate()


# --------------------------------------------------------------------------------------------- the memory check


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
    of VisualAtom-LPCE need about 18 GB, not the 10 MB that 96 bytes a sample would say."""
    measured = {"visualatom-lpce": 180_000, "rcdb-lpce": 11_000, "visualatom": 4_000, "gaussian-noise": 4_500}
    cfg = BuildConfig(size=64, **options, **{classes: 100_000})
    assert memory_needs(cfg)["classes"] >= 100_000 * measured[options["preset"]]


def test_resuming_a_recorded_build_too_large_for_the_machine_is_the_memory_refusal(tmp_path):
    build_dir = tmp_path / "huge"
    build(BuildConfig(L=4, size=32, points=500, shard_size=2), build_dir, workers=1, shard_range=(0, 1))
    path = build_dir / ".fracgen" / "config.json"
    path.write_text(json.dumps(dict(json.loads(path.read_text()), L=10**12)))
    start = time.monotonic()
    one_line(CliRunner().invoke(cli, ["build", "--resume", str(build_dir)]), "--L 1000000000000 needs about")
    assert time.monotonic() - start < 10


@pytest.mark.parametrize("record,fragment", [
    ("x", "where: config is not an object"),
    ({"preset": "nope"}, "where: unknown preset 'nope' (known: 1p-frac, "),
    ({"preset": ["x"]}, "where: unknown preset ['x'] (known: "),
    ({k: v for k, v in BuildConfig(**TINY).to_json().items() if k not in ("delta", "perturbation")},
     "where: config lacks delta, perturbation"),
    (dict(BuildConfig(**TINY).to_json(), seed=-1), "where: config is damaged (--seed must be >= 0, got -1)"),
    (dict(BuildConfig(**TINY).to_json(), size="abc"), "where: config is damaged (--size must be an integer"),
    (dict(BuildConfig(**TINY).to_json(), sigma=10**400), "where: config is damaged (--sigma must be a finite number, "
     "a number a float holds (within +-1.8e308), got an integer of 1329 bits)"),
    (dict(BuildConfig(**TINY).to_json(), L=-10**400), "where: config is damaged (--L must be >= 1, a number a float "
     "holds"),
])
def test_a_record_is_read_by_one_parser_that_names_what_is_wrong(record, fragment):
    with pytest.raises(UsageError) as err:
        BuildConfig.from_record(record, where="where")
    assert str(err.value).startswith(fragment) and "\n" not in str(err.value), str(err.value)


def test_a_record_lacking_only_options_added_later_reads_leniently_not_strictly():
    record = {k: v for k, v in BuildConfig(**TINY).to_json().items() if k != "min_fill"}
    assert BuildConfig.from_record(record, where="w", strict=False) == BuildConfig(**TINY)
    with pytest.raises(UsageError, match="^w: config lacks min_fill$"):
        BuildConfig.from_record(record, where="w")
    assert BuildConfig.from_record(BuildConfig(**TINY).to_json(), where="w") == BuildConfig(**TINY)
