"""The GPU backend (wgpu-py: WGSL compute shaders on Vulkan, Metal or DX12).

``import batchgrad`` never imports wgpu: the backend loads on first use. Without the ``wgpu``
package (``pip install 'batchgrad[gpu]'``) or without an adapter, every GPU call raises
:class:`GpuUnavailableError` saying which and how to fix it.

The executor replays the same flat program of registry ops as the CPU (``_core.Program``): one
WGSL entry point per op (``kernels/<family>.wgsl``, lowered by ``lower/<family>.py``), buffers,
pipelines and bind groups built once per program, every launch of a step encoded into ONE
compute pass of ONE command buffer.
"""

from __future__ import annotations

from . import device
from .device import GpuError, GpuLimitError, GpuUnavailableError, info, is_available


def predict(model, X, batch_size: int = 1024):  # noqa: ANN001, ANN201
    """`model(X)` for a large array, streamed through the GPU minibatch by minibatch (see
    `batchgrad.gpu.forward.predict`)."""
    from .forward import predict as _predict

    return _predict(model, X, batch_size)


__all__ = ["GpuError", "GpuLimitError", "GpuUnavailableError", "device", "info", "is_available", "predict"]
