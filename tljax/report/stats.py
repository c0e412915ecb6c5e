"""Spread over seeds and over test examples, and the compact per-example correctness field."""

import math

import numpy as np


def encode_correct(correct) -> dict:
    """Returns ``{"n": N, "bits": hex}``: a boolean vector (one entry per example, True where
    the prediction was right) packed 8 to a byte, for a result record."""
    correct = np.asarray(correct, dtype=bool).ravel()
    return {"n": int(correct.size), "bits": np.packbits(correct).tobytes().hex()}


def decode_correct(field: dict) -> np.ndarray:
    """Returns the boolean vector that ``encode_correct`` packed into ``field``.

    Raises ``ValueError`` when the bits are fewer than ``n``.
    """
    n = int(field["n"])
    packed = np.frombuffer(bytes.fromhex(field["bits"]), dtype=np.uint8)
    if packed.size * 8 < n:
        raise ValueError(f"correctness bits hold {packed.size * 8} examples, not {n}")
    return np.unpackbits(packed, count=n).astype(bool)


def is_finite(x) -> bool:
    """Returns whether ``x`` is a number other than None, NaN or infinity."""
    return x is not None and math.isfinite(x)


def finite(values) -> list:
    """Returns the finite floats of ``values``."""
    return [float(v) for v in values if v is not None and math.isfinite(v)]


def mean_std(values) -> tuple:
    """Returns ``(mean, sample std)`` (ddof=1) of the finite values; NaN where too few."""
    values = finite(values)
    mean = float(np.mean(values)) if values else math.nan
    std = float(np.std(values, ddof=1)) if len(values) > 1 else math.nan
    return mean, std


def t_half95(std, n: int) -> float:
    """Returns the half-width ``t_{0.975, n-1} * std / sqrt(n)`` of the 95% Student-t
    interval of a mean of ``n`` values with sample std ``std``; NaN when ``n < 2`` or
    ``std`` is not finite."""
    from scipy import stats

    if n < 2 or not is_finite(std):
        return math.nan
    return float(stats.t.ppf(0.975, n - 1)) * std / math.sqrt(n)


def t_ci95(values):
    """Returns the 95% confidence interval ``(lo, hi)`` of the mean of the finite values
    (Student t, n-1 degrees of freedom), or None for fewer than two."""
    values = finite(values)
    if len(values) < 2:
        return None
    mean, std = mean_std(values)
    half = t_half95(std, len(values))
    return mean - half, mean + half


def bootstrap_ci95(correct_by_seed, resamples: int = 2000, seed: int = 0):
    """Returns the 95% percentile-bootstrap interval ``(lo, hi)`` of test accuracy averaged
    over seeds, resampling test examples (the same resample for every seed, since they share
    the test set); None without data or when the seeds' test sets differ in size.

    ``correct_by_seed``: one boolean vector per seed. The generator is seeded, so the
    interval is the same on every call.
    """
    rows = [np.asarray(c, dtype=bool) for c in correct_by_seed]
    if not rows or len({r.size for r in rows}) != 1 or rows[0].size == 0:
        return None
    # Accuracy over seeds is the mean of this over examples.
    return percentile_bootstrap95(np.mean(rows, axis=0), resamples, seed)


def percentile_bootstrap95(per_example: np.ndarray, resamples: int, seed: int) -> tuple:
    """Returns the 95% percentile-bootstrap interval ``(lo, hi)`` of the mean of
    ``per_example`` (one value per example), resampling examples with a generator seeded
    by ``seed``: the same interval on every call."""
    n = per_example.size
    rng = np.random.default_rng(seed)
    chunk = max(1, 4_000_000 // n)  # resamples per batch: index arrays stay ~32 MB
    means = []
    for start in range(0, resamples, chunk):
        idx = rng.integers(0, n, size=(min(chunk, resamples - start), n))
        means.append(per_example[idx].mean(axis=1))
    lo, hi = np.percentile(np.concatenate(means), [2.5, 97.5])
    return float(lo), float(hi)
