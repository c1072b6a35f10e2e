"""Command line: ``batchgrad train`` (also ``python -m batchgrad train``).

Trains an MLP classifier with minibatch gradient descent on the bundled UCI digits (or
on arrays from an ``.npz`` file) and prints the test accuracy::

    batchgrad train                                  # the defaults reach >= 95% in seconds
    batchgrad train --optimizer momentum --lr 0.05 --epochs 30 --plot loss.png
    batchgrad train --data mydata.npz --batch-size 64 --accumulate 4
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from .tensor import MAX_THREADS

# (default lr, description) per --optimizer choice; the defaults are tuned for the digits MLP.
OPTIMIZERS: dict[str, tuple[float, str]] = {
    "sgd": (0.2, "SGD"),
    "momentum": (0.1, "SGD(momentum=0.9, nesterov=True)"),
    "adam": (0.01, "Adam"),
    "adamw": (0.01, "AdamW(weight_decay=1e-2)"),
    "rmsprop": (0.002, "RMSprop"),
    "adagrad": (0.05, "Adagrad"),
}
DEFAULT_EPOCHS = 20
DEFAULT_BATCH = 32
DEFAULT_HIDDEN = (128,)
SPLIT_SEED = 0
TEST_FRACTION = 0.2


class CLIError(Exception):
    """A user error: printed as ``batchgrad train: error: ...`` with exit status 2."""


def _checked(convert: Any, ok: Any, what: str) -> Any:
    """An argparse type: convert, then check, with one message for both failures."""
    def parse(s: str) -> Any:
        try:
            v = convert(s)
        except ValueError:
            v = None
        if v is None or not ok(v):
            raise argparse.ArgumentTypeError(f"expected {what}, got {s!r}")
        return v
    return parse


_pos_int = _checked(int, lambda v: v > 0, "a positive integer")
_nonneg_int = _checked(int, lambda v: v >= 0, "a non-negative integer")
_threads = _checked(int, lambda v: 1 <= v <= MAX_THREADS, f"an integer in 1..{MAX_THREADS}")
_pos_float = _checked(float, lambda v: v > 0 and math.isfinite(v), "a positive number")


def _nonneg_float(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative number, got {s!r}") from None
    if not (v >= 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"expected a non-negative number, got {s!r}")
    return v


def _sizes(s: str) -> tuple[int, ...]:
    if s.strip() in ("", "none"):
        return ()
    try:
        return tuple(_pos_int(p) for p in s.split(","))
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive layer widths like 128 or 256,64, got {s!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="batchgrad", description="batchgrad: minibatch gradient descent with a Rust autodiff core.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    t = sub.add_parser(
        "train",
        help="train an MLP classifier on the bundled digits (or an .npz) and print the test accuracy",
        description="Train an MLP classifier (inputs -> hidden ReLU layers -> classes) with minibatch gradient "
        "descent, showing a progress bar, and print the test accuracy. Without --data it uses the bundled "
        "UCI handwritten digits (1797 8x8 images, 10 classes) with a fixed 80/20 split.",
    )
    t.add_argument("--optimizer", choices=list(OPTIMIZERS), default="adam",
                   help="sgd, momentum (SGD with Nesterov momentum 0.9), adam, adamw, rmsprop or adagrad (default: adam)")
    t.add_argument("--lr", type=_pos_float, default=None,
                   help="learning rate (default per optimizer: " + ", ".join(f"{k} {v[0]:g}" for k, v in OPTIMIZERS.items()) + ")")
    t.add_argument("--epochs", type=_nonneg_int, default=DEFAULT_EPOCHS, help=f"passes over the training set (default: {DEFAULT_EPOCHS})")
    t.add_argument("--batch-size", type=_pos_int, default=DEFAULT_BATCH, help=f"examples per micro-batch (default: {DEFAULT_BATCH})")
    t.add_argument("--accumulate", type=_pos_int, default=1,
                   help="micro-batches per optimizer step (gradient accumulation: the step is that of one batch of "
                   "batch-size x accumulate examples; default: 1)")
    t.add_argument("--hidden", type=_sizes, default=DEFAULT_HIDDEN, metavar="N[,N...]",
                   help="hidden layer widths, comma-separated ('none' for a linear model; default: " + ",".join(map(str, DEFAULT_HIDDEN)) + ")")
    t.add_argument("--schedule", choices=["cosine", "none"], default="cosine",
                   help="learning-rate schedule over the epochs (default: cosine annealing to 0)")
    t.add_argument("--weight-decay", type=_nonneg_float, default=None,
                   help="weight decay (default: 0, or 1e-2 for adamw)")
    t.add_argument("--seed", type=_nonneg_int, default=0, help="seed of the weight init and the batch order (default: 0)")
    t.add_argument("--data", metavar="PATH.npz", default=None,
                   help="arrays X_train, y_train, X_test, y_test (or X, y, split 80/20 with a fixed seed) "
                   "instead of the bundled digits; y holds integer class labels")
    t.add_argument("--plot", metavar="PATH.png", default=None, help="save the loss curve (needs matplotlib)")
    t.add_argument("--save", metavar="PATH", default=None, help="save a checkpoint {model, optimizer, ...} with bg.save")
    t.add_argument("--threads", type=_threads, default=None, help="threads of the CPU kernels (default: BATCHGRAD_NUM_THREADS or all cores)")
    t.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    t.add_argument("--device", choices=["cpu", "gpu"], default="cpu",
                   help="where the training steps run (gpu: wgpu, needs `pip install 'batchgrad[gpu]'`; default: cpu)")
    t.set_defaults(func=cmd_train)
    from .lab import add_lab_parser  # `batchgrad lab EXPERIMENT`: the minibatch lab
    add_lab_parser(sub)
    return parser


def _as_xy(X: Any, y: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
    X, y = np.asarray(X), np.asarray(y)
    if X.dtype.kind not in "biuf" or X.ndim < 1:
        raise CLIError(f"{what}: X must be a numeric array of shape (N, features), got {X.dtype} {X.shape}")
    X = X.reshape(len(X), -1).astype(np.float32)
    if y.ndim != 1 or len(y) != len(X):
        raise CLIError(f"{what}: y must have shape ({len(X)},) to match X of shape {X.shape}, got {y.shape}")
    if y.dtype.kind == "f" and np.all(np.mod(y, 1) == 0):
        y = y.astype(np.int64)
    if y.dtype.kind not in "iu" or (y.size and y.min() < 0):
        raise CLIError(f"{what}: y must hold non-negative integer class labels, got dtype {y.dtype}")
    return X, y.astype(np.int64)


def load_data(path: str | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str]:
    """(X_train, y_train, X_test, y_test, description) from the bundled digits or an .npz file."""
    import batchgrad as bg

    if path is None:
        X_tr, X_te, y_tr, y_te = bg.datasets.train_test_split_digits(test_fraction=TEST_FRACTION, seed=SPLIT_SEED)
        return X_tr, y_tr, X_te, y_te, "the bundled UCI digits"
    if not os.path.exists(path):
        raise CLIError(f"--data: no such file: {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as e:  # noqa: BLE001 - any unreadable file is a user error
        raise CLIError(f"--data: cannot read {path} as an .npz file: {e}") from None
    if {"X_train", "y_train", "X_test", "y_test"} <= arrays.keys():
        X_tr, y_tr = _as_xy(arrays["X_train"], arrays["y_train"], f"{path} (X_train, y_train)")
        X_te, y_te = _as_xy(arrays["X_test"], arrays["y_test"], f"{path} (X_test, y_test)")
        if X_tr.shape[1] != X_te.shape[1]:
            raise CLIError(f"{path}: X_train has {X_tr.shape[1]} features but X_test has {X_te.shape[1]}")
    elif {"X", "y"} <= arrays.keys():
        X, y = _as_xy(arrays["X"], arrays["y"], f"{path} (X, y)")
        n = len(y)
        n_test = math.ceil(TEST_FRACTION * n)
        if not 0 < n_test < n:
            raise CLIError(f"{path}: {n} examples are too few to split into train and test sets")
        perm = np.random.default_rng(SPLIT_SEED).permutation(n)
        X_tr, y_tr, X_te, y_te = X[perm[n_test:]], y[perm[n_test:]], X[perm[:n_test]], y[perm[:n_test]]
    else:
        raise CLIError(f"{path}: expected arrays X_train, y_train, X_test, y_test (or X, y), found {sorted(arrays)}")
    if len(y_tr) == 0 or len(y_te) == 0:
        raise CLIError(f"{path}: the train and test sets must not be empty")
    return X_tr, y_tr, X_te, y_te, path


def make_optimizer(name: str, params: Any, lr: float, weight_decay: float | None) -> Any:
    import batchgrad as bg

    wd = 0.0 if weight_decay is None else weight_decay
    if name == "sgd":
        return bg.optim.SGD(params, lr=lr, weight_decay=wd)
    if name == "momentum":
        return bg.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=wd)
    if name == "adam":
        return bg.optim.Adam(params, lr=lr, weight_decay=wd)
    if name == "adamw":
        return bg.optim.AdamW(params, lr=lr, weight_decay=1e-2 if weight_decay is None else weight_decay)
    if name == "rmsprop":
        return bg.optim.RMSprop(params, lr=lr, weight_decay=wd)
    if name == "adagrad":
        return bg.optim.Adagrad(params, lr=lr, weight_decay=wd)
    raise CLIError(f"unknown optimizer {name!r}")


def plot_history(history: Any, path: str, title: str) -> bool:
    """Write the loss curve to ``path``; False (with a message) when matplotlib is missing."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        print(f"--plot: matplotlib is not installed, so no plot was written to {path} "
              "(install it with: pip install matplotlib, or pip install 'batchgrad[plot]')", file=sys.stderr)
        return False
    fig = Figure(figsize=(7, 4), dpi=100)
    ax = fig.add_subplot()
    steps = np.arange(1, len(history.loss) + 1)
    ax.plot(steps, history.loss, lw=0.7, alpha=0.5, label="train loss per step")
    if history.train_loss:
        per_epoch = len(history.loss) / len(history.train_loss)
        ends = per_epoch * np.arange(1, len(history.train_loss) + 1)
        ax.plot(ends, history.train_loss, "o-", label="train loss per epoch")
        if history.val_loss:
            ax.plot(ends, history.val_loss, "s-", label="test loss per epoch")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy loss")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    return True


def cmd_train(args: argparse.Namespace) -> int:
    import batchgrad as bg

    if args.threads is not None:
        bg.set_num_threads(args.threads)
    if args.device == "gpu":
        if args.accumulate != 1:
            print("batchgrad train: --device gpu needs --accumulate 1", file=sys.stderr)
            return 2
        try:
            name = bg.gpu.device.get().name
        except bg.gpu.GpuUnavailableError as e:
            print(f"batchgrad train: --device gpu: {e}", file=sys.stderr)
            return 2
    world = bg.distributed.init() if bg.distributed.launched_by_mpi() else bg.distributed.get_world()
    if world.size > 1 and args.device != "cpu":
        if world.is_root:
            print("batchgrad train: under mpirun, training is data-parallel on the CPU; drop --device gpu", file=sys.stderr)
        return 2
    root = world.is_root
    X_tr, y_tr, X_te, y_te, source = load_data(args.data)
    n_classes = int(max(y_tr.max(), y_te.max())) + 1
    sizes = [X_tr.shape[1], *args.hidden, n_classes]
    lr = args.lr if args.lr is not None else OPTIMIZERS[args.optimizer][0]
    model = bg.nn.MLP(sizes, activation="relu", seed=args.seed)
    opt = make_optimizer(args.optimizer, model.parameters(), lr, args.weight_decay)
    sched = None
    if args.schedule == "cosine" and args.epochs > 0:
        sched = bg.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.epochs)
    train_set = bg.data.ArrayDataset(X_tr, y_tr)
    if world.size > 1:  # each rank its shard of every epoch; --batch-size examples per rank
        sampler = bg.distributed.DistributedSampler(train_set, shuffle=True, seed=args.seed)
        train_loader = bg.data.DataLoader(train_set, batch_size=args.batch_size, sampler=sampler)
    else:
        train_loader = bg.data.DataLoader(train_set, batch_size=args.batch_size, shuffle=True, seed=args.seed)
    test_loader = bg.data.DataLoader(bg.data.ArrayDataset(X_te, y_te), batch_size=512)
    loss_fn = bg.nn.CrossEntropyLoss()
    arch = "-".join(str(s) for s in sizes)
    batch = f"{args.batch_size}" + (f" x {args.accumulate} accumulated" if args.accumulate > 1 else "")
    if world.size > 1:
        batch += f" per rank on {world.size} ranks (MPI) = {args.batch_size * args.accumulate * world.size} per step"
    if root:
        print(f"training MLP {arch} on {source} ({len(y_tr)} train / {len(y_te)} test examples): "
              f"{OPTIMIZERS[args.optimizer][1]} lr={lr:g}, {args.schedule} schedule, batch {batch}, "
              f"{args.epochs} epochs, seed {args.seed}" + (f", on {name}" if args.device == "gpu" else ""), flush=True)
    t0 = time.perf_counter()
    history = bg.fit(model, loss_fn, opt, train_loader, epochs=args.epochs, accumulate=args.accumulate,
                     val_loader=test_loader, progress=not args.no_progress, scheduler=sched, device=args.device,
                     distributed=world.size > 1)
    elapsed = time.perf_counter() - t0
    if not root:  # every rank holds the same model; rank 0 reports and saves
        return 0
    test_loss, test_acc = bg.evaluate(model, test_loader, loss_fn, device=args.device)
    if history.train_loss:
        print(f"trained {history.steps} steps in {elapsed:.1f} s: final train loss {history.train_loss[-1]:.4f}, "
              f"test loss {test_loss:.4f}")
    if args.save:
        bg.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                 "scheduler": sched.state_dict() if sched is not None else None,
                 "epoch": args.epochs, "sizes": sizes}, args.save)
        print(f"saved checkpoint to {args.save}")
    if args.plot:
        if plot_history(history, args.plot, f"MLP {arch}, {args.optimizer}, lr {lr:g}"):
            print(f"saved loss curve to {args.plot}")
    correct = int(round(test_acc * len(y_te)))
    print(f"test accuracy: {100 * test_acc:.1f}% ({correct}/{len(y_te)})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``batchgrad`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except CLIError as e:
        print(f"batchgrad {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
