"""The minibatch lab: small experiments that answer the usual questions about minibatches by
running them. ``batchgrad lab <experiment> --out DIR`` or, from Python::

    import batchgrad as bg
    res = bg.lab.regression(out="lab")        # the seeds' 4-example least squares, B1 / B2
    res = bg.lab.noise(out="lab", quick=True)  # minibatch gradient variance vs batch size

Experiments (each writes PNG plots and ``<experiment>.md`` into ``out``, prints its key table,
takes ``seed`` and ``quick``, and returns a dict of its measured numbers and files):

- ``regression``: L(w), L'(w) (minibatch B1), L''(w) (B2), their minimisers, and full-batch vs
  minibatch descent drawn on the curves, with a table of the steps.
- ``throughput``: time per example and examples/s against batch size for one SGD step of an MLP
  784-256-256-10 on 1 and 2 CPU threads; where batching stops paying.
- ``noise``: variance of the minibatch gradient around the full gradient against B, from one
  ``vmap(grad)`` pass of per-example gradients: the 1/B law and its finite-population correction.
- ``batchsize``: final training loss and test accuracy against batch size on the digits, at a
  fixed and at a linearly scaled learning rate, over several seeds.
- ``accumulate``: k micro-batches of b accumulated vs one batch of k*b: identical updates, and
  what each costs.
- ``graph``: the per-example, replicated (B=2) and batched graphs of a small model.
- ``all``: every experiment, plus ``report.md`` joining their reports.

Nothing here is imported by ``import batchgrad`` beyond this module; matplotlib is imported only
when an experiment runs. Without matplotlib the experiments still run, print their tables and write
their reports: they skip the PNGs and say so in one line (``pip install "batchgrad[plot]"`` adds them).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from collections.abc import Callable
from typing import Any

__all__ = ["EXPERIMENTS", "regression", "throughput", "noise", "batchsize", "accumulate", "graph", "run",
           "run_all", "add_lab_parser", "run_lab"]

# name -> (module, one-line description)
EXPERIMENTS: dict[str, tuple[str, str]] = {
    "regression": ("_regression", "the seeds' 4-example least squares: L, L' (B1), L'' (B2), GD vs minibatch descent"),
    "throughput": ("_throughput", "time per example vs batch size for an SGD step of an MLP 784-256-256-10, 1 and 2 threads"),
    "noise": ("_noise", "variance of the minibatch gradient vs batch size: the 1/B law, without replacement"),
    "batchsize": ("_batchsize", "final training loss and test accuracy vs batch size, fixed vs linearly scaled lr"),
    "accumulate": ("_accumulate", "k accumulated micro-batches of b vs one batch of k*b: same update, and the cost"),
    "graph": ("_graph", "the per-example, replicated (B=2) and batched graphs of a small model"),
}
DEFAULT_OUT = "batchgrad-lab"


def _runner(name: str) -> Callable[..., dict[str, Any]]:
    return importlib.import_module(f"{__name__}.{EXPERIMENTS[name][0]}").run


def run(name: str, out: str = DEFAULT_OUT, seed: int = 0, quick: bool = False, **kwargs: Any) -> dict[str, Any]:
    """Run experiment `name` (one of EXPERIMENTS, or "all")."""
    if name == "all":
        return run_all(out=out, seed=seed, quick=quick, **kwargs)
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown lab experiment {name!r}; choose one of {', '.join(EXPERIMENTS)} or all")
    return _runner(name)(out=out, seed=seed, quick=quick, **kwargs)


def _make(name: str) -> Callable[..., dict[str, Any]]:
    def experiment(out: str = DEFAULT_OUT, seed: int = 0, quick: bool = False, **kwargs: Any) -> dict[str, Any]:
        return _runner(name)(out=out, seed=seed, quick=quick, **kwargs)

    experiment.__name__ = experiment.__qualname__ = name
    experiment.__doc__ = (f"Lab experiment '{name}': {EXPERIMENTS[name][1]}.\n\nWrites PNGs and {name}.md into `out`; "
                          f"see batchgrad.lab.{EXPERIMENTS[name][0]}.run for the keyword arguments.")
    return experiment


regression = _make("regression")
throughput = _make("throughput")
noise = _make("noise")
batchsize = _make("batchsize")
accumulate = _make("accumulate")
graph = _make("graph")


def run_all(out: str = DEFAULT_OUT, seed: int = 0, quick: bool = False, verbose: bool = True) -> dict[str, Any]:
    """Every experiment in turn, then `report.md` in `out` joining their reports."""
    results: dict[str, Any] = {}
    times: dict[str, float] = {}
    for name in EXPERIMENTS:
        if verbose:
            print(f"\n=== lab {name}: {EXPERIMENTS[name][1]}", flush=True)
        t0 = time.perf_counter()
        results[name] = run(name, out=out, seed=seed, quick=quick, verbose=verbose)
        times[name] = time.perf_counter() - t0
    parts = ["# The minibatch lab\n",
             "Written by `batchgrad lab all`" + (" --quick" if quick else "") + f" (seed {seed}). Run times: "
             + ", ".join(f"{k} {v:.1f} s" for k, v in times.items()) + ".\n"]
    for name in EXPERIMENTS:
        with open(os.path.join(out, f"{name}.md")) as f:
            parts.append(f.read())
    path = os.path.join(out, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(parts))
    results["files"] = [path]
    results["times"] = times
    return results


# `bg.lab.all(...)`: bound here at the end; this module's own code never calls the builtin `all`.
globals()["all"] = run_all


# ---- command line --------------------------------------------------------------------------------
def add_lab_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the `lab` subcommand on an argparse subparsers object (sets `func=run_lab`)."""
    choices = list(EXPERIMENTS) + ["all"]
    p = subparsers.add_parser(
        "lab", help="run a minibatch experiment (plots + a markdown report): " + ", ".join(choices),
        description="The minibatch lab: each experiment writes PNG plots and <experiment>.md into --out and prints "
        "its key table.\n\n" + "\n".join(f"  {k:<11} {v[1]}" for k, v in EXPERIMENTS.items())
        + "\n  all         every experiment, plus report.md"
        + "\n\nThe plots need matplotlib (pip install \"batchgrad[plot]\"); without it they are skipped.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("experiment", choices=choices, metavar="EXPERIMENT", help="one of: " + ", ".join(choices))
    p.add_argument("--out", default=DEFAULT_OUT, metavar="DIR", help=f"output folder (default: {DEFAULT_OUT})")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--quick", action="store_true", help="tiny settings: seconds instead of a minute")
    p.set_defaults(func=run_lab)
    return p


def run_lab(args: argparse.Namespace) -> int:
    """Run the experiment named by parsed `lab` arguments; returns the exit status."""
    t0 = time.perf_counter()
    res = run(args.experiment, out=args.out, seed=args.seed, quick=args.quick)
    files: list[str] = []
    if args.experiment == "all":
        for name in EXPERIMENTS:
            files += res[name]["files"]
    files += res.get("files", [])
    print(f"\nlab {args.experiment}: {time.perf_counter() - t0:.1f} s; wrote {len(files)} files to {args.out}: "
          + ", ".join(os.path.basename(f) for f in files))
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m batchgrad.lab EXPERIMENT ...` (the same as `batchgrad lab ...`)."""
    parser = argparse.ArgumentParser(prog="batchgrad")
    add_lab_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["lab", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)
