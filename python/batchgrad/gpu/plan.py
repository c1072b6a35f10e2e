"""A program on the GPU: buffers, launches, pipelines and bind groups, built ONCE per program
(per batch shape); `encode` replays it into a compute pass with no allocation and no Python per
op beyond three encoder calls per launch."""

from __future__ import annotations

from typing import Any

import numpy as np

from . import device as _device
from .device import GpuError
from .lower import TABLE, Lowering, Node
from .lower.base import Buf, Launch


def _attrs(a: dict) -> dict:
    return {k: (tuple(v) if isinstance(v, list) else v) for k, v in a.items()}


class Plan:
    """`nodes` / `outputs` as `_core.Program.nodes()` / `.outputs`. `bound` maps a captured
    Var's id to a persistent `Buf` already on the device (parameters of a GPU step), with its
    wgpu buffer in `gpu`."""

    def __init__(self, nodes: list[dict], outputs: list[int], bound: dict[int, Buf] | None = None,
                 gpu: dict[Buf, Any] | None = None, extra: Any = None) -> None:
        dev = self.dev = _device.get()
        bound = bound or {}
        lw = Lowering()
        self.slots: list[Buf] = []
        self.inputs: list[tuple[int, Buf]] = []
        self.consts: list[tuple[Buf, Any]] = []
        for n in nodes:
            shape = tuple(int(d) for d in n["shape"])
            kind = n["kind"]
            if kind == "input":
                b = Buf(shape, f"input {n['index']}")
                self.inputs.append((int(n["index"]), b))
            elif kind == "captured":
                var = n["var"]
                b = bound.get(var.id)
                if b is None:
                    b = Buf(shape, "captured")
                    self.consts.append((b, var))
            else:
                op = n["op"]
                rule = TABLE.get(op)
                if rule is None:
                    raise GpuError(f"op {op!r} has no GPU kernel (batchgrad.gpu.lower.TABLE)")
                b = Buf(shape, f"{op} #{n['id']}")
                rule(lw, Node(op, _attrs(n["attrs"]), [self.slots[a] for a in n["args"]], b))
            self.slots.append(b)
        self.inputs.sort(key=lambda t: t[0])
        self.outputs = [self.slots[o] for o in outputs]
        if extra is not None:
            extra(lw, self)  # the GPU step appends its optimizer launches here
        self.launches = [l for l in lw.launches if l.groups[0] > 0]
        # one wgpu buffer per Buf (parameters come in `gpu`)
        self.gpu: dict[Buf, Any] = dict(gpu or {})
        for b in [*self.slots, *lw.scratch_bufs]:
            if b not in self.gpu:
                dev.check_size(b.nbytes, f"tensor {b.label} of shape {list(b.shape)}")
                self.gpu[b] = dev.buffer(b.nbytes, b.label)
        for l in self.launches:
            for b in l.reads + l.writes:
                if b not in self.gpu:
                    raise GpuError(f"{l.family}.{l.entry}: a buffer of shape {b.shape} was not allocated")
        self.meta_buf, offs = dev.meta_buffer(self.launches)
        self.cmds = [(dev.pipeline(l.family, l.entry), dev.bind_group(l, self.gpu, self.meta_buf, o), l.groups)
                     for l, o in zip(self.launches, offs)]
        # scratch buffers a rule filled with constants (e.g. take's indices): uploaded once
        for b in lw.scratch_bufs:
            data = getattr(b, "data", None)
            if data is not None and b.numel:
                dev.queue.write_buffer(self.gpu[b], 0, np.ascontiguousarray(data, np.float32))
        self.upload_consts()

    def upload_consts(self) -> None:
        """Write the captured (non-parameter) values: once at build, or per call (`Graph.run`)."""
        for b, var in self.consts:
            if b.numel:
                self.dev.queue.write_buffer(self.gpu[b], 0, np.ascontiguousarray(var.numpy(), np.float32))

    def upload(self, arrays: list[np.ndarray]) -> None:
        if len(arrays) != len(self.inputs):
            raise ValueError(f"the program takes {len(self.inputs)} inputs, got {len(arrays)}")
        for (k, b), a in zip(self.inputs, arrays):
            if tuple(a.shape) != b.shape:
                raise ValueError(f"GPU program input {k}: expected shape {list(b.shape)}, got {list(a.shape)}")
            if b.numel:
                self.dev.queue.write_buffer(self.gpu[b], 0, np.ascontiguousarray(a, np.float32))

    def encode(self, cpass: Any) -> None:
        last = None
        for pipe, bg, groups in self.cmds:
            if pipe is not last:
                cpass.set_pipeline(pipe)
                last = pipe
            cpass.set_bind_group(0, bg)
            cpass.dispatch_workgroups(*groups)

    def submit(self, after: Any = None) -> None:
        """Encode every launch into ONE compute pass of ONE command buffer and submit it once
        (`after(encoder)` may add copies after the pass)."""
        dev = self.dev

        def go() -> None:
            enc = dev.device.create_command_encoder()
            cpass = enc.begin_compute_pass()
            self.encode(cpass)
            cpass.end()
            if after is not None:
                after(enc)
            dev.queue.submit([enc.finish()])

        dev._call(go, "submitting a step")

    def read(self, b: Buf) -> np.ndarray:
        if b.numel == 0:
            return np.zeros(b.shape, np.float32)
        mv = self.dev._call(lambda: self.dev.queue.read_buffer(self.gpu[b], 0, 4 * b.numel), "reading a result back")
        return np.frombuffer(mv, np.float32).reshape(b.shape).copy()


def run_program(program: Any, arrays: list[np.ndarray], cache: dict | None = None) -> list[np.ndarray]:
    """Replay a `_core.Program` on the GPU (captured values read at call time); returns the
    outputs as numpy arrays. `cache` (a dict owned by the caller) keeps the plan."""
    plan = None if cache is None else cache.get("plan")
    if plan is None or plan.dev.lost:
        plan = Plan(list(program.nodes()), list(program.outputs))
        if cache is not None:
            cache["plan"] = plan
    else:
        plan.upload_consts()
    plan.upload(arrays)
    plan.submit()
    return [plan.read(b) for b in plan.outputs]
