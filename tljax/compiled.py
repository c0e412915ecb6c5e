"""One jitted function per structure, per process.

A run builds its train step from its settings (its inference-mode loss and predictions
depend on the model alone: ``train.make_eval_loss`` and ``make_predict`` cache them per
module). Two runs whose steps lower to the same program (the same module, rules,
optimizer structure, frozen blocks, dtype, accumulation and parallel layout) share one
jitted object here, so JAX traces and compiles it once per input shape and every later
run calls the compiled program: a sweep over learning rates and seeds compiles its step
once per strategy, not once per run. The learning rate is no part of any key: it lives in
the optimizer state (``optim._group``), an input of the step, never a constant in it.

Sharing is safe only when the key names everything the built function closes over;
each caller's key says what that is (``tljax.run.paths``).
"""

import collections
from typing import Callable, Hashable

from flax import traverse_util

# The most structures kept at once: a process that runs many configs (a test session)
# drops the least recently used, and its compiled programs with it.
MAX_KEPT = 32
_BUILT: collections.OrderedDict = collections.OrderedDict()


def reuse(key: Hashable, build: Callable[[], Callable]) -> Callable:
    """Returns ``build()`` the first time ``key`` is seen in this process, and that same
    function every time after (while it is among the ``MAX_KEPT`` most recently used)."""
    if key in _BUILT:
        _BUILT.move_to_end(key)
    else:
        _BUILT[key] = build()
        if len(_BUILT) > MAX_KEPT:
            _BUILT.popitem(last=False)
    return _BUILT[key]


def clear() -> None:
    """Forgets every function built here: the next run of each structure builds (and JAX
    compiles) afresh."""
    _BUILT.clear()


def rules_key(rules) -> tuple:
    """Returns ``rules`` (a pytree of ``strategies.Rule``) as a hashable key: every param's
    path with its rule, in path order."""
    return tuple(sorted(traverse_util.flatten_dict(rules).items()))


def optimizer_key(run_cfg) -> tuple:
    """Returns a run's optimisation settings (``settings.strategy_config``) as a hashable
    key, all but ``lr``: every other setting ``optim.make`` reads becomes a constant in
    the step (a schedule's length, a decay), so it keys the step; settings it does not
    read only cost a compilation where they differ."""
    return tuple(sorted((k, repr(v)) for k, v in run_cfg.items() if k != "lr"))
