"""`bg.profile()`: where the time of a step goes, per op.

    with bg.profile() as prof:
        for _ in range(10):
            step(X, y)
    print(prof.table())

While the block runs, every kernel executed in Rust (eager ops, the backward replay, a compiled
step's nodes, its fused SGD products and optimizer updates) adds its wall time to a table keyed
by op name and input shapes. Outside the block the cost is one atomic load per op.
"""
from __future__ import annotations

from dataclasses import dataclass

from . import _core

__all__ = ["profile", "Profile", "ProfileEntry"]


@dataclass(frozen=True)
class ProfileEntry:
    op: str
    shapes: str
    calls: int
    seconds: float


class Profile:
    """The per-op table of one `bg.profile()` block (filled when the block exits)."""

    def __init__(self) -> None:
        self.entries: list[ProfileEntry] = []

    @property
    def total(self) -> float:
        return sum(e.seconds for e in self.entries)

    def table(self, limit: int = 30) -> str:
        tot = self.total or 1.0
        lines = [f"{'op':<24} {'input shapes':<36} {'calls':>7} {'total ms':>10} {'us/call':>9} {'share':>6}"]
        for e in self.entries[:limit]:
            lines.append(f"{e.op:<24} {e.shapes:<36} {e.calls:>7} {e.seconds * 1e3:>10.3f} "
                         f"{e.seconds / max(e.calls, 1) * 1e6:>9.1f} {e.seconds / tot:>6.1%}")
        lines.append(f"{'total':<24} {'':<36} {sum(e.calls for e in self.entries):>7} {self.total * 1e3:>10.3f}")
        return "\n".join(lines)

    def __enter__(self) -> "Profile":
        _core.profile_enable(True)
        return self

    def __exit__(self, *exc) -> None:
        _core.profile_enable(False)
        self.entries = [ProfileEntry(*e) for e in _core.profile_report()]


def profile() -> Profile:
    """Context manager timing every Rust kernel run inside it; see the module docstring."""
    return Profile()
