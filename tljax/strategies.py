"""Transfer strategies as data: an ordered ``(regex, rule)`` list -> one rule per param.

Param paths are ``/``-joined (``backbone/layer4/1/conv2/kernel``) and matched with
``re.fullmatch``; the first matching pattern wins and every param must match one.
A rule is ``"freeze"``, ``"train"``, ``("train", lr_mult)`` or ``"reinit"`` (the param starts
from the model's own init at the run's seed, not the weights, then trains: ``apply_reinit``).
Named presets expand to such lists from the model's block order (input to output, ``head``
last)::

    labels("last_k:2", params, model.blocks)      # preset with its argument after ':'
    labels([(r"head/.*", "train"), (r".*", "freeze")], params, model.blocks)

``explain`` gives the same assignment path by path, with the ``(regex, rule)`` that claimed
each param (``tljax list rules MODEL STRATEGY`` prints it).

A block all of whose params are frozen is a *frozen block*: its BatchNorm runs on running
statistics, which are never updated. A re-initialised param's BatchNorm running statistics
(those of the module it belongs to) are re-initialised with it: statistics measured under
the pretrained weights say nothing about fresh ones.
"""

import dataclasses
import re
from typing import Callable, Sequence

from flax import traverse_util

from tljax.errors import UserError, unknown


@dataclasses.dataclass(frozen=True)
class Rule:
    """What happens to one param: trained (with an LR multiplier) or frozen; ``reinit``
    params start from the model's fresh init at the run's seed instead of the weights."""

    trainable: bool
    lr_mult: float = 1.0
    reinit: bool = False

    @property
    def label(self) -> str:
        """Returns the optax group label: ``frozen`` or ``train@<lr_mult>``."""
        return f"train@{self.lr_mult:g}" if self.trainable else "frozen"


FREEZE = Rule(False, 0.0)
TRAIN = Rule(True, 1.0)
REINIT = Rule(True, 1.0, reinit=True)

# Norm layers as the families name them: BatchNorm (bn1, _bn0, downsample/1), LayerNorm
# (LayerNorm, norm1, ln_1), GroupNorm (gn); their params are a scale and a bias.
NORM_PARAM = r"(?i)(.*/)?(\w*bn\d*|\w*norm\w*|ln\w*|gn\d*|downsample/1)/(scale|bias|weight)"


def parse_rule(rule) -> Rule:
    """Returns the Rule for ``"freeze"``, ``"train"``, ``("train", lr_mult)``, ``"reinit"``
    or a Rule."""
    if isinstance(rule, Rule):
        return rule
    if rule == "freeze":
        return FREEZE
    if rule == "train":
        return TRAIN
    if rule == "reinit":
        return REINIT
    if isinstance(rule, (list, tuple)) and len(rule) == 2 and rule[0] == "train":
        try:
            mult = float(rule[1])
        except (TypeError, ValueError):
            raise UserError(f"bad lr_mult {rule[1]!r} in rule {rule!r}; expected a number") from None
        return Rule(True, mult) if mult > 0 else FREEZE
    raise UserError(f"unknown rule {rule!r}; known: 'freeze', 'train', ['train', lr_mult], "
                    "'reinit'")


# ---------------------------------------------------------------------------- presets


def _backbone_blocks(blocks) -> list:
    return [b for b in blocks if b[0] != "head"]


def _int_arg(name: str, arg: str | None, lo: int, hi: int) -> int:
    try:
        k = int(arg)
    except (TypeError, ValueError):
        raise UserError(f"{name} needs an integer argument ({name}:K, {lo} <= K <= {hi}); "
                        f"got {arg!r}") from None
    if not lo <= k <= hi:
        raise UserError(f"{name}:{k} is out of range; valid: {lo} <= K <= {hi}")
    return k


def _linear_probe(blocks, arg):
    return [(r"head/.*", "train"), (r".*", "freeze")]


def _full_ft(blocks, arg):
    return [(r".*", "train")]


def _last_k(blocks, arg):
    body = _backbone_blocks(blocks)
    k = _int_arg("last_k", arg, 0, len(body))
    return [(pattern, "train") for _, pattern in body[len(body) - k:]] + _linear_probe(blocks, arg)


def _first_k(blocks, arg):
    body = _backbone_blocks(blocks)
    k = _int_arg("first_k", arg, 0, len(body))
    return [(pattern, "train") for _, pattern in body[:k]] + _linear_probe(blocks, arg)


def _surgical(blocks, arg):
    body = dict(_backbone_blocks(blocks))
    chosen = [b for b in (arg or "").split("+") if b]
    if not chosen:
        raise UserError(f"surgical needs block names (surgical:BLOCK[+BLOCK]); known: "
                        f"{', '.join(body)}")
    for b in chosen:
        if b not in body:
            # Block names use dots (layer3.0), param paths slashes (backbone/layer3/0/...).
            hint = " (block names use dots, not slashes)" if "/" in b else ""
            raise UserError(f"unknown block {b!r}{hint}; known: {', '.join(body)}")
    return [(body[b], "train") for b in chosen] + _linear_probe(blocks, arg)


def _transfer_n(blocks, arg, copied: str = "freeze", name: str = "transfer_n"):
    # Yosinski et al. (2014): the first N blocks copied from the source (frozen: AnB/BnB;
    # fine-tuned: AnB+/BnB+), every later block re-initialised and trained; the head is
    # fresh in every run anyway.
    body = _backbone_blocks(blocks)
    n = _int_arg(name, arg, 0, len(body))
    return ([(pattern, copied) for _, pattern in body[:n]]
            + [(pattern, "reinit") for _, pattern in body[n:]] + [(r"head/.*", "train")])


def _transfer_n_plus(blocks, arg):
    return _transfer_n(blocks, arg, copied="train", name="transfer_n+")


def _bitfit(blocks, arg):
    return [(r".*/bias", "train")] + _linear_probe(blocks, arg)


def _norm_only(blocks, arg):
    return [(NORM_PARAM, "train")] + _linear_probe(blocks, arg)


def _llrd(blocks, arg):
    try:
        decay = float(arg)
    except (TypeError, ValueError):
        raise UserError(f"llrd needs a decay (llrd:D, 0 < D <= 1); got {arg!r}") from None
    if not 0 < decay <= 1:
        raise UserError(f"llrd:{arg} is out of range; valid: 0 < D <= 1")
    # The head gets the base LR; each block below it one more factor of decay (timm, BEiT).
    depth = len(blocks) - 1
    return [(pattern, ("train", decay ** (depth - i))) for i, (_, pattern) in enumerate(blocks)]


@dataclasses.dataclass(frozen=True)
class Preset:
    """A named strategy: its expansion, its argument (if any) and what it does."""

    expand: Callable
    arg: str | None
    description: str


PRESETS = {
    "linear_probe": Preset(_linear_probe, None,
                           "train the head only; in experiments: cached features + probe_solver"),
    "linear_probe_sgd": Preset(_linear_probe, None,
                               "train the head only, through the frozen network step by step"),
    "lp_ft": Preset(_full_ft, None, "linear probe, then full fine-tuning from its head "
                                    "(Kumar et al. 2022)"),
    "full_ft": Preset(_full_ft, None, "train every param"),
    "last_k": Preset(_last_k, "K", "train the last K backbone blocks and the head"),
    "first_k": Preset(_first_k, "K", "train the first K backbone blocks and the head"),
    "surgical": Preset(_surgical, "BLOCK[+BLOCK]",
                       "train the named blocks and the head (Lee et al. 2023)"),
    "bitfit": Preset(_bitfit, None, "train every bias and the head (Ben Zaken et al. 2022)"),
    "norm_only": Preset(_norm_only, None, "train norm-layer scales/biases and the head"),
    "llrd": Preset(_llrd, "D", "train all, LR x D per block below the head (layer-wise decay)"),
    "transfer_n": Preset(_transfer_n, "N", "first N backbone blocks copied and frozen, the "
                         "rest re-initialised and trained (Yosinski et al. 2014, AnB)"),
    "transfer_n+": Preset(_transfer_n_plus, "N", "first N backbone blocks copied and "
                          "fine-tuned, the rest re-initialised and trained (AnB+)"),
}


def expand(strategy, blocks, model: str = "") -> list:
    """Returns the ``(regex, Rule)`` list for a preset spec (``"last_k:2"``) or a rule list.

    ``model`` (its name) only makes a preset's error say whose blocks it was given.
    """
    if isinstance(strategy, str):
        name, _, arg = strategy.partition(":")
        if name not in PRESETS:
            raise unknown("strategy", name, PRESETS)
        preset = PRESETS[name]
        if preset.arg is None and arg:
            raise UserError(f"strategy {name!r} takes no argument; got {strategy!r}")
        if preset.arg is not None and not arg:
            raise UserError(f"strategy {name!r} needs an argument: {name}:{preset.arg}")
        try:
            strategy = preset.expand(blocks, arg or None)
        except UserError as e:
            # A preset sees the block order only; the model's name tells the user where to look.
            if not model:
                raise
            n = len(_backbone_blocks(blocks))
            raise UserError(f"{e} (model {model!r}: {n} backbone blocks; see "
                            f"`tljax list blocks {model}`)") from None
    rules = []
    for item in strategy:
        if not isinstance(item, (list, tuple)) or len(item) != 2:
            raise UserError(f"bad strategy entry {item!r}; expected (regex, rule)")
        pattern, rule = item
        try:
            compiled = re.compile(pattern)
        except (re.error, TypeError) as e:
            raise UserError(f"bad regex {pattern!r} in strategy: {e}") from None
        rules.append((compiled, parse_rule(rule)))
    return rules


def _match(strategy, params, blocks, model: str) -> tuple:
    """Returns ``(rules, {param path: index of the rule that claims it})``, every param claimed.

    Raises ``UserError`` naming every param no pattern matches.
    """
    rules = expand(strategy, blocks, model)
    flat = traverse_util.flatten_dict(params, sep="/")
    claimed, unmatched = {}, []
    for path in flat:
        index = next((i for i, (pattern, _) in enumerate(rules) if pattern.fullmatch(path)), None)
        if index is None:
            unmatched.append(path)
        else:
            claimed[path] = index
    if not isinstance(strategy, str):  # a user's rule list: a pattern that matches nothing is a typo
        used = set(claimed.values())
        idle = [rules[i][0].pattern for i in range(len(rules)) if i not in used]
        if idle and not unmatched:
            raise UserError(f"strategy rule {idle[0]!r} matches no param (first match wins; "
                            f"e.g. {next(iter(flat))!r})")
    if unmatched:
        shown = ", ".join(unmatched[:20]) + (f", ... ({len(unmatched)} in all)"
                                            if len(unmatched) > 20 else "")
        raise UserError(f"strategy leaves params unmatched: {shown}")
    return rules, claimed


def labels(strategy, params, blocks, model: str = "") -> dict:
    """Returns a pytree shaped like ``params`` holding one ``Rule`` per leaf.

    Raises ``UserError`` naming every param no pattern matches.
    """
    rules, claimed = _match(strategy, params, blocks, model)
    return traverse_util.unflatten_dict({p: rules[i][1] for p, i in claimed.items()}, sep="/")


@dataclasses.dataclass(frozen=True)
class Claim:
    """One param under a strategy: its path, shape, block, rule and the ``(regex, rule)`` that won."""

    path: str
    shape: tuple
    block: str
    rule: Rule
    index: int  # position of the winning (regex, rule) in the expanded strategy
    pattern: str


def explain(strategy, params, blocks, model: str = "") -> list:
    """Returns one ``Claim`` per param of ``params`` (arrays or shape structs), input to output.

    The same matching as ``labels`` (first ``re.fullmatch`` wins) and the same errors, so what
    it shows is what a run would train; big_vision logs its mask trees the same way.
    """
    rules, claimed = _match(strategy, params, blocks, model)
    flat = traverse_util.flatten_dict(params, sep="/")
    order = {name: i for i, (name, _) in enumerate(blocks)}
    out = []
    for path, leaf in flat.items():
        block = block_of(path, blocks)
        index = claimed[path]
        out.append(Claim(path, tuple(leaf.shape), block, rules[index][1], index,
                         rules[index][0].pattern))
    # Params in block order, numbered parts in numeric order (layer/2 before layer/10).
    key = lambda c: (order.get(c.block, len(order)),  # noqa: E731
                     [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", c.path)])
    return sorted(out, key=key)


def frozen_blocks(rules, blocks) -> tuple:
    """Returns the names of blocks all of whose params are frozen, input to output."""
    flat = traverse_util.flatten_dict(rules, sep="/")
    trained = set()
    for path, rule in flat.items():
        if rule.trainable:
            trained.add(_block_of(path, blocks))
    return tuple(name for name, _ in blocks if name not in trained)


def batch_stats_rules(rules, batch_stats, blocks) -> dict:
    """Returns a Rule per ``batch_stats`` leaf: trained (updated) unless its block is frozen."""
    frozen = set(frozen_blocks(rules, blocks))
    flat = traverse_util.flatten_dict(batch_stats, sep="/")
    return traverse_util.unflatten_dict(
        {p: FREEZE if _block_of(p, blocks) in frozen else TRAIN for p in flat}, sep="/")


def count(params, rules) -> tuple:
    """Returns ``(trainable, total)`` param counts."""
    sizes = traverse_util.flatten_dict(params, sep="/")
    flat = traverse_util.flatten_dict(rules, sep="/")
    total = sum(int(v.size) for v in sizes.values())
    return sum(int(sizes[p].size) for p, r in flat.items() if r.trainable), total


def block_of(path: str, blocks: Sequence) -> str:
    """Returns the name of the block whose regex matches ``path``, or '' for none."""
    return next((name for name, pattern in blocks if re.fullmatch(pattern, path)), "")


def _block_of(path: str, blocks: Sequence) -> str:
    name = block_of(path, blocks)
    if not name:
        raise ValueError(f"param {path!r} belongs to no block; blocks: {[b for b, _ in blocks]}")
    return name


def describe() -> dict:
    """Returns ``{preset spec: description}`` (``last_k:K``, ...) for ``tljax list``."""
    return {name + (f":{p.arg}" if p.arg else ""): p.description for name, p in PRESETS.items()}


def count_reinit(params, rules) -> int:
    """Returns how many params (elements) a ``reinit`` rule re-initialises."""
    sizes = traverse_util.flatten_dict(params, sep="/")
    return sum(int(sizes[p].size) for p in reinit_paths(rules))


def reinit_paths(rules) -> list:
    """Returns the ``/``-joined paths of params whose rule re-initialises them."""
    return [p for p, r in traverse_util.flatten_dict(rules, sep="/").items() if r.reinit]


def apply_reinit(variables: dict, fresh: dict, rules) -> dict:
    """Returns ``variables`` with every ``reinit`` param taken from ``fresh`` (the model's
    init at the run's seed), and the ``batch_stats`` of each module owning such a param too.

    ``variables`` is left as it was; with no ``reinit`` rule it is returned unchanged.
    """
    paths = set(reinit_paths(rules))
    if not paths:
        return variables
    owners = {p.rpartition("/")[0] for p in paths}  # modules: backbone/block1/bn
    out = {}
    for collection, tree in variables.items():
        flat = traverse_util.flatten_dict(tree, sep="/")
        source = traverse_util.flatten_dict(fresh.get(collection, {}), sep="/")
        for path in flat:
            hit = path in paths if collection == "params" else path.rpartition("/")[0] in owners
            if hit:
                flat[path] = source[path]
        out[collection] = traverse_util.unflatten_dict(flat, sep="/")
    return out
