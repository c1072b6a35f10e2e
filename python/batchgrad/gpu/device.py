"""The GPU device: wgpu is imported here, lazily, on first use (never by ``import batchgrad``).

One adapter and one device per process; every kernel shares one bind group layout (see
kernels/prelude.wgsl), shader modules and pipelines are compiled once per process and cached.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
import threading
from importlib import resources
from typing import Any

from .lower.base import Buf, GpuLimitError, Launch, words

__all__ = ["GpuError", "GpuUnavailableError", "GpuLimitError", "get", "is_available", "info", "reset"]

INSTALL_WGPU = "install it with: pip install 'batchgrad[gpu]' (or: pip install wgpu)"
NO_ADAPTER = ("wgpu found no GPU adapter (Vulkan, Metal or DX12). Install your GPU's Vulkan driver; on Debian/Ubuntu "
              "without a GPU, `apt-get install mesa-vulkan-drivers` gives the software adapter lavapipe")


class GpuError(RuntimeError):
    """A GPU fault: a kernel that does not compile, a lost device, a failed submit."""


class GpuUnavailableError(GpuError):
    """No GPU backend: the wgpu package is missing or there is no adapter."""


_lock = threading.Lock()
_dev: Device | None = None
_unavailable: str | None = None


def _import_wgpu() -> Any:
    try:
        import wgpu
    except ImportError as e:
        raise GpuUnavailableError(f"the GPU backend needs the 'wgpu' package, which is not installed: {INSTALL_WGPU}") from e
    return wgpu


class Device:
    """Adapter, device, queue, the shared layouts and the kernel caches."""

    def __init__(self) -> None:
        wgpu = self.wgpu = _import_wgpu()
        if "triton" not in sys.modules and importlib.util.find_spec("triton") is not None:
            # Mesa's software Vulkan (lavapipe) loads its own LLVM; importing triton (which torch
            # imports lazily, e.g. in torch.optim) after it segfaults the process. Loading
            # triton's first is safe, so do that whenever it is installed.
            try:
                import triton  # noqa: F401
            except Exception:  # noqa: BLE001
                pass
        if "XDG_RUNTIME_DIR" not in os.environ and hasattr(os, "getuid"):
            # Mesa's Vulkan drivers print "error: XDG_RUNTIME_DIR is invalid" on headless machines
            # without one; compute needs no display, so give it a private empty directory
            d = os.path.join(tempfile.gettempdir(), f"batchgrad-xdg-{os.getuid()}")
            os.makedirs(d, mode=0o700, exist_ok=True)
            os.environ["XDG_RUNTIME_DIR"] = d
        try:
            adapter = wgpu.gpu.request_adapter_sync(power_preference="high-performance")
        except Exception as e:  # wgpu-native raises when no backend has an adapter
            raise GpuUnavailableError(f"{NO_ADAPTER} ({type(e).__name__}: {e})") from e
        if adapter is None:
            raise GpuUnavailableError(NO_ADAPTER)
        self.adapter = adapter
        al = adapter.limits
        want = {k: al[k] for k in ("max-storage-buffer-binding-size", "max-buffer-size", "max-storage-buffers-per-shader-stage",
                                    "max-compute-workgroup-storage-size", "max-compute-invocations-per-workgroup") if k in al}
        feats = [f for f in ("subgroup",) if f in adapter.features]
        self.device = adapter.request_device_sync(required_features=feats, required_limits=want, label="batchgrad")
        self.queue = self.device.queue
        self.limits = dict(self.device.limits)
        self.features = set(self.device.features)
        self.lost = False
        self._modules: dict[str, Any] = {}
        self._pipelines: dict[tuple[str, str], Any] = {}
        B = wgpu.BufferBindingType
        entries = [{"binding": i, "visibility": wgpu.ShaderStage.COMPUTE,
                    "buffer": {"type": B.read_only_storage if i < 4 else B.storage if i < 8 else B.uniform}} for i in range(9)]
        self.bind_layout = self.device.create_bind_group_layout(entries=entries, label="batchgrad kernels")
        self.pipeline_layout = self.device.create_pipeline_layout(bind_group_layouts=[self.bind_layout])
        self.meta_align = max(256, int(self.limits.get("min-uniform-buffer-offset-alignment", 256)))
        # unused bindings: one shared read-only dummy, a distinct one per writable slot (no aliasing)
        self._dummy_r = self.buffer(16, "dummy in")
        self._dummy_w = [self.buffer(16, f"dummy out{i}") for i in range(4)]

    # -- description
    def info(self) -> dict[str, Any]:
        i = self.adapter.info
        return {"name": i.get("device", ""), "vendor": i.get("vendor", ""), "backend": i.get("backend_type", ""),
                "type": i.get("adapter_type", ""), "description": i.get("description", ""),
                "software": i.get("adapter_type", "") == "CPU", "features": sorted(self.features),
                "limits": dict(self.limits)}

    @property
    def name(self) -> str:
        i = self.adapter.info
        return f"{i.get('device', 'GPU')} ({i.get('backend_type', '')}{', software' if i.get('adapter_type') == 'CPU' else ''})"

    # -- resources
    def check_size(self, nbytes: int, what: str) -> None:
        lim = int(self.limits.get("max-storage-buffer-binding-size", 1 << 27))
        if nbytes > lim:
            raise GpuLimitError(f"{what}: {nbytes} bytes, beyond this device's max-storage-buffer-binding-size of {lim} bytes "
                                f"({self.name}); use a smaller batch")

    def buffer(self, nbytes: int, label: str = "", extra_usage: int = 0) -> Any:
        U = self.wgpu.BufferUsage
        return self._call(lambda: self.device.create_buffer(
            size=max(16, (nbytes + 15) // 16 * 16), usage=U.STORAGE | U.COPY_SRC | U.COPY_DST | extra_usage, label=label), f"allocating {label}")

    def module(self, family: str) -> Any:
        m = self._modules.get(family)
        if m is None:
            kdir = resources.files("batchgrad.gpu") / "kernels"
            try:
                body = (kdir / f"{family}.wgsl").read_text()
                # `// uses: NAME` lines pull in shared helper files (kernels/NAME.wgsl)
                for ln in body.splitlines():
                    if ln.startswith("// uses: "):
                        body = (kdir / f"{ln[9:].strip()}.wgsl").read_text() + "\n" + body
                # `enable` directives (e.g. `enable subgroups;`) must open the module
                enables = [ln for ln in body.splitlines() if ln.startswith("enable ")]
                body = "\n".join(ln for ln in body.splitlines() if not ln.startswith("enable "))
                src = "\n".join(enables) + "\n" + (kdir / "prelude.wgsl").read_text() + "\n" + body
            except FileNotFoundError as e:
                raise GpuError(f"no WGSL kernel file kernels/{family}.wgsl in the batchgrad package") from e
            m = self._modules[family] = self._call(lambda: self.device.create_shader_module(code=src, label=family),
                                                   f"compiling WGSL kernels/{family}.wgsl")
        return m

    def pipeline(self, family: str, entry: str) -> Any:
        p = self._pipelines.get((family, entry))
        if p is None:
            mod = self.module(family)
            p = self._pipelines[(family, entry)] = self._call(lambda: self.device.create_compute_pipeline(
                layout=self.pipeline_layout, compute={"module": mod, "entry_point": entry}, label=f"{family}.{entry}"),
                f"building the pipeline for kernels/{family}.wgsl entry point {entry!r}")
        return p

    def bind_group(self, launch: Launch, bufs: dict[Buf, Any], meta_buf: Any, meta_off: int) -> Any:
        ents = []
        for i in range(4):
            b = bufs[launch.reads[i]] if i < len(launch.reads) else self._dummy_r
            ents.append({"binding": i, "resource": {"buffer": b, "offset": 0, "size": b.size}})
        for i in range(4):
            b = bufs[launch.writes[i]] if i < len(launch.writes) else self._dummy_w[i]
            ents.append({"binding": 4 + i, "resource": {"buffer": b, "offset": 0, "size": b.size}})
        ents.append({"binding": 8, "resource": {"buffer": meta_buf, "offset": meta_off, "size": 256}})
        return self._call(lambda: self.device.create_bind_group(layout=self.bind_layout, entries=ents, label=launch.label),
                          f"binding {launch.family}.{launch.entry}")

    def meta_buffer(self, launches: list[Launch]) -> tuple[Any, list[int]]:
        """One uniform buffer holding every launch's parameters, each at an aligned offset."""
        import numpy as np

        U = self.wgpu.BufferUsage
        a = self.meta_align
        data = np.zeros(max(1, len(launches)) * a // 4, np.uint32)
        for k, l in enumerate(launches):
            data[k * a // 4: k * a // 4 + 64] = words(l.meta)
        buf = self._call(lambda: self.device.create_buffer(size=data.nbytes, usage=U.UNIFORM | U.COPY_DST, label="kernel parameters"),
                         "allocating kernel parameters")
        self.queue.write_buffer(buf, 0, data)
        return buf, [k * a for k in range(len(launches))]

    # -- faults
    def _call(self, f: Any, what: str) -> Any:
        if self.lost:
            raise GpuError(f"the GPU device was lost; {what} is impossible. Build a new step (host parameters are unchanged)")
        try:
            return f()
        except GpuError:
            raise
        except Exception as e:
            msg = str(e)
            if "lost" in msg.lower() or "invalid" in msg.lower() and "device" in msg.lower():
                self.mark_lost()
                raise GpuError(f"the GPU device was lost while {what}: {msg}") from e
            raise GpuError(f"GPU error while {what}: {type(e).__name__}: {msg}") from e

    def mark_lost(self) -> None:
        global _dev
        self.lost = True
        with _lock:
            if _dev is self:
                _dev = None


def get() -> Device:
    """The process's GPU device (created on first use). Raises GpuUnavailableError naming what is
    missing and how to get it."""
    global _dev, _unavailable
    if _dev is not None:
        return _dev
    with _lock:
        if _dev is None:
            if os.environ.get("BATCHGRAD_GPU", "") == "0":
                raise GpuUnavailableError("the GPU backend is disabled by BATCHGRAD_GPU=0")
            try:
                _dev = Device()
            except GpuUnavailableError as e:
                _unavailable = str(e)
                raise
        return _dev


def is_available() -> bool:
    """Whether `wgpu` is installed and an adapter exists (creates the device on success)."""
    try:
        get()
        return True
    except GpuError:
        return False


def info() -> dict[str, Any]:
    """The adapter: name, vendor, backend, type (``CPU`` for software adapters such as lavapipe),
    features and limits."""
    return get().info()


def reset() -> None:
    """Forget the device (the next GPU call creates a new one); plans built on the old one fail."""
    global _dev
    with _lock:
        if _dev is not None:
            _dev.lost = True
        _dev = None
