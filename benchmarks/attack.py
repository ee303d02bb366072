"""Run a table of hostile inputs against the `fracgen` command line and count the clean refusals.

Each case runs in its own process, in its own folder (with a private copy of a tiny dataset where it needs one).
A case is clean when the command (or, for a case marked ``writes``, exits 0):

- exits 2 (a refusal) or 1 (a failed verify), as the case expects;
- prints exactly one line on stderr, and no traceback anywhere;
- leaves its folder as it was: nothing written, deleted or half-written (no ``*.tmp*`` file anywhere).

Run with ``python benchmarks/attack.py [--jobs 4] [--only WORD]``; prints one line per case and last
``tried N, clean M``; exits 1 unless every case is clean. `tests/test_hostile.py` runs it in the suite.
Cases owned by another part of the tool (``owner`` other than ``builder``) are counted and shown separately.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--size", "64", "--points", "2000", "--shard-size", "8", "--workers", "1", "--no-progress"]
CONTOUR = ["--size", "32", "--shard-size", "8", "--workers", "1", "--no-progress"]  # presets that take no --points
SIERPINSKI = [[0.5, 0, 0, 0.5, 0, 0], [0.5, 0, 0, 0.5, 0.5, 0], [0.5, 0, 0, 0.5, 0.25, 0.5]]
UNWRITABLE = "/proc/fracgen-attack/x"  # a path no one can create, root included


@dataclass
class Case:
    """One hostile input.

    Attributes:
        name: what it tries.
        args: the command line after ``fracgen``; ``{ds}`` is the case's dataset copy, ``{dir}`` its folder.
        setup: prepares the case's folder (receives it and the dataset copy, or None).
        dataset: the case needs a private copy of a tiny dataset: ``tiny`` (1p-frac), ``real`` (real image) or
            ``rcdb``.
        codes: the exit statuses that count as a refusal.
        owner: the part of the tool that answers for it.
        writes: exit 0 is a correct answer too, and then may write (a record that is odd but harmless).
    """

    name: str
    args: list[str]
    setup: object = None
    dataset: str = ""
    codes: tuple[int, ...] = (2,)
    owner: str = "builder"
    writes: bool = False


def _write(rel: str, text: str):
    def setup(folder: Path, ds: Path | None) -> None:
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return setup


def _edit_json(rel: str, change):
    def setup(folder: Path, ds: Path | None) -> None:
        path = ds / rel
        data = json.loads(path.read_text())
        change(data)
        path.write_text(json.dumps(data))
    return setup


def _image(name: str, shape: tuple[int, int], value: int | None = None):
    def setup(folder: Path, ds: Path | None) -> None:
        import numpy as np
        from PIL import Image

        pixels = np.full(shape, value, np.uint8) if value is not None else \
            ((np.indices(shape).sum(0) // 6) % 2 * 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / name)
    return setup


def _both(*setups):
    def setup(folder: Path, ds: Path | None) -> None:
        for s in setups:
            s(folder, ds)
    return setup


def _set(*path_and_value):
    *path, value = path_and_value

    def change(data):
        for key in path[:-1]:
            data = data[key]
        data[path[-1]] = value
    return change


def _broken_pngs(folder: Path, ds: Path | None) -> None:
    from fracgen import dataset

    for shard in range(2):
        samples = [{k: v for k, v in s.items() if k != "__url__"} | {"png": b"\x89PNG\r\n\x1a\nbroken"}
                   for s in dataset.iter_shard(ds / dataset.shard_name(shard))]
        dataset.write_shard(ds, shard, samples)


PARAMS = "{dir}/params.json"


def cases() -> list[Case]:
    long_name = "x" * 300
    system = {"maps": SIERPINSKI}
    return [
        # ----------------------------------------------------------------- build: sizes that cannot fit
        Case("build --L 1e9", ["build", *SMALL, "--L", "1000000000", "{dir}/out"]),
        Case("build --size 200000", ["build", "--size", "200000", "--L", "8", "{dir}/out"]),
        Case("build --points 1e10", ["build", "--points", "10000000000", "--L", "8", "{dir}/out"]),
        Case("build --maps 1e6", ["build", *SMALL, "--maps", "1000000", "--L", "8", "{dir}/out"]),
        Case("build --fractals 1e6", ["build", *SMALL, "--fractals", "1000000", "{dir}/out"]),
        Case("build fractaldb --fractals 1e6", ["build", *SMALL, "--preset", "fractaldb", "--fractals", "1000000",
                                                "{dir}/out"]),
        Case("build --delta 1e308", ["build", *SMALL, "--L", "8", "--delta", "1e308", "{dir}/out"]),
        Case("build --delta nan", ["build", *SMALL, "--L", "8", "--delta", "nan", "{dir}/out"]),
        Case("build --sigma 0", ["build", *SMALL, "--sigma", "0", "{dir}/out"]),
        Case("build --seed -1", ["build", *SMALL, "--seed", "-1", "{dir}/out"]),
        Case("build OUT of 300 characters", ["build", *SMALL, "--L", "8", "{dir}/" + long_name]),
        Case("build into a file", ["build", *SMALL, "--L", "8", "{dir}/file"], _write("file", "x")),
        Case("build --shard-range past the end", ["build", *SMALL, "--L", "8", "--shard-range", "5:9", "{dir}/out"]),
        Case("build fractaldb --delta", ["build", *SMALL, "--preset", "fractaldb", "--delta", "0.2", "{dir}/out"]),
        # ----------------------------------------------------------------- build: folders that are not its own
        Case("build --resume of nothing", ["build", "--resume", "{dir}/typo"]),
        Case("build --resume of an empty internal folder", ["build", "--resume", "{dir}/out"],
             _write("out/.fracgen/stats/.keep", "")),
        Case("build --overwrite of a project with build.json {}", ["build", *SMALL, "--L", "8", "--overwrite",
                                                                   "{dir}/proj"],
             _both(_write("proj/src/main.c", "code"), _write("proj/build.json", "{}"))),
        Case("build --overwrite of a project with config.json {}", ["build", *SMALL, "--L", "8", "--overwrite",
                                                                    "{dir}/proj"],
             _both(_write("proj/src/main.c", "code"), _write("proj/.fracgen/config.json", "{}"))),
        Case("build --overwrite of a build holding NOTES.md", ["build", *SMALL, "--L", "8", "--overwrite", "{ds}"],
             _write("ds/NOTES.md", "mine"), dataset="tiny"),
        Case("build --resume with other options", ["build", "--resume", "--delta", "0.3", "{ds}"], dataset="tiny"),
        Case("build --shard-range with other options", ["build", *SMALL, "--L", "16", "--seed", "1", "--resume",
                                                        "--shard-range", "0:1", "{ds}"], dataset="tiny"),
        Case("build --resume --params other.json", ["build", "--resume", "--params", PARAMS, "{ds}"],
             _write("params.json", json.dumps(system)), dataset="tiny"),
        Case("build --resume with a damaged systems.json", ["build", "--resume", "{ds}"],
             _write("ds/.fracgen/systems.json", '{"systems": [{"maps": "x"}]}'), dataset="tiny"),
        Case("build --resume with a damaged config.json", ["build", "--resume", "{ds}"],
             _write("ds/.fracgen/config.json", "{broken"), dataset="tiny"),
        Case("build --resume copying a source from outside", ["build", "--resume", "{ds}"],
             _edit_json(".fracgen/config.json", _set("source", "../victim.png")), dataset="real"),
        # ----------------------------------------------------------------- build: params files
        Case("build --params attempts 1e999", ["build", *SMALL, "--L", "8", "--params", PARAMS, "{dir}/out"],
             _write("params.json", json.dumps(system)[:-1] + ', "attempts": 1e999}')),
        Case("build --params nested 100k deep", ["build", *SMALL, "--L", "8", "--params", PARAMS, "{dir}/out"],
             _write("params.json", "[" * 100_000 + "]" * 100_000)),
        Case("build --params 10**400 in maps", ["build", *SMALL, "--L", "8", "--params", PARAMS, "{dir}/out"],
             _write("params.json", '{"maps": [[1' + "0" * 400 + ', 0, 0, 0.5, 0, 0]]}')),
        Case("build --params 1e308 maps", ["build", *SMALL, "--L", "8", "--params", PARAMS, "{dir}/out"],
             _write("params.json", json.dumps({"maps": [[1e308, 0, 0, 1e308, 0, 0]] * 2}))),
        Case("build --params NaN sigma", ["build", *SMALL, "--L", "8", "--params", PARAMS, "{dir}/out"],
             _write("params.json", json.dumps(system)[:-1] + ', "sigma": NaN}')),
        Case("build --params beside --sigma", ["build", *SMALL, "--L", "8", "--sigma", "2", "--params", PARAMS,
                                               "{dir}/out"], _write("params.json", json.dumps(system))),
        Case("build --params not JSON", ["build", *SMALL, "--L", "8", "--params", PARAMS, "{dir}/out"],
             _write("params.json", "{not json")),
        Case("build --params missing", ["build", *SMALL, "--L", "8", "--params", "{dir}/none.json", "{dir}/out"]),
        Case("build --params /dev/zero", ["build", *SMALL, "--L", "8", "--params", "/dev/zero", "{dir}/out"]),
        Case("build-real /dev/zero", ["build-real", "/dev/zero", "{dir}/out", *SMALL[:2], "--L", "4"]),
        # ----------------------------------------------------------------- build: the family presets and their options
        Case("build rcdb --categories 0", ["build", *CONTOUR, "--preset", "rcdb", "--categories", "0", "{dir}/out"]),
        Case("build rcdb --categories 1e8", ["build", *CONTOUR, "--preset", "rcdb", "--categories", "100000000",
                                             "{dir}/out"]),
        Case("build rcdb --instances 100001", ["build", *CONTOUR, "--preset", "rcdb", "--categories", "2",
                                               "--instances", "100001", "{dir}/out"]),
        Case("build visualatom-lpce --L 1e6", ["build", *CONTOUR, "--preset", "visualatom-lpce", "--L", "1000000",
                                               "{dir}/out"]),
        Case("build rcdb --radius-perturbation", ["build", *CONTOUR, "--preset", "rcdb", "--radius-perturbation",
                                                  "scalar", "{dir}/out"]),
        Case("build rcdb --points", ["build", *CONTOUR, "--preset", "rcdb", "--points", "5000", "{dir}/out"]),
        Case("build rcdb-lpce --base-category -1", ["build", *CONTOUR, "--preset", "rcdb-lpce", "--base-category",
                                                    "-1", "{dir}/out"]),
        Case("build rcdb-lpce --delta 200", ["build", *CONTOUR, "--preset", "rcdb-lpce", "--delta", "200",
                                             "{dir}/out"]),
        Case("build rcdb --shard-range past the end", ["build", *CONTOUR, "--preset", "rcdb", "--categories", "3",
                                                       "--instances", "2", "--shard-range", "5:9", "{dir}/out"]),
        Case("build --patch-variants 0", ["build", *SMALL, "--L", "8", "--patch-variants", "0", "{dir}/out"]),
        Case("build --patch-variants 1e9", ["build", *SMALL, "--L", "8", "--patch-variants", "1000000000",
                                            "{dir}/out"]),
        Case("build --patch-variants with --style points", ["build", *SMALL, "--L", "8", "--patch-variants", "2",
                                                            "--style", "points", "{dir}/out"]),
        Case("build fractaldb --patch-variants", ["build", *SMALL, "--preset", "fractaldb", "--patch-variants", "2",
                                                  "{dir}/out"]),
        Case("build gaussian-noise --patch-variants", ["build", *CONTOUR, "--preset", "gaussian-noise", "--L", "4",
                                                       "--patch-variants", "2", "{dir}/out"]),
        Case("build 1p-frac --ofdb-weights released", ["build", *SMALL, "--L", "8", "--ofdb-weights", "released",
                                                       "{dir}/out"]),
        Case("build ofdb --ofdb-weights bogus", ["build", *SMALL, "--preset", "ofdb", "--ofdb-weights", "bogus",
                                                 "{dir}/out"]),
        Case("build fractaldb --base-min-fill 0", ["build", *SMALL, "--preset", "fractaldb", "--base-min-fill", "0",
                                                   "{dir}/out"]),
        Case("build --base-min-fill 2", ["build", *SMALL, "--L", "8", "--base-min-fill", "2", "{dir}/out"]),
        Case("build --base-min-fill nan", ["build", *SMALL, "--L", "8", "--base-min-fill", "nan", "{dir}/out"]),
        Case("build --resume of 1p-frac with --categories", ["build", "--resume", "--categories", "4", "{ds}"],
             dataset="tiny"),
        Case("build --resume of rcdb with other --categories", ["build", "--resume", "--categories", "5", "{ds}"],
             dataset="rcdb"),
        Case("build --resume of rcdb as visualatom", ["build", "--resume", "--preset", "visualatom", "{ds}"],
             dataset="rcdb"),
        Case("build --shard-range into rcdb with other --categories",
             ["build", *CONTOUR, "--preset", "rcdb", "--categories", "6", "--resume", "--shard-range", "0:1", "{ds}"],
             dataset="rcdb"),
        Case("build --overwrite of an rcdb build holding NOTES.md",
             ["build", *CONTOUR, "--preset", "rcdb", "--categories", "4", "--overwrite", "{ds}"],
             _write("ds/NOTES.md", "mine"), dataset="rcdb"),
        Case("build --resume of rcdb with --patch-variants", ["build", "--resume", "--patch-variants", "2", "{ds}"],
             dataset="rcdb"),
        *[Case(f"build --resume with config.json {key} {value!r}", ["build", "--resume", "{ds}"],
               _edit_json(".fracgen/config.json", _set(key, value)), dataset=ds)
          for ds, key, value in [("rcdb", "categories", True), ("rcdb", "categories", 2.5), ("rcdb", "size", 64.5),
                                 ("rcdb", "instances", 1.5), ("rcdb", "seed", 1.5), ("rcdb", "shard_size", 2.5),
                                 ("tiny", "patch_variants", 2.5), ("tiny", "L", 2.5), ("tiny", "delta", "0.1"),
                                 ("tiny", "base_min_fill", True), ("tiny", "preset", 3)]],
        # ----------------------------------------------------------------- build-real
        Case("build-real of a 1x1 image", ["build-real", "{dir}/one.png", "{dir}/out", *SMALL[:2], "--L", "4"],
             _image("one.png", (1, 1), 200)),
        Case("build-real of a flat image", ["build-real", "{dir}/flat.png", "{dir}/out", *SMALL[:2], "--L", "4"],
             _image("flat.png", (40, 40), 90)),
        Case("build-real of a 300x1 image", ["build-real", "{dir}/thin.png", "{dir}/out", *SMALL[:2], "--L", "4"],
             _image("thin.png", (1, 300), 10)),
        Case("build-real --delta 1e300", ["build-real", "{dir}/c.png", "{dir}/out", *SMALL[:2], "--L", "4",
                                          "--delta", "1e300"], _image("c.png", (48, 48))),
        Case("build-real of a text file", ["build-real", "{dir}/t.png", "{dir}/out", "--L", "4"],
             _write("t.png", "not an image")),
        # ----------------------------------------------------------------- search
        Case("search --points 1e10", ["search", "--points", "10000000000"]),
        Case("search --maps 1e6", ["search", "--maps", "1000000"]),
        Case("search -o ''", ["search", "--size", "64", "--points", "2000", "-o", ""]),
        Case("preview --out ''", ["preview", "{ds}", "--out", ""], dataset="tiny"),
        Case("search -o on an unwritable path", ["search", "--size", "64", "--points", "2000", "-o", UNWRITABLE]),
        Case("search --sigma 100", ["search", "--sigma", "100"]),
        # ----------------------------------------------------------------- preview
        Case("preview --out on an unwritable path", ["preview", "{ds}", "--out", UNWRITABLE], dataset="tiny"),
        Case("preview of a shard outside the folder", ["preview", "{ds}"],
             _edit_json("build.json", lambda d: d["shards"][0].update(filename="../outside/x.tar")), dataset="tiny"),
        Case("preview of /etc/passwd", ["preview", "{ds}"],
             _edit_json("build.json", lambda d: [s.update(filename="/etc/passwd") for s in d["shards"]]),
             dataset="tiny"),
        Case("preview with config size 'abc'", ["preview", "{ds}"],
             _edit_json("build.json", _set("config", "size", "abc")), dataset="tiny"),
        Case("preview with config points 1e10", ["preview", "{ds}"],
             _edit_json("build.json", _set("config", "points", 10**10)), dataset="tiny"),
        Case("preview with config seed -1", ["preview", "{ds}"],
             _edit_json("build.json", _set("config", "seed", -1)), dataset="tiny"),
        Case("preview with config 'x'", ["preview", "{ds}"], _edit_json("build.json", _set("config", "x")),
             dataset="tiny"),
        Case("preview of undecodable PNGs", ["preview", "{ds}"], _broken_pngs, dataset="tiny"),
        Case("preview --count 0", ["preview", "{ds}", "--count", "0"], dataset="tiny"),
        # ----------------------------------------------------------------- push-to-hub (nothing is contacted)
        Case("push --repo-id with a newline", ["push-to-hub", "{ds}", "--license", "mit", "--repo-id", "a/b\n", "--dry-run",
                                               "{dir}/dry"], dataset="tiny"),
        Case("push --license with a newline", ["push-to-hub", "{ds}", "--repo-id", "a/b", "--license", "mit\n",
                                               "--dry-run", "{dir}/dry"], dataset="tiny"),
        Case("push --dry-run into a user's folder", ["push-to-hub", "{ds}", "--license", "mit", "--repo-id", "a/b", "--dry-run",
                                                     "{dir}/mine"], _write("mine/README.md", "mine"), dataset="tiny"),
        Case("push with a CR/LF token", ["push-to-hub", "{ds}", "--license", "mit", "--repo-id", "a/b", "--endpoint",
                                         "http://127.0.0.1:9", "--token", "hf_abc\r\n"], dataset="tiny"),
        Case("push --dry-run on an unwritable path", ["push-to-hub", "{ds}", "--license", "mit", "--repo-id", "a/b", "--dry-run",
                                                      UNWRITABLE], dataset="tiny"),
        Case("push --dry-run with a newline in build.json's name", ["push-to-hub", "{ds}", "--license", "mit", "--repo-id", "a/b",
                                                                    "--dry-run", "{dir}/dry"],
             _edit_json("build.json", _set("name", "a\nb")), dataset="tiny", codes=(0, 2), owner="formats",
             writes=True),
        # ----------------------------------------------------------------- verify (the formats side answers)
        Case("verify with config 'x'", ["verify", "{ds}"], _edit_json("build.json", _set("config", "x")),
             dataset="tiny", codes=(1, 2), owner="formats"),
        Case("verify with num_samples '8'", ["verify", "{ds}"],
             _edit_json("build.json", lambda d: d["shards"][0].update(num_samples="8")), dataset="tiny",
             codes=(1, 2), owner="formats"),
        Case("verify without params.json", ["verify", "{ds}"],
             lambda folder, ds: (ds / "params.json").unlink(), dataset="tiny", codes=(1,), owner="formats"),
    ]


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            out[str(path.relative_to(folder))] = (st.st_size, st.st_mtime_ns) if name in filenames else (-1, 0)
    return out


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(PYTHONPATH=str(ROOT), NUMBA_CACHE_DIR=str(ROOT / ".cache" / "numba"), HF_HUB_DISABLE_XET="1",
               HF_HOME=str(home / "hf"), HF_HUB_DISABLE_TELEMETRY="1")
    return env


def run_case(case: Case, folder: Path, datasets: dict[str, Path], env: dict[str, str]) -> tuple[bool, str]:
    """Run one case in ``folder``; returns (clean, why not)."""
    folder.mkdir(parents=True)
    ds = None
    if case.dataset:
        ds = folder / "ds"
        shutil.copytree(datasets[case.dataset], ds, symlinks=True)
    if case.setup is not None:
        case.setup(folder, ds)
    args = [a.replace("{dir}", str(folder)).replace("{ds}", str(ds)) for a in case.args]
    before = _snapshot(folder)
    start = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", "fracgen.cli", *args], env=env, capture_output=True,
                              text=True, timeout=60, cwd=folder)
    except subprocess.TimeoutExpired:
        return False, "no answer in 60 s"
    lines = proc.stderr.strip().splitlines()
    why = []
    if proc.returncode not in case.codes:
        why.append(f"exit {proc.returncode}")
    if "Traceback" in proc.stderr + proc.stdout:
        why.append("traceback")
    success = proc.returncode == 0 and case.writes
    # a failed verify answers with its report on stdout (first line "BROKEN: ...", one line per problem), exit 1
    failed_verify = proc.returncode == 1 and 1 in case.codes and proc.stdout.startswith("BROKEN:") and not lines
    if len(lines) != 1 and not success and not failed_verify:
        why.append(f"{len(lines)} stderr lines")
    after = _snapshot(folder)
    if after != before and not success:
        changed = sorted(set(after.items()) ^ set(before.items()))
        why.append(f"folder changed ({', '.join(sorted({c[0] for c in changed})[:3])})")
    message = lines[-1][:150] if lines else proc.stdout.strip()[:150]
    return not why, f"({time.perf_counter() - start:.1f} s) " + (", ".join(why) + ": " if why else "") + message


def make_datasets(base: Path) -> dict[str, Path]:
    """The tiny datasets the cases copy: 1p-frac (L 16, 2 shards), real-image (one shard of two), rcdb (4 x 1)."""
    sys.path.insert(0, str(ROOT))
    from fracgen.build import BuildConfig, build

    tiny = base / "tiny"
    build(BuildConfig(L=16, size=64, points=5000, shard_size=8), tiny, workers=1)
    _image("c.png", (48, 48))(base, None)
    real = base / "real"
    build(BuildConfig(preset="real", L=4, size=32, shard_size=2, edges="none"), real, workers=1,
          source=base / "c.png", shard_range=(0, 1))
    (base / "victim.png").write_bytes((base / "c.png").read_bytes())
    rcdb = base / "rcdb"
    build(BuildConfig(preset="rcdb", categories=4, size=32, shard_size=2), rcdb, workers=1)
    return {"tiny": tiny, "real": real, "rcdb": rcdb}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=4, help="cases run at once")
    parser.add_argument("--only", default=None, help="run the cases whose name contains this")
    parser.add_argument("--owner", default=None, help="run only the cases of this owner (builder, formats)")
    args = parser.parse_args(argv)
    table = [c for c in cases() if (args.only is None or args.only in c.name)
             and (args.owner is None or c.owner == args.owner)]
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fracgen-attack-") as tmp:
        base = Path(tmp)
        datasets = make_datasets(base / "data")
        print(f"datasets built in {time.perf_counter() - start:.0f} s", flush=True)
        env = _env(base)
        work = base / "cases"
        work.mkdir()
        with ThreadPoolExecutor(args.jobs) as pool:
            results = list(pool.map(lambda ic: run_case(ic[1], work / f"{ic[0]:03d}", datasets, env),
                                    enumerate(table)))
        stray = [str(p) for p in base.rglob("*.tmp*")]
    for case, (clean, text) in zip(table, results, strict=True):
        print(f"{'clean' if clean else 'NOT CLEAN'}  [{case.owner}] {case.name}: {text}")
    if stray:
        print(f"half-written files left: {stray[:5]}")
    clean = sum(ok for ok, _ in results)
    for owner in sorted({c.owner for c in table}):
        mine = [ok for c, (ok, _) in zip(table, results, strict=True) if c.owner == owner]
        print(f"{owner}: tried {len(mine)}, clean {sum(mine)}")
    print(f"tried {len(table)}, clean {clean} ({time.perf_counter() - start:.0f} s)")
    return 0 if clean == len(table) and not stray else 1


if __name__ == "__main__":
    sys.exit(main())
