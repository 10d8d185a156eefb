"""docs/tutorial.md's code blocks: read them, run them in order, refresh the ONNX files of the
PyTorch blocks (tests/test_tutorial.py runs the tutorial with this module).

    python tools/tutorial.py run DIR      # every block, in order, in DIR (prints what each printed)
    python tools/tutorial.py refresh [DIR] # the same (in a temporary directory), then every ```text
                                          # block after a block that runs is replaced by what it
                                          # printed, the page names the commit of the code that
                                          # printed it, and the pictures it shows are copied
    python tools/tutorial.py fixtures     # needs torch: the files the PyTorch blocks write,
                                          # into tests/fixtures/tutorial/ (CI runs without torch)

A fenced block's info string says what it is: ```sh runs through ``bash -e`` and ```python
through this interpreter, in the tutorial's directory; ```python torch needs PyTorch (without
it the committed files it names stand in for it); ```LANG file=NAME is a file the reader saves
as NAME; every other block (```text: what the reader sees) is not run.

``--shorten F`` (and tests/test_tutorial.py) divides every epoch count by F, rounded up, and
gives a ``edgedfa train`` that relies on the default epochs ``--epochs 30/F``: the same commands
in a fraction of the time, their figures no longer those the page quotes.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, replace

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TUTORIAL = os.path.join(ROOT, "docs", "tutorial.md")
FIXTURES = os.path.join(ROOT, "tests", "fixtures", "tutorial")
RUN = ("sh", "python")  # the languages that run
SHOWN = ("text", "toml")  # the languages shown only (or saved, with file=)
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.M | re.S)
PICTURES = {"report/curves.png": "docs/tutorial/curves.png"}  # made by the page -> shown in it


@dataclass(frozen=True)
class Block:
    lang: str
    tags: tuple
    code: str
    line: int  # 1-based line of the opening fence in the tutorial
    file: str | None = None  # file=NAME: saved, not run
    span: tuple = (0, 0)  # where the code lies in the tutorial's text

    @property
    def runs(self) -> bool:
        return self.file is None and self.lang in RUN

    @property
    def needs_torch(self) -> bool:
        return self.runs and "torch" in self.tags

    def where(self) -> str:
        return f"docs/tutorial.md line {self.line} (```{' '.join((self.lang,) + self.tags)})"


def blocks(path: str = TUTORIAL) -> list:
    """The fenced blocks of the tutorial, in order."""
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    out = []
    for m in FENCE.finditer(text):
        words = m.group(1).split()
        lang, tags = (words[0], tuple(words[1:])) if words else ("", ())
        file = next((t.split("=", 1)[1] for t in tags if t.startswith("file=")), None)
        out.append(Block(lang, tuple(t for t in tags if not t.startswith("file=")), m.group(2),
                         text.count("\n", 0, m.start()) + 1, file, m.span(2)))
    return out


def quoted(all_blocks: list) -> dict:
    """Index of a block that runs -> the ```text block right after it (what it prints)."""
    return {i: nxt for i, (b, nxt) in enumerate(zip(all_blocks, all_blocks[1:]))
            if b.runs and not b.needs_torch and nxt.lang == "text"}


def _fewer(n: str, factor: int) -> str:
    return str(math.ceil(int(n) / factor))


def shorten(block: Block, factor: int) -> Block:
    """The block with every epoch count divided by ``factor`` (rounded up); unchanged for 1."""
    if factor == 1 or not (block.runs and block.lang == "sh" or block.lang == "toml"):
        return block
    code = re.sub(r"(--epochs\s+|^epochs\s*=\s*)(\d+)", lambda m: m.group(1) + _fewer(m.group(2), factor),
                  block.code, flags=re.M)
    from edgedfa.train import TrainConfig

    default = f" --epochs {_fewer(TrainConfig().epochs, factor)}"
    # a one-line `edgedfa train` that trains for the default epochs
    code = re.sub(r"^(\s*edgedfa train\b(?!.*(--epochs|--config|--resume|--print-config|\\$)).*)$",
                  lambda m: m.group(1) + default, code, flags=re.M)
    return replace(block, code=code)


def environment() -> dict:
    """This interpreter's ``python`` and ``edgedfa`` first on PATH; plots without a display."""
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONUNBUFFERED="1")
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    return env


def run_block(block: Block, cwd: str, timeout: float = 900) -> subprocess.CompletedProcess | None:
    """Run one block in ``cwd`` (stdout and stderr merged, as a terminal shows them); a file
    block is written there instead, a shown one skipped (None)."""
    if block.file is not None:
        with open(os.path.join(cwd, block.file), "w", encoding="utf-8") as fh:
            fh.write(block.code)
    if not block.runs:
        return None
    argv = ["bash", "-e", "-c", block.code] if block.lang == "sh" else [sys.executable, "-c", block.code]
    return subprocess.run(argv, cwd=cwd, env=environment(), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=timeout)


def fixture_names(block: Block) -> list:
    """The committed files that stand in for a PyTorch block: those it names."""
    return sorted(f for f in os.listdir(FIXTURES) if re.search(rf"\b{re.escape(f)}\b", block.code))


def substitute(block: Block, cwd: str) -> list:
    """Copy the committed files a PyTorch block would write into ``cwd``; their names."""
    names = fixture_names(block)
    for name in names:
        shutil.copyfile(os.path.join(FIXTURES, name), os.path.join(cwd, name))
    return names


def have_torch() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch") is not None


def run_all(cwd: str, factor: int = 1) -> list:
    """The whole tutorial in ``cwd``, printing each block's output; the outputs (None for a
    block that does not run); stops at the first failure."""
    torch, outputs = have_torch(), []
    for block in map(lambda b: shorten(b, factor), blocks()):
        if block.needs_torch and not torch:
            print(f"==== {block.where()}: no torch, copied {', '.join(substitute(block, cwd))}")
            outputs.append(None)
            continue
        done = run_block(block, cwd)
        outputs.append(None if done is None else done.stdout)
        if done is None:
            continue
        print(f"==== {block.where()}\n{block.code}---- exit {done.returncode}\n{done.stdout}", flush=True)
        if done.returncode:
            sys.exit(f"{block.where()} failed")
    return outputs


def code_commit() -> str:
    """The last commit of the code that prints the outputs; refused when it has local changes."""
    paths = ["edgedfa", "hdl_models", "pyproject.toml"]
    git = lambda *a: subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    if git("status", "--porcelain", "--", *paths).strip():
        sys.exit(f"refresh: {', '.join(paths)} have uncommitted changes: commit them first")
    return git("log", "-1", "--format=%h", "HEAD", "--", *paths).strip()


def refresh(cwd: str | None) -> None:
    """Run the tutorial as written in ``cwd`` (a temporary directory when None) and quote what
    each block printed, naming the commit; copy the pictures the page shows."""
    commit = code_commit()
    with tempfile.TemporaryDirectory() as tmp:
        cwd = cwd or tmp
        os.makedirs(cwd, exist_ok=True)
        outputs = run_all(cwd)
        for made, shown in PICTURES.items():
            os.makedirs(os.path.dirname(os.path.join(ROOT, shown)), exist_ok=True)
            shutil.copyfile(os.path.join(cwd, made), os.path.join(ROOT, shown))
    with open(TUTORIAL, encoding="utf-8") as fh:
        text = fh.read()
    all_blocks = blocks()
    for i, shown in sorted(quoted(all_blocks).items(), key=lambda kv: -kv[1].span[0]):
        text = text[:shown.span[0]] + outputs[i] + text[shown.span[1]:]
    text = re.sub(r"(the code of commit\s+)`[^`]*`", lambda m: f"{m.group(1)}`{commit}`", text)
    with open(TUTORIAL, "w", encoding="utf-8") as fh:
        fh.write(text)
    print(f"refreshed {len(quoted(all_blocks))} outputs in {os.path.relpath(TUTORIAL, ROOT)} (code of commit {commit})")


def write_fixtures() -> None:
    """Run each PyTorch block alone in a fresh directory and keep the ONNX files it wrote."""
    os.makedirs(FIXTURES, exist_ok=True)
    for block in (b for b in blocks() if b.needs_torch):
        with tempfile.TemporaryDirectory() as tmp:
            done = run_block(block, tmp)
            if done.returncode:
                sys.exit(f"{block.where()} failed:\n{done.stdout}")
            for name in sorted(os.listdir(tmp)):
                if name.endswith(".onnx"):
                    shutil.copyfile(os.path.join(tmp, name), os.path.join(FIXTURES, name))
                    print(f"wrote {os.path.relpath(os.path.join(FIXTURES, name), ROOT)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="run every block in a directory")
    run.add_argument("dir")
    run.add_argument("--shorten", type=int, default=1, metavar="F", help="divide every epoch count by F")
    ref = sub.add_parser("refresh", help="run the tutorial and quote what each block printed")
    ref.add_argument("dir", nargs="?", help="run it there and keep the files (default: a temporary directory)")
    sub.add_parser("fixtures", help="refresh tests/fixtures/tutorial (needs torch)")
    args = ap.parse_args()
    if args.cmd == "run":
        os.makedirs(args.dir, exist_ok=True)
        run_all(args.dir, args.shorten)
    elif args.cmd == "refresh":
        refresh(args.dir)
    else:
        write_fixtures()


if __name__ == "__main__":
    main()
