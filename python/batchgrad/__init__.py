"""batchgrad: minibatch gradient descent with a Rust tape autodiff core.

    import batchgrad as bg
    x = bg.tensor([[1.0, 2.0]], requires_grad=True)
    loss = (x @ bg.ones(2, 1)).sum()
    loss.backward()
"""

from . import _core
from .tensor import *  # noqa: F403
from .tensor import __all__ as _tensor_all
from . import data, datasets, distributed
from .io import load, save
from . import nn, optim
from .train import evaluate, fit

__version__ = "0.1.0"


def op_table() -> list[dict]:
    """The op registry: name, arity, what each op saves for backward, whether it is differentiable."""
    return _core.op_table()


__all__ = list(_tensor_all) + ["data", "datasets", "distributed", "save", "load", "op_table", "nn", "optim", "fit", "evaluate"]

from .transforms import Graph, TracingError, grad, render_minibatch_graphs, replicate, trace, value_and_grad, vmap  # noqa: E402

__all__ += ["Graph", "TracingError", "grad", "render_minibatch_graphs", "replicate", "trace", "value_and_grad", "vmap"]

from .compile import compile_step  # noqa: E402
from .profiler import profile  # noqa: E402

__all__ += ["compile_step", "profile", "gpu"]

from . import gpu  # noqa: E402  (bg.gpu: loads wgpu only on first use)
from . import lab  # noqa: E402  (bg.lab.<experiment>(...): the minibatch lab; matplotlib only when one runs)
