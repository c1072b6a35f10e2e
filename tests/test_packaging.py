"""Shipping: the installed distribution's metadata and data files, and `batchgrad lab` without
matplotlib (an optional extra: the lab must still print its tables and write its report).

The metadata tests read what is installed (an editable install in a checkout, the built wheel in CI):
after editing pyproject.toml, reinstall (`pip install -e .`) for them to see the change. The
portable wheel itself is built and smoke-tested in a fresh virtualenv by `.ci/wheel-check`."""

import importlib.metadata as md
import importlib.resources
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import batchgrad as bg
from batchgrad.lab import _common as C

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = ROOT / "pyproject.toml"

# `python -m batchgrad ...` with matplotlib made unimportable (as if it were not installed)
NO_MPL = "import runpy, sys; sys.modules['matplotlib'] = None; sys.argv = ['batchgrad', *sys.argv[1:]]; " \
         "runpy.run_module('batchgrad', run_name='__main__', alter_sys=True)"


def _meta():
    return md.metadata("batchgrad")


# ---- metadata -------------------------------------------------------------------------------------
def test_license_is_declared_and_shipped():
    m = _meta()
    expr = m.get("License-Expression")
    assert expr is not None, "no License-Expression: reinstall the package after editing pyproject.toml"
    assert "MIT" in expr.split()
    # PEP 639: with a License-Expression no "License ::" classifier (PyPI rejects the pair)
    assert not [c for c in m.get_all("Classifier") or [] if c.startswith("License ::")]
    files = [Path(f).name for f in m.get_all("License-File") or []]
    assert "LICENSE" in files
    assert "DIGITS_LICENSE.md" in files
    text = (ROOT / "LICENSE").read_text() if (ROOT / "LICENSE").exists() else None
    if text is not None:  # a source checkout
        assert text.startswith("MIT License") and "the batchgrad authors" in text


def test_classifiers_keywords_and_python_versions():
    m = _meta()
    cls = set(m.get_all("Classifier") or [])
    for c in ["Development Status :: 3 - Alpha", "Operating System :: POSIX :: Linux",
              "Programming Language :: Python :: 3.11", "Programming Language :: Python :: 3.12",
              "Programming Language :: Python :: 3.13", "Programming Language :: Rust",
              "Topic :: Scientific/Engineering :: Artificial Intelligence"]:
        assert c in cls, c
    assert m.get("Requires-Python") == ">=3.11"
    assert "autodiff" in (m.get("Keywords") or "")
    assert m.get("Summary")


def test_extras():
    m = _meta()
    assert {"plot", "gpu", "test"} <= set(m.get_all("Provides-Extra") or [])
    reqs = m.get_all("Requires-Dist") or []

    def extra(name):
        return [r.split(";")[0].strip() for r in reqs if f"extra == '{name}'" in r or f'extra == "{name}"' in r]

    assert any(r.startswith("matplotlib") for r in extra("plot"))
    assert any(r.replace(" ", "").startswith("wgpu>=0.32") for r in extra("gpu"))
    test = extra("test")
    for pkg in ("pytest", "hypothesis", "matplotlib", "safetensors"):
        assert any(r.startswith(pkg) for r in test), (pkg, test)
    core = [r for r in reqs if "extra ==" not in r]
    assert sorted(r.split(">")[0].split("=")[0].strip() for r in core) == ["numpy", "tqdm"]


def test_installed_metadata_matches_pyproject():
    """A stale editable install (pyproject.toml edited since) fails here with a clear message."""
    if not PYPROJECT.exists():
        pytest.skip("not a source checkout")
    proj = tomllib.loads(PYPROJECT.read_text())["project"]
    m = _meta()
    assert m.get("License-Expression") == proj["license"], "reinstall: pip install -e ."
    assert sorted(m.get_all("Classifier") or []) == sorted(proj["classifiers"]), "reinstall: pip install -e ."
    assert "urls" not in proj or all(not u.startswith("https://github.com/batchgrad") for u in proj["urls"].values())


def test_console_script_entry_point():
    eps = md.entry_points(group="console_scripts")
    ep = next(e for e in eps if e.name == "batchgrad")
    assert ep.value == "batchgrad.__main__:main"


def test_package_data_is_installed():
    """The WGSL kernels and the bundled data set are package files (they must be in the wheel)."""
    root = importlib.resources.files("batchgrad")
    kernels = sorted(p.name for p in (root / "gpu" / "kernels").iterdir() if p.name.endswith(".wgsl"))
    assert {"prelude.wgsl", "matmul.wgsl", "binary.wgsl", "unary.wgsl", "reduce.wgsl"} <= set(kernels)
    assert (root / "datasets" / "digits.csv.gz").is_file()
    assert (root / "datasets" / "DIGITS_LICENSE.md").is_file()
    assert (root / "py.typed").is_file()


# ---- the lab without matplotlib ---------------------------------------------------------------------
def _run_no_mpl(args, cwd):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONSTARTUP"}
    return subprocess.run([sys.executable, "-c", NO_MPL, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_lab_cli_runs_without_matplotlib(tmp_path):
    out = tmp_path / "lab-out"
    p = _run_no_mpl(["lab", "regression", "--quick", "--out", str(out)], cwd=tmp_path)
    both = p.stdout + p.stderr
    assert p.returncode == 0, both
    assert "Traceback" not in both
    # one line says the plots were skipped and how to get them, once
    notes = [line for line in p.stdout.splitlines() if "plots skipped" in line]
    assert len(notes) == 1, p.stdout
    assert 'pip install "batchgrad[plot]"' in notes[0]
    # the tables are printed
    assert "regression: minimisers" in p.stdout
    assert "| closed form" in p.stdout or "closed form sum(xy)/sum(x^2)" in p.stdout
    # the report is written; no PNG, and the report says why
    assert sorted(f.name for f in out.iterdir()) == ["regression.md"]
    report = (out / "regression.md").read_text()
    assert "regression.png" in report and "![regression]" not in report
    assert 'pip install "batchgrad[plot]"' in report
    assert "| L (all)" in report or "L (all)" in report
    assert "wrote 1 files" in p.stdout and "regression.md" in p.stdout


def test_lab_cli_all_quick_without_matplotlib(tmp_path):
    """Every experiment, joined in report.md: the note comes once, no PNG is drawn by matplotlib."""
    out = tmp_path / "all"
    p = _run_no_mpl(["lab", "all", "--quick", "--out", str(out)], cwd=tmp_path)
    both = p.stdout + p.stderr
    assert p.returncode == 0, both
    assert "Traceback" not in both
    assert sum("plots skipped" in line for line in p.stdout.splitlines()) == 1
    names = {f.name for f in out.iterdir()}
    for exp in ("regression", "throughput", "noise", "batchsize", "accumulate", "graph"):
        assert f"{exp}.md" in names
    # graphs.png is Graphviz's (no matplotlib); the experiments' matplotlib plots are not there
    assert not names & {"regression.png", "throughput.png", "noise.png", "batchsize.png", "accumulate.png"}
    report = (out / "report.md").read_text()
    assert report.count('pip install "batchgrad[plot]"') == 5


def test_lab_api_without_matplotlib(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setattr(C, "_skip_noted", False)
    assert not C.have_matplotlib()
    res = bg.lab.regression(out=tmp_path, quick=True)
    assert [os.path.basename(f) for f in res["files"]] == ["regression.md"]
    assert res["minimisers"]["L (all)"]["closed_form"] == pytest.approx(121 / 46)
    res = bg.lab.accumulate(out=tmp_path, quick=True)
    assert [os.path.basename(f) for f in res["files"]] == ["accumulate.md"]
    out = capsys.readouterr().out
    assert out.count("plots skipped") == 1  # said once per process
    # silent when verbose=False
    monkeypatch.setattr(C, "_skip_noted", False)
    bg.lab.regression(out=tmp_path, quick=True, verbose=False)
    assert "plots skipped" not in capsys.readouterr().out
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # in case an earlier test imported it
    with pytest.raises(ImportError, match=r"batchgrad\[plot\]"):
        C.figure()


def test_lab_draws_plots_with_matplotlib(tmp_path):
    pytest.importorskip("matplotlib")
    res = bg.lab.regression(out=tmp_path, quick=True, verbose=False)
    names = sorted(os.path.basename(f) for f in res["files"])
    assert names == ["regression.md", "regression.png"]
    assert "![regression](regression.png)" in (tmp_path / "regression.md").read_text()
