"""Linear probes done right: features extracted once and cached, then closed-form or
L-BFGS solvers on the cached features.

The protocol of Kornblith et al. (2019) and Kumar et al. (2022): penultimate features of
the frozen backbone (inference mode), standardised with the training split's mean and
std, a multinomial logistic regression fitted with L-BFGS (on the host, in float64:
the same features give the same head, bit for bit) for every L2 strength on a log grid
(warm-started from the previous, stronger one), the strength picked on the validation
split. Also closed-form ridge regression to +-1 targets (one eigendecomposition
serves every L2 value, as in big_vision's few-shot evaluator) and an Adam-trained head.
The returned head works on raw features: the standardisation is folded into it.
"""

import dataclasses
import functools
import hashlib
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from tljax import parallel
from tljax.errors import unknown
from tljax.train import classification_metrics

SOLVERS = ("lbfgs", "ridge", "adam")
L2_GRID = tuple(float(x) for x in np.logspace(-6, 5, 12))
_FEATURE_VERSION = "1"  # bump when what "features" means changes


# ------------------------------------------------------------------ feature extraction


def fingerprint_arrays(*trees) -> str:
    """Returns a content hash of every array in ``trees`` (shapes, dtypes and bytes)."""
    h = hashlib.sha256()
    for tree in trees:
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
            a = np.ascontiguousarray(np.asarray(leaf))
            h.update(f"{jax.tree_util.keystr(path)}{a.shape}{a.dtype}".encode())
            h.update(a.tobytes())
    return h.hexdigest()


def default_cache_dir() -> str:
    """Returns ``$TLJAX_FEATURE_CACHE``, else ``~/.cache/tljax/features``."""
    return os.environ.get("TLJAX_FEATURE_CACHE", os.path.expanduser("~/.cache/tljax/features"))


@functools.lru_cache(maxsize=16)
def _features_on(module, mesh):
    # One jitted function per (module, mesh), the variables an argument: one compilation
    # serves every split and call with the same batch shape.
    return parallel.replicated_jit(
        lambda variables, batch: module.apply(variables, batch, train=False,
                                              method="features"), mesh)


def forward_features(module, variables, inputs: np.ndarray, batch_size: int) -> np.ndarray:
    """Returns the backbone features of ``inputs`` in inference mode, whole on every
    process: each batch is split over the devices of every process, and each process
    loads only its rows."""
    mesh = parallel.make_mesh()
    return parallel.map_batches(_features_on(module, mesh), mesh,
                                parallel.replicate_on(mesh, variables), inputs,
                                batch_size).astype(np.float32)


def _forward_to_file(module, variables, inputs, batch_size: int, path: str) -> np.ndarray:
    """Returns the features of streamed ``inputs``, written batch by batch into an .npy
    memmap beside ``path`` (by process 0; '' for none) and renamed to ``path`` at the end,
    so neither the inputs nor a second copy of the features is ever whole in memory."""
    mesh = parallel.make_mesh()
    out, tmp = None, ""
    try:
        for start, batch in parallel.batch_outputs(_features_on(module, mesh), mesh,
                                                   parallel.replicate_on(mesh, variables),
                                                   inputs, batch_size):
            if out is None:
                shape = (len(inputs),) + batch.shape[1:]
                if path and parallel.is_writer():
                    os.makedirs(os.path.dirname(path), exist_ok=True)
                    tmp = f"{path}.{os.getpid()}.tmp.npy"
                    out = np.lib.format.open_memmap(tmp, "w+", np.float32, shape)
                else:
                    out = np.empty(shape, np.float32)
            out[start:start + len(batch)] = batch
    except BaseException:
        if tmp and os.path.exists(tmp):  # an interrupted extraction leaves nothing behind
            os.remove(tmp)
        raise
    if not tmp:
        return out
    out.flush()
    del out
    os.replace(tmp, path)  # atomic: a concurrent reader never sees half a file
    return np.load(path)


def _cache_hit(path: str) -> bool:
    """Returns whether process 0 has ``path``: every process takes its answer, so they all
    take the same branch (the forward pass is a collective)."""
    have = bool(path) and parallel.is_writer() and os.path.isfile(path)
    return bool(parallel.from_writer(np.int32(have)))


def _read_cached(path: str) -> np.ndarray:
    """Returns the cached features at ``path`` as process 0 reads them, on every process
    (caches are per host: the others need not have the file)."""
    if jax.process_count() == 1:
        return np.load(path)
    features = np.load(path) if parallel.is_writer() else None
    shape = parallel.from_writer(np.asarray(features.shape if features is not None
                                            else (0, 0), np.int64))
    if features is None:
        features = np.zeros(tuple(int(d) for d in shape), np.float32)
    return np.asarray(parallel.from_writer(features), np.float32)


def extract_features(module, variables: dict, inputs: np.ndarray, batch_size: int = 256,
                     cache_dir: str | None = None, key: str = "") -> tuple:
    """Returns ``(features, cache_hit)`` for model inputs, cached on disk.

    The cache key hashes ``key`` (model name, dataset, split), the backbone variables, the
    matmul precision in effect and the model inputs themselves, so a change of weights,
    preprocessing, data or precision makes a new entry; the same request from any run or
    process reads the file and runs no forward pass. ``cache_dir`` '' disables the cache.
    In a multi-process run the forward pass is split over every process's devices,
    process 0's cache decides and process 0 alone writes it; every process returns the
    whole features.
    """
    cache_dir = default_cache_dir() if cache_dir is None else cache_dir
    backbone = {c: v["backbone"] for c, v in variables.items() if "backbone" in v}
    # A streamed split (tljax.data.streaming) is named by its prepared files, rows,
    # corruption and preprocessing: hashing its pixels would read it all.
    content = inputs.cache_key() if hasattr(inputs, "cache_key") else fingerprint_arrays(inputs)
    # The matmul precision the forward pass is traced at (a run's ``matmul_precision``):
    # on a GPU another precision gives other features. Full float32 adds nothing, so the
    # entries written before the setting existed keep their names.
    precision = jax.config.jax_default_matmul_precision
    digest = hashlib.sha256(
        f"{_FEATURE_VERSION}|{key}|{fingerprint_arrays(backbone)}|{content}".encode()
        + (b"" if precision == "highest" else f"|{precision}".encode())).hexdigest()[:32]
    path = os.path.join(cache_dir, f"{digest}.npy") if cache_dir else ""
    if _cache_hit(path):
        return _read_cached(path), True
    if hasattr(inputs, "cache_key"):
        return _forward_to_file(module, variables, inputs, batch_size, path), False
    features = forward_features(module, variables, inputs, batch_size)
    if path and parallel.is_writer():  # one writer; every process has the features
        os.makedirs(cache_dir, exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp.npy"
        np.save(tmp, features)
        os.replace(tmp, path)  # atomic: a concurrent reader never sees half a file
    return features, False


# ------------------------------------------------------------------------------ solvers


@dataclasses.dataclass
class ProbeResult:
    """A fitted head on raw features: ``logits = features @ kernel + bias``."""

    kernel: np.ndarray
    bias: np.ndarray
    solver: str
    l2: float
    sweep: list  # [{"l2", "val_accuracy", "val_loss", "iterations", "converged"}], grid order
    seconds: float

    def logits(self, features: np.ndarray) -> np.ndarray:
        """Returns the head's logits for raw (unstandardised) features."""
        return features @ self.kernel + self.bias


def standardizer(x: np.ndarray) -> tuple:
    """Returns ``(mean, std)`` of the training features (std 1 where a feature is constant)."""
    mean, std = x.mean(0), x.std(0)
    return mean, np.where(std > 1e-12, std, 1.0)


def fold_standardisation(kernel, bias, mean, std) -> tuple:
    """Returns a head on raw features equal to ``kernel, bias`` on ``(x - mean) / std``."""
    kernel_raw = kernel / std[:, None]
    return kernel_raw, bias - mean @ kernel_raw


def logistic_objective(params, x, y, l2):
    """Returns mean softmax cross-entropy + ``l2 / 2 * ||kernel||^2`` (bias unpenalised)."""
    logits = x @ params["kernel"] + params["bias"]
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return ce + 0.5 * l2 * jnp.sum(params["kernel"] ** 2)


def _softmax_cross_entropy(flat, x, onehot, l2):
    """Returns ``(objective, gradient)`` of ``logistic_objective`` in float64 numpy, with
    the kernel and bias flattened into one vector (what scipy's L-BFGS-B works on)."""
    d, k = x.shape[1], onehot.shape[1]
    kernel, bias = flat[:d * k].reshape(d, k), flat[d * k:]
    logits = x @ kernel + bias
    logits -= logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    total = exp.sum(axis=1, keepdims=True)
    n = len(x)
    ce = float(np.sum(np.log(total[:, 0]) - np.sum(logits * onehot, axis=1))) / n
    residual = (exp / total - onehot) / n
    grad_kernel = x.T @ residual + l2 * kernel
    value = ce + 0.5 * l2 * float(np.sum(kernel * kernel))
    return value, np.concatenate([grad_kernel.ravel(), residual.sum(axis=0)])


def fit_logistic(x, y, num_classes: int, l2: float, init=None, max_iter: int = 1000,
                 tol: float = 1e-6) -> tuple:
    """Returns ``(params, iterations, converged)``: L-BFGS on ``logistic_objective``,
    solved on the host in float64 (scipy's L-BFGS-B), params as float64 numpy arrays.

    On the host, not in XLA: a jitted float32 solver gave different heads for the same
    features depending on what the compilation cache held, and a head that stops short
    of the optimum inherits every rounding difference. Here the same features give the
    same head, bit for bit. ``converged`` is True when the largest gradient entry fell
    below ``tol``; the solver also stops after ``max_iter`` iterations or when a line
    search can no longer lower the objective (float64's floor).
    """
    from scipy import optimize  # a dependency of scikit-learn; imported where used

    x = np.asarray(x, np.float64)
    if not np.isfinite(x).all():
        # scipy would return the zero start point as a head, recorded as a finished run.
        raise FloatingPointError("the probe's training features are not all finite")
    onehot = np.eye(num_classes)[np.asarray(y)]
    d = x.shape[1]
    if init is None:
        flat = np.zeros(d * num_classes + num_classes)
    else:
        flat = np.concatenate([np.asarray(init["kernel"], np.float64).ravel(),
                               np.asarray(init["bias"], np.float64)])
    result = optimize.minimize(_softmax_cross_entropy, flat, args=(x, onehot, float(l2)),
                               jac=True, method="L-BFGS-B",
                               options={"maxiter": max_iter, "gtol": tol, "ftol": 1e-15,
                                        "maxcor": 10})
    if not np.isfinite(result.fun):
        raise FloatingPointError(f"the probe's objective is not finite at L2 {l2}")
    params = {"kernel": result.x[:d * num_classes].reshape(d, num_classes),
              "bias": result.x[d * num_classes:]}
    converged = bool(np.max(np.abs(result.jac)) <= tol)
    return params, int(result.nit), converged


def _pick(sweep: list) -> int:
    """Returns the index of the best validation accuracy (ties: lower validation loss)."""
    return min(range(len(sweep)), key=lambda i: (-sweep[i]["val_accuracy"], sweep[i]["val_loss"]))


def sweep_logistic(train, val, num_classes: int, grid=L2_GRID, max_iter: int = 1000) -> tuple:
    """Returns ``(kernel, bias, l2, sweep)`` on standardised features, L2 picked on ``val``.

    The grid runs from the strongest L2 down, each fit warm-started from the previous.
    """
    (xt, yt), (xv, yv) = train, val
    # Converted once: every fit of the sweep reads the same float64 copies.
    xt, xv = np.asarray(xt, np.float64), np.asarray(xv, np.float64)
    params, sweep, fits = None, [], {}
    for l2 in sorted(grid, reverse=True):
        params, iters, converged = fit_logistic(xt, yt, num_classes, l2, params, max_iter)
        m = classification_metrics(xv @ params["kernel"] + params["bias"], yv)
        sweep.append({"l2": l2, "val_accuracy": m["accuracy"], "val_loss": m["loss"],
                      "iterations": iters, "converged": converged})
        fits[l2] = params
    sweep.sort(key=lambda r: r["l2"])
    best = sweep[_pick(sweep)]
    return fits[best["l2"]]["kernel"], fits[best["l2"]]["bias"], best["l2"], sweep


def sweep_ridge(train, val, num_classes: int, grid=L2_GRID) -> tuple:
    """Returns ``(kernel, bias, l2, sweep)`` of ridge regression to +-1 one-hot targets.

    One eigendecomposition of the (centred) Gram matrix serves every L2 value. Works on
    the smaller of the feature and sample dimensions.
    """
    (xt, yt), (xv, yv) = train, val
    xt = np.asarray(xt, np.float64)
    targets = 2.0 * np.eye(num_classes)[yt] - 1.0
    x_mean, t_mean = xt.mean(0), targets.mean(0)
    xc, tc = xt - x_mean, targets - t_mean
    primal = xc.shape[1] <= xc.shape[0]
    gram = xc.T @ xc if primal else xc @ xc.T
    s, v = np.linalg.eigh(gram)
    s = np.maximum(s, 0.0)
    proj = v.T @ (xc.T @ tc) if primal else v.T @ tc
    sweep, fits = [], {}
    for l2 in grid:
        # Same scaling as the logistic objective: the penalty is on the mean squared error.
        lam = l2 * len(xt)
        w = v @ (proj / (s + lam)[:, None]) if primal else xc.T @ (v @ (proj / (s + lam)[:, None]))
        b = t_mean - x_mean @ w
        m = classification_metrics(xv @ w + b, yv)
        sweep.append({"l2": l2, "val_accuracy": m["accuracy"], "val_loss": m["loss"],
                      "iterations": 0})
        fits[l2] = (w, b)
    best = sweep[_pick(sweep)]
    w, b = fits[best["l2"]]
    return w.astype(np.float32), b.astype(np.float32), best["l2"], sweep


def fit_adam(train, val, num_classes: int, steps: int = 1000, lr: float = 1e-2,
             batch_size: int = 256, l2: float = 0.0, seed: int = 0) -> tuple:
    """Returns ``(kernel, bias, l2, sweep)`` of a head trained with Adam on minibatches."""
    (xt, yt), (xv, yv) = train, val
    params = {"kernel": jnp.zeros((xt.shape[1], num_classes)), "bias": jnp.zeros(num_classes)}
    tx = optax.adam(lr)
    state = tx.init(params)

    @jax.jit
    def step(params, state, x, y):
        grads = jax.grad(logistic_objective)(params, x, y, l2)
        updates, state = tx.update(grads, state)
        return optax.apply_updates(params, updates), state

    rng = np.random.default_rng(seed)
    batch_size = min(batch_size, len(xt))
    for _ in range(steps):
        idx = rng.choice(len(xt), batch_size, replace=False)
        params, state = step(params, state, xt[idx], yt[idx])
    params = jax.tree.map(np.asarray, params)
    m = classification_metrics(xv @ params["kernel"] + params["bias"], yv)
    sweep = [{"l2": l2, "val_accuracy": m["accuracy"], "val_loss": m["loss"], "iterations": steps}]
    return params["kernel"], params["bias"], l2, sweep


def fit_probe(train, val, num_classes: int, solver: str = "lbfgs", grid=L2_GRID,
              standardize: bool = True) -> ProbeResult:
    """Returns the head fitted on cached ``train = (features, labels)``, L2 chosen on ``val``.

    Features are standardised with the training split's statistics (Kumar et al. 2022);
    the returned head takes raw features.
    """
    if solver not in SOLVERS:
        raise unknown("probe solver", solver, SOLVERS)
    start = time.perf_counter()
    (xt, yt), (xv, yv) = train, val
    mean, std = standardizer(xt) if standardize else (np.zeros(xt.shape[1]), np.ones(xt.shape[1]))
    train_s, val_s = ((xt - mean) / std, yt), ((xv - mean) / std, yv)
    fit = {"lbfgs": sweep_logistic, "ridge": sweep_ridge, "adam": fit_adam}[solver]
    kernel, bias, l2, sweep = fit(train_s, val_s, num_classes, **(
        {"grid": grid} if solver != "adam" else {}))
    kernel, bias = fold_standardisation(np.asarray(kernel, np.float32),
                                        np.asarray(bias, np.float32), mean, std)
    return ProbeResult(kernel.astype(np.float32), bias.astype(np.float32), solver, float(l2),
                       sweep, time.perf_counter() - start)
