"""What ``tljax list keys | blocks MODEL | rules MODEL STRATEGY`` prints, as lines of text.

Everything a config can name, shown before anything is trained: the config keys with
their defaults and types, each model's blocks (the names ``surgical:BLOCK`` takes, and the
units ``last_k:K`` counts) and the rule each param gets under a strategy. Params come from
``jax.eval_shape``, so even ViT-B/16 or BERT-base is listed without allocating weights.
"""

import jax

from tljax import config, models, strategies
from tljax.errors import UserError, unknown


def keys() -> list:
    """Returns one line per dotted config key: key, type, default (as JSON), description."""
    rows = config.describe_keys(config.transfer())
    width = max(len(k) for k, *_ in rows)
    kind_width = max(len(t) for _, t, *_ in rows)
    # Long defaults (the probe's L2 grid) overflow their column rather than widen it for all.
    default_width = min(max(len(d) for _, _, d, _ in rows), 24)
    lines = ["config keys (set in get_config() or with --set KEY=VALUE; the value is JSON, "
             "else a string; dotted keys nest):",
             f"  {'key':<{width}}  {'type':<{kind_width}}  {'default':<{default_width}}  "
             "description"]
    for key, kind, default, text in rows:
        lines.append(f"  {key:<{width}}  {kind:<{kind_width}}  {default:<{default_width}}  "
                     f"{text}".rstrip())
    return lines


def _model(name: str, image_size: int | None, num_classes: int):
    """Returns ``(model, params as shape structs)`` without computing any weights."""
    model = models.create(name, num_classes, image_size=image_size)
    return model, jax.eval_shape(model.init, jax.random.key(0))["params"]


def _size(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def _input(model, num_classes: int) -> str:
    p = model.preprocessing
    size = f"{p.max_tokens} tokens" if p.kind == "text" else f"{p.image_size} px"
    return f"{size} input, {num_classes}-class head"


def blocks(name: str, image_size: int | None = None, num_classes: int = 10) -> list:
    """Returns the lines of ``tljax list blocks``: each block in order, its params and regex."""
    model, params = _model(name, image_size, num_classes)
    claims = strategies.explain("full_ft", params, model.blocks, model=name)
    sizes = {b: 0 for b, _ in model.blocks}
    for c in claims:
        sizes[c.block] = sizes.get(c.block, 0) + _size(c.shape)
    n_body = len(model.blocks) - 1
    width = max(len(b) for b, _ in model.blocks)
    lines = [f"{name}: {len(model.blocks)} blocks, input to output ({_input(model, num_classes)}).",
             f"Block names (dots) go in surgical:BLOCK[+BLOCK]; last_k:K and first_k:K count "
             f"the {n_body} backbone blocks (0 <= K <= {n_body}); each block's regex is over "
             f"param paths (slashes).",
             f"  {'block':<{width}}  {'params':>11}  param paths (regex)"]
    for block, pattern in model.blocks:
        lines.append(f"  {block:<{width}}  {sizes[block]:>11,}  {pattern}")
    outside = sizes.get("", 0)
    if outside:  # a param no block claims: a registry bug worth seeing, not hiding
        lines.append(f"  {'(no block)':<{width}}  {outside:>11,}")
    lines.append(f"  {'total':<{width}}  {sum(sizes.values()):>11,}")
    return lines


def _strategy(spec: str, config_path: str | None):
    """Returns what ``strategies.explain`` takes for ``spec``: a rule list or a preset spec.

    ``spec`` is a preset spec, a JSON rule list, or a name in ``rules`` of the config file.
    """
    if config_path:
        cfg = config.load(config_path)
        if spec in cfg.rules:
            return [tuple(item) for item in cfg.rules[spec]]
        if spec.partition(":")[0] not in strategies.PRESETS:
            raise unknown("strategy", spec, list(strategies.PRESETS) + list(cfg.rules))
    value = config.parse_value(spec)
    if isinstance(value, list):
        return [tuple(item) if isinstance(item, list) else item for item in value]
    if not isinstance(value, str):
        raise UserError(f"bad strategy {spec!r}; expected a preset spec (tljax list), a name "
                        f"in the config's rules (--config), or a JSON list of [regex, rule]")
    return spec


def _rule(rule) -> str:
    if not rule.trainable:
        return "freeze"
    if rule.reinit:
        return "reinit"
    return "train" if rule.lr_mult == 1 else f"train x{rule.lr_mult:.3g}"


def rules(name: str, spec: str, image_size: int | None = None, num_classes: int = 10,
          config_path: str | None = None) -> list:
    """Returns the lines of ``tljax list rules``: the rule each param gets and why.

    First the strategy's ``(regex, rule)`` list in match order, then every param path with
    its shape, block, rule and the pattern that claimed it, then the trainable total.
    """
    model, params = _model(name, image_size, num_classes)
    strategy = _strategy(spec, config_path)
    expanded = strategies.expand(strategy, model.blocks, model=name)
    claims = strategies.explain(strategy, params, model.blocks, model=name)
    lines = [f"{name} under {spec} ({_input(model, num_classes)}); (regex, rule) in order, "
             f"the first full match wins:"]
    pw = max(len(p.pattern) for p, _ in expanded)
    for i, (pattern, rule) in enumerate(expanded):
        lines.append(f"  #{i:<3} {pattern.pattern:<{pw}}  {_rule(rule)}")
    path_w = max(len(c.path) for c in claims)
    shape_w = max(len(str(c.shape)) for c in claims)
    block_w = max(len("block"), *(len(c.block) for c in claims))
    rule_w = max(len(_rule(c.rule)) for c in claims)
    lines.append(f"  {'param path':<{path_w}}  {'shape':<{shape_w}}  {'block':<{block_w}}  "
                 f"{'rule':<{rule_w}}  matched by")
    for c in claims:
        lines.append(f"  {c.path:<{path_w}}  {str(c.shape):<{shape_w}}  {c.block:<{block_w}}  "
                     f"{_rule(c.rule):<{rule_w}}  #{c.index} {c.pattern}")
    total = sum(_size(c.shape) for c in claims)
    trained = sum(_size(c.shape) for c in claims if c.rule.trainable)
    trained_blocks = {c.block for c in claims if c.rule.trainable}
    frozen = [b for b, _ in model.blocks if b not in trained_blocks]
    lines.append(f"trainable: {trained:,} of {total:,} params ({100 * trained / total:.2f}%) "
                 f"in {sum(c.rule.trainable for c in claims)} of {len(claims)} tensors")
    lines.append("frozen blocks (with bn_mode=per_block their BatchNorm runs on running "
                 "statistics, not updated): " + (", ".join(frozen) or "none"))
    return lines
