"""How far apart a model's features put two domains: the held-out accuracy of a linear
domain classifier on the penultimate features, source test vs target test, and the proxy
A-distance it gives (Ben-David et al. 2007/2010: ``2 (1 - 2 err)``, at least 0; 0 when the
domains cannot be told apart, 2 when they always can).

Only the inputs are read (the domain is the label); at most ``LIMIT`` examples of each
domain, the same ones every time, split in two halves: fit on one, score on the other,
and the other way round.
"""

import numpy as np

from tljax import probe

LIMIT = 1000  # examples per domain: enough for a stable accuracy, cheap on any dataset


def _features(module, variables: dict, x, batch_size: int) -> np.ndarray:
    return probe.forward_features(module, variables, x[:min(len(x), LIMIT)],
                                  batch_size).astype(np.float64)


def measure(module, variables: dict, source_x, target_x, batch_size: int) -> dict:
    """Returns ``{"domain_accuracy", "proxy_a_distance"}`` of ``variables``' features of
    ``source_x`` vs ``target_x``."""
    from sklearn.linear_model import LogisticRegression  # here: its import costs seconds

    fs, ft = (_features(module, variables, x, batch_size) for x in (source_x, target_x))
    n = min(len(fs), len(ft))
    x = np.concatenate([fs[:n], ft[:n]])
    y = np.concatenate([np.zeros(n), np.ones(n)])
    x = (x - x.mean(0)) / (x.std(0) + 1e-8)
    half = np.arange(2 * n) % 2 == 0  # both domains in both halves
    correct = 0
    for fit, score in ((half, ~half), (~half, half)):
        clf = LogisticRegression(C=1.0, max_iter=2000).fit(x[fit], y[fit])
        correct += int(np.sum(clf.predict(x[score]) == y[score]))
    accuracy = correct / (2 * n)
    # Below chance (identical domains: the held-out half is anti-correlated) is chance.
    return {"domain_accuracy": round(accuracy, 4),
            "proxy_a_distance": round(max(0.0, 2.0 * (1.0 - 2.0 * (1.0 - accuracy))), 4)}
