"""A minibatch training loop with gradient accumulation: :func:`fit` and :func:`evaluate`.

    model = bg.nn.MLP([64, 128, 10], seed=0)
    opt = bg.optim.Adam(model.parameters(), lr=1e-2)
    loader = bg.data.DataLoader(bg.data.ArrayDataset(X, y), batch_size=32, shuffle=True, seed=0)
    history = bg.fit(model, bg.nn.CrossEntropyLoss(), opt, loader, epochs=20, val_loader=test_loader)
    loss, acc = bg.evaluate(model, test_loader, bg.nn.CrossEntropyLoss())

Loaders yield ``(inputs, targets)`` pairs, e.g. a :class:`batchgrad.data.DataLoader` over an
``ArrayDataset(X, y)``.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .nn import BCEWithLogitsLoss
from .nn import functional as F
from .nn.utils import clip_grad_norm_
from .tensor import Tensor, as_tensor, no_grad

__all__ = ["History", "fit", "evaluate"]


@dataclass
class History:
    """What :func:`fit` records.

    Attributes:
        loss: per optimizer step, the loss of the optimisation batch (all ``accumulate``
            micro-batches together: their example-weighted mean for ``reduction="mean"``
            losses, their sum for ``"sum"``).
        train_loss: per epoch, the mean training loss per example.
        train_accuracy: per epoch, the training accuracy (None when not a classification).
        val_loss, val_accuracy: per epoch, from :func:`evaluate` on ``val_loader`` (empty
            lists without one).
        lr: per epoch, the learning rate of the first param group at the epoch's start.
        steps: number of optimizer steps taken.
    """

    loss: list[float] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    train_accuracy: list[float | None] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_accuracy: list[float | None] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    steps: int = 0

    @property
    def epochs(self) -> int:
        return len(self.train_loss)

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("loss", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "steps")}


def _reduction(loss_fn: Any) -> str:
    """The loss's reduction: its ``.reduction`` attribute; functions are taken to average (``"mean"``)."""
    r = getattr(loss_fn, "reduction", "mean")
    if r not in ("mean", "sum", "none"):
        raise ValueError(f"unknown reduction {r!r} of the loss function")
    return r


def _unpack(batch: Any) -> tuple[Any, Any]:
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    raise TypeError(
        f"the loader must yield (inputs, targets) pairs, got {type(batch).__name__}"
        + (f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else "")
    )


def _batch_len(x: Any, y: Any) -> int:
    for a in (y, x):
        shape = a.shape if isinstance(a, (Tensor, np.ndarray)) else np.shape(a)
        if len(shape) > 0:
            return int(shape[0])
    return 1


def _is_bce(loss_fn: Any) -> bool:
    return isinstance(loss_fn, BCEWithLogitsLoss) or loss_fn is F.binary_cross_entropy_with_logits


def _n_correct(out: Any, y: Any, loss_fn: Any) -> tuple[int, int] | None:
    """(correct, counted) for class logits (N, C) vs labels (N,), or BCE logits vs 0/1 targets."""
    o = np.asarray(out.numpy() if isinstance(out, Tensor) else out)
    t = np.asarray(y.numpy() if isinstance(y, Tensor) else y)
    if o.ndim == 2 and o.shape[1] > 1 and t.ndim == 1 and t.shape[0] == o.shape[0]:
        return int(np.count_nonzero(o.argmax(axis=1) == t)), int(t.shape[0])
    if _is_bce(loss_fn) and o.shape == t.shape:
        return int(np.count_nonzero((o > 0) == (t > 0.5))), int(t.size)
    return None


def _scalar_loss(loss: Any) -> Tensor:
    if not isinstance(loss, Tensor) or loss.size != 1:
        shape = loss.shape if isinstance(loss, Tensor) else type(loss).__name__
        raise ValueError(f"fit: the loss function must return a scalar Tensor (reduction 'mean' or 'sum'), got {shape}")
    return loss


def _check_int(name: str, v: Any, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
        raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
    return int(v)


def fit(
    model: Any,
    loss_fn: Any,
    optimizer: Any,
    train_loader: Any,
    epochs: int = 1,
    accumulate: int = 1,
    val_loader: Any = None,
    progress: bool = True,
    scheduler: Any = None,
    scheduler_interval: str = "epoch",
    max_grad_norm: float | None = None,
    start_epoch: int | None = None,
    device: str = "cpu",
    log_every: int = 10,
) -> History:
    """Train ``model`` for ``epochs`` epochs of minibatch gradient descent.

    Each optimizer step consumes ``accumulate`` consecutive micro-batches of
    ``train_loader`` (the last group of an epoch may have fewer). The group's micro-batch
    sizes ``b_1..b_k`` (total ``n``) are collected first; each micro-batch's loss is then
    back-propagated scaled by ``b_j / n`` for a ``reduction="mean"`` loss (unscaled for
    ``"sum"``), so the accumulated gradient equals that of one batch of all ``n`` examples
    (up to float rounding), also for a smaller last micro-batch or group.

    Args:
        model: a callable (usually a :class:`batchgrad.nn.Module`); put in train mode.
        loss_fn: ``loss_fn(model(x), y) -> scalar Tensor``; its ``.reduction`` (``"mean"``
            when absent) decides the scaling above.
        optimizer: a :class:`batchgrad.optim.Optimizer`.
        train_loader: iterable of ``(x, y)`` batches, re-iterated every epoch.
        epochs: number of epochs (>= 0).
        accumulate: micro-batches per optimizer step (>= 1).
        val_loader: if given, :func:`evaluate` runs on it after each epoch.
        progress: show a tqdm progress bar with the running loss.
        scheduler: an lr scheduler, stepped after every epoch (or every optimizer step with
            ``scheduler_interval="step"``).
        max_grad_norm: if given, clip the global gradient norm before each step.
        start_epoch: number of the first epoch; if given and the loader has ``set_epoch``,
            epoch ``e`` calls ``train_loader.set_epoch(e)`` first, so a run resumed from a
            checkpoint with ``start_epoch=<epochs done>`` sees the same batches as an
            uninterrupted run. If None the loader keeps its own epoch counter.
        device: ``"gpu"`` trains with ``compile_step(..., device="gpu")``: parameters and
            optimizer state stay on the GPU, each step is one submit, the loss is read back
            every ``log_every`` steps (one read for all of them) for the progress bar and the
            non-finite check, and the host model and optimizer are synced at the end of every
            epoch (before validation). It needs ``accumulate=1`` and no ``max_grad_norm``; the
            train accuracy is not computed (None).
        log_every: on the GPU, steps between loss read-backs.

    Returns:
        a :class:`History`.

    Raises:
        FloatingPointError: when a loss is nan or inf; raised before that step's
            ``optimizer.step()``, so the parameters keep the values of the last good step
            (the partial gradients are cleared). The message names the epoch and step.
        ValueError: for a bad ``epochs``, ``accumulate`` or ``scheduler_interval``.
    """
    epochs = _check_int("epochs", epochs, 0)
    accumulate = _check_int("accumulate", accumulate, 1)
    if scheduler_interval not in ("epoch", "step"):
        raise ValueError(f"scheduler_interval must be 'epoch' or 'step', got {scheduler_interval!r}")
    first_epoch = 0 if start_epoch is None else _check_int("start_epoch", start_epoch, 0)
    reduction = _reduction(loss_fn)
    if reduction == "none":
        raise ValueError("fit: the loss must reduce to a scalar; use reduction='mean' or 'sum'")
    if device not in ("cpu", "gpu"):
        raise ValueError(f"fit: device must be 'cpu' or 'gpu', got {device!r}")
    gstep = None
    if device == "gpu":
        if accumulate != 1 or max_grad_norm is not None:
            raise ValueError("fit(device='gpu') supports accumulate=1 and max_grad_norm=None only "
                             f"(got accumulate={accumulate}, max_grad_norm={max_grad_norm})")
        log_every = _check_int("log_every", log_every, 1)
        from .compile import compile_step

        gstep = compile_step(model, loss_fn, optimizer, device="gpu")
    from tqdm.auto import tqdm

    history = History()
    if hasattr(model, "train"):
        model.train()
    try:
        n_groups: int | None = -(-len(train_loader) // accumulate)
    except TypeError:
        n_groups = None
    last_epoch = first_epoch + epochs
    for epoch in range(first_epoch, last_epoch):
        if start_epoch is not None and hasattr(train_loader, "set_epoch"):
            train_loader.set_epoch(epoch)
        history.lr.append(float(optimizer.param_groups[0]["lr"]))
        ep_loss, ep_n, ep_correct, ep_counted, step_in_epoch = 0.0, 0, 0, 0, 0
        has_acc = True
        bar = tqdm(total=n_groups, desc=f"epoch {epoch + 1}/{last_epoch}", unit="step", disable=not progress,
                   leave=True, dynamic_ncols=True)
        try:
            if gstep is not None:
                ep_loss, ep_n = _gpu_epoch(gstep, train_loader, reduction, history, bar, epoch, log_every,
                                           scheduler if scheduler_interval == "step" else None)
                has_acc = False
            it = iter(train_loader) if gstep is None else iter(())
            while True:
                group = [_unpack(b) for b in itertools.islice(it, accumulate)]
                if not group:
                    break
                sizes = [_batch_len(x, y) for x, y in group]
                total = sum(sizes)
                if total == 0:
                    continue
                step_in_epoch += 1
                optimizer.zero_grad()
                group_loss = 0.0
                for j, ((x, y), b) in enumerate(zip(group, sizes)):
                    out = model(x)
                    loss = _scalar_loss(loss_fn(out, y))
                    value = loss.item()
                    if not math.isfinite(value):
                        optimizer.zero_grad()
                        raise FloatingPointError(
                            f"loss is {value} at epoch {epoch + 1}, step {step_in_epoch} "
                            f"(optimizer step {history.steps + 1} of this fit, micro-batch {j + 1} of {len(group)}); "
                            "the parameters were not updated by this step"
                        )
                    if reduction == "mean":
                        if b != total:
                            loss = loss * (b / total)
                        group_loss += value * b
                    else:
                        group_loss += value
                    loss.backward()
                    if has_acc:
                        c = _n_correct(out, y, loss_fn)
                        if c is None:
                            has_acc = False
                        else:
                            ep_correct += c[0]
                            ep_counted += c[1]
                if max_grad_norm is not None:
                    clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], max_grad_norm)
                optimizer.step()
                history.steps += 1
                history.loss.append(group_loss / total if reduction == "mean" else group_loss)
                ep_loss += group_loss
                ep_n += total
                if scheduler is not None and scheduler_interval == "step":
                    scheduler.step()
                bar.update(1)
                bar.set_postfix(loss=f"{ep_loss / max(ep_n, 1):.4f}", refresh=False)
            history.train_loss.append(ep_loss / ep_n if ep_n else math.nan)
            history.train_accuracy.append(ep_correct / ep_counted if has_acc and ep_counted else None)
            if val_loader is not None:
                vl, va = evaluate(model, val_loader, loss_fn, device=device)
                history.val_loss.append(vl)
                history.val_accuracy.append(va)
                post = {"loss": f"{history.train_loss[-1]:.4f}", "val_loss": f"{vl:.4f}"}
                if va is not None:
                    post["val_acc"] = f"{100 * va:.1f}%"
                bar.set_postfix(post, refresh=True)
            if scheduler is not None and scheduler_interval == "epoch":
                scheduler.step()
        finally:
            bar.close()
    return history


def _gpu_epoch(gstep: Any, loader: Any, reduction: str, history: History, bar: Any, epoch: int, log_every: int,
               step_scheduler: Any) -> tuple[float, int]:
    """One epoch of GPU steps; losses are read every `log_every` steps, then the host is synced."""
    g = gstep.gpu
    ep_loss, ep_n, pending = 0.0, 0, []  # pending: (step number, batch size) not read yet

    def read() -> None:
        nonlocal ep_loss, ep_n
        if not pending:
            return
        vals = g.losses(pending[0][0], pending[-1][0] + 1)
        for (k, b), v in zip(pending, vals):
            if not math.isfinite(v):
                raise FloatingPointError(
                    f"loss is {v} at epoch {epoch + 1} (GPU step {k + 1}); the host model keeps the parameters of the "
                    "last sync (end of the previous epoch), the GPU step was not copied back")
            history.loss.append(v)
            ep_loss += v * b if reduction == "mean" else v
            ep_n += b
        pending.clear()
        bar.set_postfix(loss=f"{ep_loss / max(ep_n, 1):.4f}", refresh=False)

    for batch in loader:
        x, y = _unpack(batch)
        b = _batch_len(x, y)
        if b == 0:
            continue
        gstep(x, y)
        pending.append((g.steps - 1, b))
        history.steps += 1
        if step_scheduler is not None:
            step_scheduler.step()
        bar.update(1)
        if len(pending) >= log_every:
            read()
    read()
    gstep.to_model()
    gstep.optimizer_state()
    return ep_loss, ep_n


def evaluate(model: Any, loader: Any, loss_fn: Any = None, device: str = "cpu") -> tuple[float | None, float | None]:
    """Mean loss per example and accuracy of ``model`` over ``loader``, without gradients.

    The model is put in eval mode and restored afterwards. The loss is None without a
    ``loss_fn``; the accuracy (argmax of ``(N, C)`` logits against integer labels, or
    ``logit > 0`` against 0/1 targets for BCE-with-logits) is None when it does not apply.
    ``device="gpu"`` runs the model's forward pass on the GPU (recorded once per batch shape,
    parameters uploaded once per call); the loss and accuracy are taken from its outputs.
    """
    if device not in ("cpu", "gpu"):
        raise ValueError(f"evaluate: device must be 'cpu' or 'gpu', got {device!r}")
    fwd = None
    if device == "gpu":
        from .gpu.forward import GpuForward

        fwd = GpuForward(model)
    was_training = getattr(model, "training", None)
    if hasattr(model, "eval"):
        model.eval()
    reduction = _reduction(loss_fn) if loss_fn is not None else "mean"
    total_loss, n, correct, counted, has_acc = 0.0, 0, 0, 0, True
    try:
        with no_grad():
            for batch in loader:
                x, y = _unpack(batch)
                b = _batch_len(x, y)
                if fwd is None:
                    out = model(x)
                else:
                    out = as_tensor(fwd(np.asarray(x.numpy() if isinstance(x, Tensor) else x, np.float32)))
                if loss_fn is not None:
                    lv = np.asarray(loss_fn(out, y).numpy(), dtype=np.float64)
                    total_loss += float(lv.sum()) if reduction != "mean" else float(lv) * b
                n += b
                if has_acc:
                    c = _n_correct(out, y, loss_fn)
                    if c is None:
                        has_acc = False
                    else:
                        correct += c[0]
                        counted += c[1]
    finally:
        if was_training is not None and hasattr(model, "train"):
            model.train(was_training)
    loss = (total_loss / n if n else math.nan) if loss_fn is not None else None
    acc = correct / counted if has_acc and counted else None
    return loss, acc
