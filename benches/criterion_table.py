"""Summarise criterion results (target/criterion/**/new/) as markdown tables of medians.

    cargo bench --bench kernels -- --quick && cargo bench --bench train_step -- --quick
    python benches/criterion_table.py [--dir target/criterion]

One table per criterion group. Rows are benchmarks, columns the thread counts (`t1`, `t2`): the
median time, the rate derived from it and criterion's declared throughput (GFLOP/s for
`Elements` in the gemm groups, examples/s for the train step, GB/s = 1e9 bytes/s for `Bytes`),
and the t2/t1 speed-up.
"""

from __future__ import annotations

import argparse
import json
import pathlib
from collections import defaultdict


def fmt_time(ns: float) -> str:
    if ns >= 1e6:
        return f"{ns / 1e6:.2f} ms"
    if ns >= 1e3:
        return f"{ns / 1e3:.1f} us"
    return f"{ns:.0f} ns"


def rate(group: str, tp: dict, ns: float) -> tuple[str, float]:
    s = ns * 1e-9
    if "Bytes" in tp:
        return "GB/s", tp["Bytes"] / s / 1e9
    n = tp.get("Elements", 0)
    if group.startswith("gemm"):
        return "GFLOP/s", n / s / 1e9
    if group.startswith("train_step"):
        return "examples/s", n / s
    return "Melem/s", n / s / 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default="target/criterion")
    args = ap.parse_args()
    root = pathlib.Path(args.dir)
    groups: dict[str, dict[str, dict[str, tuple]]] = defaultdict(lambda: defaultdict(dict))
    order: dict[str, list[str]] = defaultdict(list)
    for bj in sorted(root.glob("**/new/benchmark.json")):
        meta = json.loads(bj.read_text())
        est = json.loads((bj.parent / "estimates.json").read_text())
        med = est["median"]["point_estimate"]
        g, fid, t = meta["group_id"], meta["function_id"], meta.get("value_str") or "-"
        groups[g][fid][t] = (med, meta.get("throughput") or {})
        if fid not in order[g]:
            order[g].append(fid)
    for g in sorted(groups):
        threads = sorted({t for f in groups[g].values() for t in f})
        unit = None
        rows = []
        for fid in order[g]:
            cells = []
            r1 = None
            for t in threads:
                if t not in groups[g][fid]:
                    cells += ["", ""]
                    continue
                med, tp = groups[g][fid][t]
                unit, r = rate(g, tp, med) if tp else ("", 0.0)
                cells += [fmt_time(med), f"{r:,.1f}" if r < 1000 else f"{r:,.0f}"]
                if t == "t1":
                    r1 = med
            if r1 and "t2" in groups[g][fid]:
                cells.append(f"{r1 / groups[g][fid]['t2'][0]:.2f}x")
            else:
                cells.append("")
            rows.append([fid] + cells)
        head = ["benchmark"]
        for t in threads:
            head += [f"{t} median", f"{t} {unit}"]
        head.append("t2 speed-up")
        print(f"\n### {g}\n")
        print("| " + " | ".join(head) + " |")
        print("|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|")
        for r in rows:
            print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
