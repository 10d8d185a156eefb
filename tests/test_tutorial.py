"""docs/tutorial.md runs: every ```sh block through bash -e and every ```python block through
this interpreter, in order, in one temporary directory (tools/tutorial.py reads them), with
every epoch count divided by SHORTEN to keep the test quick (the quoted figures are those of
the page as written: `python tools/tutorial.py refresh`). The PyTorch blocks run when torch is
importable (their ONNX files must then equal the committed ones); without torch, as in CI, the
committed files of tests/fixtures/tutorial stand in."""

import os
import re
import sys

import numpy as np
import onnx
from onnx import numpy_helper

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import tutorial  # noqa: E402  (tools/ is no package)

BLOCKS = tutorial.blocks()
SHORTEN = 5  # epochs 10 -> 2, the default 30 -> 6


def weights(path) -> dict:
    """name -> array of an ONNX file's initializers."""
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer}


def same_weights(made: str, committed: str) -> bool:
    a, b = weights(made), weights(committed)
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def fail_message(block, done) -> str:
    return f"{block.where()} exited {done.returncode}:\n{block.code}\n--- output\n{done.stdout[-6000:]}"


def untouched_by_training(index: int) -> bool:
    """A block before the first training, which shortening leaves as it is: its quote must match."""
    first_train = next(i for i, b in enumerate(BLOCKS) if b.runs and "edgedfa train" in b.code)
    return index < first_train and tutorial.shorten(BLOCKS[index], SHORTEN) == BLOCKS[index]


def run_pytorch_block(block, cwd, torch: bool) -> None:
    if not torch:
        assert tutorial.substitute(block, cwd), f"{block.where()}: no committed file stands in for it"
        return
    done = tutorial.run_block(block, cwd)
    assert done.returncode == 0, fail_message(block, done)
    for name in tutorial.fixture_names(block):
        assert same_weights(os.path.join(cwd, name), os.path.join(tutorial.FIXTURES, name)), \
            f"{name} differs from tests/fixtures/tutorial/{name}: rerun python tools/tutorial.py fixtures"


def test_the_tutorial_runs_end_to_end(tmp_path):
    torch, quotes = tutorial.have_torch(), tutorial.quoted(BLOCKS)
    for i, block in enumerate(BLOCKS):
        if block.needs_torch:
            run_pytorch_block(block, str(tmp_path), torch)
            continue
        done = tutorial.run_block(tutorial.shorten(block, SHORTEN), str(tmp_path))
        if done is None:
            continue
        assert done.returncode == 0, fail_message(block, done)
        assert bool(done.stdout) == (i in quotes), f"{block.where()}: what it prints and its quote disagree"
        if i in quotes and untouched_by_training(i):
            assert quotes[i].code == done.stdout, f"{block.where()}: the quoted output is stale"
    assert (tmp_path / "report" / "curves.png").stat().st_size > 0
    assert (tmp_path / "runs" / "cnn-bp" / "best.npz").exists() and (tmp_path / "cnn_int.onnx").exists()
    assert (tmp_path / "sweeps" / "cnn" / "results.csv").read_text().count("\n") == 5  # header + 4 trials


def test_every_block_is_run_saved_or_shown():
    for block in BLOCKS:
        assert block.lang in tutorial.RUN + tutorial.SHOWN, f"{block.where()}: a ```{block.lang} block is never run"
        assert set(block.tags) <= {"torch"}, f"{block.where()}: unknown tags {block.tags}"
    langs = [b.lang for b in BLOCKS if b.runs]
    assert langs.count("sh") >= 10 and langs.count("python") >= 5


def test_every_output_is_a_quote_of_the_block_before_it():
    quotes = tutorial.quoted(BLOCKS)
    shown = [b for b in BLOCKS if b.lang == "text"]
    assert shown and sorted(b.line for b in shown) == sorted(b.line for b in quotes.values())
    for block in shown:
        assert block.code.strip() and "X" != block.code.strip(), f"{block.where()}: no output quoted"


def test_the_page_names_the_commit_its_outputs_come_from():
    with open(tutorial.TUTORIAL, encoding="utf-8") as fh:
        assert re.search(r"what edgedfa printed\s+with the code of commit `[0-9a-f]{7,40}`", fh.read())


def test_shorten_divides_epochs_and_bounds_the_default():
    sh = tutorial.Block("sh", (), "edgedfa train --data a.npz --out r\n"
                        "edgedfa train --resume r --epochs 20\n"
                        "edgedfa train --algo bp --epochs 10 \\\n    --quiet\n"
                        "edgedfa train --config c.toml\nedgedfa eval r/checkpoint.npz\n", 1)
    assert tutorial.shorten(sh, 5).code == ("edgedfa train --data a.npz --out r --epochs 6\n"
                                            "edgedfa train --resume r --epochs 4\n"
                                            "edgedfa train --algo bp --epochs 2 \\\n    --quiet\n"
                                            "edgedfa train --config c.toml\nedgedfa eval r/checkpoint.npz\n")
    toml = tutorial.Block("toml", (), "[train]\nepochs = 3\nbatch_size = 10\n", 1, "c.toml")
    assert tutorial.shorten(toml, 5).code == "[train]\nepochs = 1\nbatch_size = 10\n"
    assert tutorial.shorten(sh, 1) == sh


def test_the_committed_onnx_files_are_those_the_pytorch_blocks_name():
    torch_blocks = [b for b in BLOCKS if b.needs_torch]
    assert torch_blocks
    named = {n for b in torch_blocks for n in tutorial.fixture_names(b)}
    assert named == set(os.listdir(tutorial.FIXTURES)) == {"cnn.onnx", "gru.onnx"}
    for name in named:  # small, and PyTorch's initial weights (not trained ones)
        assert os.path.getsize(os.path.join(tutorial.FIXTURES, name)) < 64 * 1024
        assert onnx.load(os.path.join(tutorial.FIXTURES, name)).producer_name == "pytorch"


def test_file_blocks_are_saved_under_their_name(tmp_path):
    saved = [b for b in BLOCKS if b.file]
    assert {b.file for b in saved} == {"cnn6.toml", "sweep.toml"}
    for block in saved:
        assert tutorial.run_block(block, str(tmp_path)) is None
        assert (tmp_path / block.file).read_text() == block.code


def test_the_readme_links_the_tutorial():
    with open(os.path.join(ROOT, "README.md")) as fh:
        assert re.search(r"\]\(docs/tutorial\.md\)", fh.read())
