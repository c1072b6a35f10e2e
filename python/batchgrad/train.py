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

from . import _core
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


def _add_correct(acc: list, out: Any, y: Any, loss_fn: Any) -> None:
    """Add one batch to the running ``acc = [correct, counted, applies]``; ``applies`` turns
    False for good at the first batch without an accuracy (not a classification)."""
    if acc[2]:
        c = _n_correct(out, y, loss_fn)
        if c is None:
            acc[2] = False
        else:
            acc[0] += c[0]
            acc[1] += c[1]


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
    distributed: bool = False,
    checkpoint: str | None = None,
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
        distributed: data-parallel training over the ranks of :func:`batchgrad.distributed.init`
            (MPI; a 1-process world trains as without it). Rank 0's parameters are broadcast
            first; each optimizer step's gradients (after all ``accumulate`` micro-batches) are
            summed over the ranks in one exchange of one flat buffer (an all-reduce, or on one
            machine a barrier over MPI shared memory), weighted by each rank's
            examples, so every rank takes the step of one batch of all ranks' examples. Give
            each rank its shard with :class:`batchgrad.distributed.DistributedSampler`. The
            history (losses, accuracies, validation metrics) is of all ranks together; only rank
            0 shows progress and writes the checkpoint. An exception in a step on any rank is
            raised on every rank as a ``DistributedError``; one elsewhere (or a rank that stops
            answering past the time-out) aborts the whole job. CPU only.
        checkpoint: a path: after every epoch, :func:`batchgrad.save` (atomic) writes
            ``{"model", "optimizer", "scheduler", "epoch"}`` there (on rank 0 only when
            distributed); resume with ``start_epoch=state["epoch"]``.

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
    reducer = None
    if distributed:
        if device != "cpu":
            raise ValueError("fit: distributed=True runs on the CPU (device='cpu'); the GPU step keeps its gradients "
                             "on the GPU and has no all-reduce")
        from .distributed import GradientReducer, broadcast_parameters, get_world

        world = get_world()
        progress = progress and world.is_root
        if world.size > 1:
            params = [p for g in optimizer.param_groups for p in g["params"]]
            broadcast_parameters(params, world=world)
            reducer = GradientReducer([p.shape for p in params], n_stats=4, world=world)
    is_root = reducer is None or reducer.world.is_root
    if device == "gpu":
        if accumulate != 1 or max_grad_norm is not None:
            raise ValueError("fit(device='gpu') supports accumulate=1 and max_grad_norm=None only "
                             f"(got accumulate={accumulate}, max_grad_norm={max_grad_norm})")
        log_every = _check_int("log_every", log_every, 1)
        from .compile import compile_step

        gstep = compile_step(model, loss_fn, optimizer, device="gpu")

    history = History()
    if hasattr(model, "train"):
        model.train()
    try:
        n_groups: int | None = -(-len(train_loader) // accumulate)
    except TypeError:
        n_groups = None
    last_epoch = first_epoch + epochs
    try:
        _epochs(model, loss_fn, optimizer, train_loader, val_loader, first_epoch, last_epoch, start_epoch, accumulate,
                reduction, scheduler, scheduler_interval, max_grad_norm, device, log_every, gstep, reducer, progress,
                checkpoint if is_root else None, n_groups, history)
    except BaseException as e:
        from .distributed import DistributedError, abort

        if reducer is None or isinstance(e, DistributedError):
            raise
        # not in a gradient step (e.g. in validation, the loader between steps, Ctrl-C): the other
        # ranks are waiting in a collective this rank will never join
        abort(f"fit raised {type(e).__name__}: {e}")
    return history


def _epochs(model: Any, loss_fn: Any, optimizer: Any, train_loader: Any, val_loader: Any, first_epoch: int,
            last_epoch: int, start_epoch: int | None, accumulate: int, reduction: str, scheduler: Any,
            scheduler_interval: str, max_grad_norm: float | None, device: str, log_every: int, gstep: Any,
            reducer: Any, progress: bool, checkpoint: str | None, n_groups: int | None, history: History) -> None:
    from tqdm.auto import tqdm

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
                if reducer is not None:
                    out = _distributed_group(model, loss_fn, optimizer, it, accumulate, reduction, reducer, epoch,
                                             step_in_epoch + 1, history)
                    if out is None:
                        break
                    group_loss, total, c_sum, c_cnt, acc_ok = out
                else:
                    group = [_unpack(b) for b in itertools.islice(it, accumulate)]
                    if not group:
                        break
                    optimizer.zero_grad()
                    group_loss, total, c_sum, c_cnt, acc_ok = _group_grads(
                        model, loss_fn, optimizer, group, reduction, epoch, step_in_epoch + 1, history, has_acc)
                if total == 0:
                    continue
                step_in_epoch += 1
                has_acc = has_acc and acc_ok
                ep_correct += c_sum
                ep_counted += c_cnt
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
                vl, va = evaluate(model, val_loader, loss_fn, device=device, distributed=reducer is not None)
                history.val_loss.append(vl)
                history.val_accuracy.append(va)
                post = {"loss": f"{history.train_loss[-1]:.4f}", "val_loss": f"{vl:.4f}"}
                if va is not None:
                    post["val_acc"] = f"{100 * va:.1f}%"
                bar.set_postfix(post, refresh=True)
            if scheduler is not None and scheduler_interval == "epoch":
                scheduler.step()
            if checkpoint is not None:
                from .io import save

                save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                      "scheduler": scheduler.state_dict() if scheduler is not None else None,
                      "epoch": epoch + 1}, checkpoint)
        finally:
            bar.close()


def _group_grads(model: Any, loss_fn: Any, optimizer: Any, group: list, reduction: str, epoch: int, step: int,
                 history: History, want_acc: bool) -> tuple[float, int, int, int, bool]:
    """Forward and backward of one optimizer step's micro-batches, accumulating into ``.grad``
    the gradient of the group's loss (the mean over its examples for a ``"mean"`` loss).
    Returns (loss sum: value x examples for "mean", examples, correct, counted, accuracy applies)."""
    sizes = [_batch_len(x, y) for x, y in group]
    total = sum(sizes)
    group_loss, acc = 0.0, [0, 0, want_acc]
    if total == 0:
        return 0.0, 0, 0, 0, want_acc
    for j, ((x, y), b) in enumerate(zip(group, sizes)):
        out = model(x)
        loss = _scalar_loss(loss_fn(out, y))
        value = loss.item()
        if not math.isfinite(value):
            optimizer.zero_grad()
            raise FloatingPointError(
                f"loss is {value} at epoch {epoch + 1}, step {step} "
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
        _add_correct(acc, out, y, loss_fn)
    return group_loss, total, acc[0], acc[1], acc[2]


def _distributed_group(model: Any, loss_fn: Any, optimizer: Any, it: Any, accumulate: int, reduction: str,
                       reducer: Any, epoch: int, step: int, history: History) -> tuple[float, int, int, int, bool] | None:
    """One optimizer step's gradients on this rank, summed over all ranks by ``reducer`` (one
    exchange); None when every rank's loader is exhausted. An exception on any rank (also a
    non-finite loss, or a loader with fewer batches than the others') is raised on every rank as a
    DistributedError before any parameter changes."""
    params = [p for g in optimizer.param_groups for p in g["params"]]
    err: BaseException | None = None
    group: list = []
    n = 0
    stats = [0.0, 0.0, 0.0, 0.0]  # loss sum, correct, counted, ranks without accuracy
    try:
        group = [_unpack(b) for b in itertools.islice(it, accumulate)]
        if group:
            optimizer.zero_grad()
            gl, n, c, cnt, acc_ok = _group_grads(model, loss_fn, optimizer, group, reduction, epoch, step, history, True)
            stats = [gl, c, cnt, 0.0 if acc_ok else 1.0]
    except Exception as e:  # noqa: BLE001 - raised on every rank by reduce()
        err = e
    grads = [None if p.grad is None else p.grad.numpy() for p in params]
    out = reducer.reduce(lambda scale, again: reducer.pack(grads, scale), n, reduction == "mean", stats, err,
                         has_batch=bool(group))
    if out is None:
        return None
    st, total = out
    for p, g, had in zip(params, reducer.grads, grads):
        if had is not None:
            p.grad = Tensor(_core.from_numpy(g, False))
    return float(st[0]), total, int(st[1]), int(st[2]), st[3] == 0

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


def evaluate(model: Any, loader: Any, loss_fn: Any = None, device: str = "cpu",
             distributed: bool = False) -> tuple[float | None, float | None]:
    """Mean loss per example and accuracy of ``model`` over ``loader``, without gradients.

    The model is put in eval mode and restored afterwards. The loss is None without a
    ``loss_fn``; the accuracy (argmax of ``(N, C)`` logits against integer labels, or
    ``logit > 0`` against 0/1 targets for BCE-with-logits) is None when it does not apply.
    ``device="gpu"`` runs the model's forward pass on the GPU (recorded once per batch shape,
    parameters uploaded once per call); the loss and accuracy are taken from its outputs.
    ``distributed=True`` sums the loss, example and correct counts over the ranks of
    :func:`batchgrad.distributed.init` (one all-reduce), so every rank returns the metrics of all
    ranks' examples together: give each rank its shard with a ``DistributedSampler(...,
    shuffle=False)`` (whose padding repeats up to ``world size - 1`` examples).
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
    total_loss, n, acc = 0.0, 0, [0, 0, True]
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
                _add_correct(acc, out, y, loss_fn)
    finally:
        if was_training is not None and hasattr(model, "train"):
            model.train(was_training)
    correct, counted, has_acc = acc
    if distributed:
        from .distributed import allreduce_

        sums = allreduce_(np.array([total_loss, n, correct, counted, 0.0 if has_acc else 1.0]), "sum",
                          what="validation metrics all-reduce")
        total_loss, n, correct, counted, has_acc = float(sums[0]), int(sums[1]), int(sums[2]), int(sums[3]), sums[4] == 0
    loss = (total_loss / n if n else math.nan) if loss_fn is not None else None
    acc = correct / counted if has_acc and counted else None
    return loss, acc
