"""The README's Python examples run as written (the self-contained ones)."""
import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _blocks():
    text = README.read_text()
    return [b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "import batchgrad as bg" in b]


def test_readme_has_examples():
    assert len(_blocks()) >= 3


@pytest.mark.parametrize("i", range(3))
def test_readme_example_runs(i, tmp_path, monkeypatch, capsys):
    blocks = _blocks()
    if i >= len(blocks):
        pytest.skip("fewer examples")
    monkeypatch.chdir(tmp_path)
    code = blocks[i]
    if "params, X[0], Y[0]" in code:  # the transforms example needs data: define it first
        code = ("import numpy as np\nimport batchgrad as bg\nr = np.random.default_rng(0)\nB = 4\n"
                "params = {'W1': bg.tensor(r.normal(size=(784, 256)) * 0.05), 'b1': bg.zeros(256),\n"
                "          'W2': bg.tensor(r.normal(size=(256, 10)) * 0.05), 'b2': bg.zeros(10)}\n"
                "X = bg.tensor(r.normal(size=(B, 784))); Y = bg.tensor(r.integers(0, 10, B))\n") + code
    exec(compile(code, f"README block {i}", "exec"), {})
