"""Run the builder and publishing blocks of the README and of every page of docs/, in order, at toy size.

`make readme-check` (and `tests/test_readme.py`) run this. What it does, so a reader knows what "checked" means:

- Each page runs in a scratch folder of its own, from where a new user stands after `make demo`: it runs the
  demo's recipe, read from the Makefile (the build of `out/1p-frac` at toy size, then `fracgen verify`).
- Every fenced shell block (of the README, after the first: the set-up one, `make demo`, `make test`) is read line
  by line, with `\\` continuations joined and `# comments` dropped. Lines that call `fracgen` run, in order, in
  the scratch folder, and must exit 0. Other lines (`make`, `python -m train`, `torchrun`, `pip`, uploads that
  need a token) are listed as not run: they need a GPU, the network or minutes of CPU. A line that is not valid
  shell fails.
- `fracgen build` and `build-real` run at toy size: `--L`, `--fractals`, `--instances`, `--categories`, `--size`
  and `--points` are capped (the preset's own records say which options it takes, so a missing `--size` is
  added only where the preset reads it; a `--shard-range` command keeps its class counts, which decide the
  shards). Folders, options and their order stay as written, so two blocks that
  write into one folder still collide here as they would for the user.
- `photo.jpg`, the image the README's `build-real` examples name, is made first (any photo works for a user).
- Fenced `python` blocks run too (in a fresh interpreter, in the scratch folder), except a block right after an
  HTML comment `<!-- readme-check: skip (why) -->`, which is listed as not run with the reason.

Prints one line per command and a closing `N passed, M failed` line; exits 1 when anything failed, 2 when
`--work` names a folder that is not empty (the blocks write `photo.jpg` and `out/` there).
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOY_CAPS = {"L": 8, "fractals": 3, "instances": 4, "categories": 3, "size": 64, "points": 5000, "patch-variants": 2}
SKIP_MARK = re.compile(r"<!--\s*readme-check:\s*skip\s*(.*?)-->")


def blocks(text: str) -> list[tuple[str, str, str | None]]:
    """The fenced blocks of a Markdown text: (language, body, skip reason or None)."""
    out, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        fence = re.match(r"^```(\w*)\s*$", lines[i])
        if not fence:
            i += 1
            continue
        prev = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        skip = SKIP_MARK.search(prev)
        body = []
        i += 1
        while i < len(lines) and not lines[i].startswith("```"):
            body.append(lines[i])
            i += 1
        out.append((fence.group(1) or "sh", "\n".join(body), skip.group(1).strip("() ") if skip else None))
        i += 1
    return out


def commands(body: str) -> list[str]:
    """Shell commands of a block: continuations joined, comments and blank lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", body)
    cmds = []
    for line in joined.splitlines():
        try:
            words = shlex.split(line, comments=True)
        except ValueError:  # not a shell line (a listing in a plain block): shown as not run
            cmds.append(line.strip())
            continue
        if words:
            cmds.append(shlex.join(words))
    return cmds


def toy(words: list[str]) -> list[str]:
    """A `fracgen build`/`build-real` command at toy size (other commands unchanged)."""
    from fracgen.presets import DEFAULT_PRESET, families

    if len(words) < 2 or words[1] not in ("build", "build-real"):
        return words
    # `--L=1000` is `--L 1000` to click: split it so that it is capped like the other spelling
    words = [part for w in words for part in (w.split("=", 1) if w.startswith("--") and "=" in w else [w])]
    known = families()
    preset = next((f.name for f in known.values() if f.takes_source), "") if words[1] == "build-real" \
        else DEFAULT_PRESET
    if "--preset" in words[:-1]:
        preset = words[words.index("--preset") + 1]
    accepted = known[preset].options if preset in known else frozenset()
    for option, cap in TOY_CAPS.items():
        flag = f"--{option}"
        if flag in words and "--shard-range" in words and option in ("L", "fractals", "instances", "categories"):
            continue  # the shard count decides which ranges exist: keep the example's
        if flag in words:
            k = words.index(flag) + 1
            try:
                words[k] = str(min(cap, int(float(words[k]))))
            except (ValueError, IndexError):
                pass
        elif option.replace("-", "_") in accepted and option in ("size", "points"):
            words[2:2] = [flag, str(cap)]
    return words


def make_photo(where: Path) -> None:
    """A small photo-like image for the `build-real` examples."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:96, 0:128]
    img = np.stack([120 + 80 * np.sin(x / 9.0), 100 + 90 * np.cos(y / 7.0), 60 + 40 * np.sin((x + y) / 13.0)], -1)
    img[30:70, 40:90] = (230, 200, 40)
    img += rng.normal(0, 8, img.shape)
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(where / "photo.jpg", quality=90)


def demo_commands(makefile: Path = REPO / "Makefile") -> list[str]:
    """`make demo`'s recipe as the user's shell runs it, read from the Makefile so the check follows it."""
    recipe = re.search(r"^demo:.*\n((?:\t.*\n)+)", makefile.read_text(), re.M)
    out = re.search(r"^OUT \?= (\S+)", makefile.read_text(), re.M)
    if not recipe or not out:
        raise SystemExit(f"{makefile}: no demo recipe or OUT default to run")
    return [line.strip().replace("$(BIN)/", "").replace("$(OUT)", out.group(1)) for line in recipe.group(1).splitlines()]


def fracgen_argv() -> list[str]:
    """The `fracgen` of the interpreter running this (its venv's entry point), not whichever is first on PATH."""
    exe = Path(sys.executable).parent / "fracgen"
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "fracgen.cli"]


def run(pages: list[Path], work: Path, verbose: bool = False) -> int:
    """Run each page's blocks in a folder of its own under ``work``; returns the number of failures."""
    failed = 0
    for page in pages:
        folder = work / page.stem
        folder.mkdir()
        print(f"== {page.relative_to(REPO) if page.is_relative_to(REPO) else page}")
        failed += run_page(page, folder, verbose, setup_block=page.name == "README.md")
    return failed


def run_page(readme: Path, work: Path, verbose: bool = False, setup_block: bool = True) -> int:
    """Run one page's blocks in ``work``; returns the number of failures."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    env.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach the network
    make_photo(work)
    passed = failed = 0
    todo: list[tuple[str, str | None]] = [(c, None) for c in demo_commands()]
    for i, (lang, body, skip) in enumerate(blocks(readme.read_text())):
        if i == 0 and setup_block:
            continue  # the set-up block: make demo / make test
        if lang == "python":
            todo.append(("python:" + body, skip))
        elif lang in ("sh", "bash", "console", "shell"):  # ```text blocks are listings, not commands
            todo.extend((c, skip) for c in commands(body))
    for cmd, skip in todo:
        if cmd.startswith("python:"):
            label = "python block: " + (cmd[7:].strip().splitlines() or ["(empty)"])[0][:70]
            if skip is not None:
                print(f"not run  {label} ({skip})")
                continue
            argv = [sys.executable, "-c", cmd[7:]]
        else:
            try:
                words = shlex.split(cmd)
            except ValueError as e:
                failed += 1
                print(f"FAILED   {cmd} (not a valid shell line: {e})")
                continue
            if words[:2] == ["fracgen", "push-to-hub"] and "--dry-run" not in words:
                skip = skip or "uploads: needs a token and the network"
            if skip is not None or not words or words[0] != "fracgen":
                print(f"not run  {cmd}" + (f" ({skip})" if skip else ""))
                continue
            argv = fracgen_argv() + toy(words)[1:]
            label = shlex.join(["fracgen", *toy(words)[1:]])
        try:
            proc = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=600)
        except subprocess.TimeoutExpired:
            proc = subprocess.CompletedProcess(argv, 124, "", "no answer in 600 s")
        if proc.returncode == 0:
            passed += 1
            print(f"ok       {label}")
        else:
            failed += 1
            tail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-3:]
            print(f"FAILED   {label} (exit {proc.returncode})")
            for line in tail:
                print(f"         {line}")
        if verbose and proc.stdout.strip():
            print("\n".join("         " + s for s in proc.stdout.strip().splitlines()[-5:]))
    print(f"{passed} passed, {failed} failed")
    return failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readme", type=Path, action="append", default=None,
                        help="a page to check (repeatable; default: README.md, then docs/*.md)")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    pages = args.readme or [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    if args.work is not None:
        if args.work.exists() and (not args.work.is_dir() or any(args.work.iterdir())):
            print(f"readme_check: --work {args.work} is not empty: the README's blocks write photo.jpg and out/ "
                  "there (and replace out/1p-frac); give a new or empty folder", file=sys.stderr)
            return 2
        args.work.mkdir(parents=True, exist_ok=True)
        return 1 if run(pages, args.work, args.verbose) else 0
    with tempfile.TemporaryDirectory(prefix="readme-check-") as work:
        return 1 if run(pages, Path(work), args.verbose) else 0


if __name__ == "__main__":
    sys.exit(main())
