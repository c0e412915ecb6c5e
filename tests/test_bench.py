"""``tljax bench``: every method's row, the methods' updates, the torch reference, bad names."""

import json

import jax
import numpy as np
import pytest
from flax import traverse_util

from tljax import cli, strategies
from tljax.bench import OPTIMIZER, methods, runner, torch_ref


def test_bench_cli_reports_every_method_on_cnn(tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["bench", "--models", "cnn", "--strategies", "linear_probe", "full_ft",
            "--image-size", "8", "--batch", "4", "--rounds", "2", "--warmup", "1",
            "--json", str(out), "--plot", str(tmp_path / "bench.png")]
    assert cli.main(argv) == 0
    table = capsys.readouterr().out
    result = json.loads(out.read_text())
    rows = {(r["strategy"], r["method"]): r for r in result["rows"]}
    assert set(rows) == {(s, m) for s in ("linear_probe", "full_ft")
                         for m in ("tljax", "mask_only", "mask_clip", "torch")}
    for r in rows.values():
        assert r["status"] == "ok", r
        assert r["step_ms"] > 0 and r["peak_mem_mb"] > 0 and r["examples_per_s"] > 0
        assert r["batch"] == 4 and r["image_size"] == 8 and r["steps_timed"] == 2
        assert f"| cnn | {r['strategy']} | {r['method']} | " in table
    for m in ("tljax", "mask_only", "mask_clip", "torch"):
        # torch counts its own params with requires_grad: its freezing matches tljax's.
        assert rows[("linear_probe", m)]["trainable_params"] == 128 * 10 + 10
        assert rows[("full_ft", m)]["trainable_params"] > 50_000
    # The flop counts: tljax's probe step skips the frozen backward; once the clipping
    # norm reads every gradient (mask_clip) the probe costs what full fine-tuning does;
    # torch's rows take tljax's count (the same network and frozen set).
    flops = {k: r["flops"] for k, r in rows.items()}
    assert flops[("linear_probe", "tljax")] < 0.6 * flops[("full_ft", "tljax")]
    assert flops[("linear_probe", "mask_clip")] > 0.9 * flops[("full_ft", "mask_clip")]
    assert flops[("linear_probe", "torch")] == flops[("linear_probe", "tljax")]
    for r in rows.values():
        assert r["tflops"] == pytest.approx(r["flops"] / r["step_ms"] / 1e9)
        assert r["xla_flops"] if r["method"] != "torch" else r["xla_flops"] is None
    machine = result["machine"]
    assert machine["cores"] >= 1 and machine["jax"] and machine["backend"] == "cpu"
    assert "SGD" in machine["optimizer"] and machine["batch"] == 4
    assert (tmp_path / "bench.png").stat().st_size > 0


def _variables(model):
    """The model's init with a non-zero head, so the backbone gets gradients at step 1."""
    variables = jax.tree.map(np.asarray, model.init(jax.random.key(0)))
    kernel = variables["params"]["head"]["kernel"]
    variables["params"]["head"]["kernel"] = np.random.default_rng(1).normal(
        size=kernel.shape).astype(np.float32)
    return variables


def _steps(model, strategy, method, variables, n=2, **settings):
    step, state, _ = methods.build(model, strategy, method, variables, **settings)
    x, y = methods.make_batch(model, 8)
    for _ in range(n):
        state, _ = step(state, x, y)
    return traverse_util.flatten_dict(jax.tree.map(np.asarray, state.params), sep="/")


@pytest.mark.parametrize("strategy", ["linear_probe", "last_k:1"])
def test_masked_recipes_update_like_tljax_without_clipping(strategy):
    # Same model, SGD, BatchNorm treatment (frozen blocks on running statistics): without
    # clipping or decay, gradients of every param then a mask give tljax's update.
    model = methods.make_model("cnn", 8)
    variables = _variables(model)
    ours = _steps(model, strategy, "tljax", variables, grad_clip=0.0, weight_decay=0.0)
    start = traverse_util.flatten_dict(variables["params"], sep="/")
    assert not np.allclose(ours["head/kernel"], start["head/kernel"])
    for method in ("mask_only", "mask_clip"):
        theirs = _steps(model, strategy, method, variables, grad_clip=0.0, weight_decay=0.0)
        for path in ours:
            np.testing.assert_allclose(theirs[path], ours[path], rtol=1e-5, atol=1e-6,
                                       err_msg=f"{method} {path}")


def test_mask_clip_keeps_frozen_params_and_clips_over_them():
    model = methods.make_model("cnn", 8)
    variables = _variables(model)
    start = traverse_util.flatten_dict(variables["params"], sep="/")
    clip = {"grad_clip": 1e-3, "weight_decay": 0.0}
    clipped = _steps(model, "linear_probe", "mask_clip", variables, n=1, **clip)
    ours = _steps(model, "linear_probe", "tljax", variables, n=1, **clip)
    for path, value in start.items():
        if not path.startswith("head/"):  # clipping ran over it; the mask won
            np.testing.assert_array_equal(clipped[path], value)
    moved = lambda p: np.sqrt(sum(
        np.sum((p[k] - start[k]) ** 2) for k in ("head/kernel", "head/bias")))
    # tljax clips the head's gradient alone to norm 1e-3: the first update is lr x 1e-3.
    np.testing.assert_allclose(moved(ours), OPTIMIZER["lr"] * 1e-3, rtol=1e-2)  # f32 diffs
    # mask_clip's norm took in the frozen backbone's gradients too: the head moved less.
    assert moved(clipped) < 0.99 * moved(ours)


@pytest.mark.parametrize("name, size, strategy, dtype", [
    ("cnn", 8, "last_k:1", "float32"), ("cnn", 8, "full_ft", "float32"),
    ("vit_ti16", 32, "last_k:1", "float32"), ("vit_ti16", 32, "full_ft", "float32"),
    ("efficientnet_lite0", 32, "last_k:1", "float32"),
    ("efficientnet_lite0", 32, "full_ft", "float64")])
def test_torch_reference_takes_tljax_steps(name, size, strategy, dtype):
    # The same model, weights, batch, strategy and SGD (clipping, decay, momentum): the same
    # losses step after step, frozen BatchNorm on running statistics in both (the CNNs); the
    # ViT's fused attention on both sides (jax.nn.dot_product_attention, torch's SDPA);
    # EfficientNet's TF SAME padding (at 32 px each stride-2 conv pads 0 before, 1 or 2
    # after). Its full_ft runs in float64 on both sides: in float32 a ReLU6 input within
    # rounding of 0 lands on either side of the kink (one of the head conv's 8 x 1280 does
    # here) and the random head's steep loss (gradient norm ~15,000, clipped to 1) makes
    # that ~1% of the loss by step 3; torch float32 strays as far from torch float64.
    model = methods.make_model(name, size)
    variables = _variables(model)
    x, y = methods.make_batch(model, 8)
    x = x.astype(dtype)
    with jax.enable_x64(dtype == "float64"):
        step, state, rules = methods.build(model, strategy, "tljax", jax.tree.map(
            lambda a: a.astype(dtype) if a.dtype == np.float32 else a, variables))
        ours = []
        for _ in range(3):
            state, metrics = step(state, x, y)
            ours.append(float(metrics["loss"]))
    flat = traverse_util.flatten_dict(rules, sep="/")
    stats = traverse_util.flatten_dict(
        strategies.batch_stats_rules(rules, variables.get("batch_stats", {}), model.blocks),
        sep="/")
    frozen_bn = sorted({p.rpartition("/")[0] for p, r in stats.items() if not r.trainable})
    assert (strategy == "full_ft" or name == "vit_ti16") == (not frozen_bn)
    torch_step, module = torch_ref.build(
        name, {p: r.lr_mult if r.trainable else None for p, r in flat.items()}, frozen_bn,
        x, y, OPTIMIZER, methods.NUM_CLASSES, variables=variables)
    if dtype == "float64":
        module.double()  # in place: the optimizer holds the same params
    theirs = [torch_step() for _ in range(3)]
    # tljax's loss itself is float32 (its step casts the logits)
    np.testing.assert_allclose(theirs, ours, rtol=1e-4 if dtype == "float32" else 1e-6)


def test_bench_dtype_bfloat16_computes_in_bfloat16_for_jax_and_torch(tmp_path, capsys):
    # The same steps from the same weights and batch: in bfloat16 the loss moves off the
    # float32 one by bfloat16's rounding, for tljax, the masked recipe and torch alike.
    losses = {}
    for dtype in ("float32", "bfloat16"):
        out = tmp_path / f"{dtype}.json"
        argv = ["bench", "--models", "cnn", "--strategies", "full_ft", "--methods", "tljax",
                "mask_only", "torch", "--image-size", "8", "--batch", "4", "--rounds", "2",
                "--warmup", "1", "--dtype", dtype, "--json", str(out)]
        assert cli.main(argv) == 0
        result = json.loads(out.read_text())
        assert result["machine"]["dtype"] == dtype and f", {dtype}, " in capsys.readouterr().out
        for r in result["rows"]:
            assert r["status"] == "ok" and r["dtype"] == dtype, r
            losses[(r["method"], dtype)] = r["final_loss"]
    for method in ("tljax", "mask_only", "torch"):
        f32, bf16 = losses[(method, "float32")], losses[(method, "bfloat16")]
        assert 0 < abs(bf16 - f32) < 0.05 * f32, (method, f32, bf16)


@pytest.mark.parametrize("precision, operand", [("highest", "highest"), ("tf32", "high")])
def test_bench_compiles_jax_steps_at_the_named_matmul_precision(precision, operand):
    # On a GPU JAX's default float32 precision is TF32 and torch's differs between matmuls
    # and convs: the bench fixes both sides to one (a run's default, highest, unless named).
    import re

    model = methods.make_model("cnn", 8)
    step, state, _ = methods.build(model, "full_ft", "tljax", methods.random_variables(model))
    x, y = methods.make_batch(model, 4)
    compiled, _ = methods.compile_step(step, state, x, y, precision)
    assert set(re.findall(r"operand_precision=\{(\w+),", compiled.as_text())) == {operand}


def test_bench_records_the_matmul_precision_and_refuses_an_unknown_one(tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["bench", "--models", "cnn", "--strategies", "full_ft", "--methods", "tljax",
            "torch", "--image-size", "8", "--batch", "4", "--rounds", "1", "--warmup", "0",
            "--matmul-precision", "tf32", "--json", str(out)]
    assert cli.main(argv) == 0
    result = json.loads(out.read_text())
    assert result["machine"]["matmul_precision"] == "tf32"
    assert {r["matmul_precision"] for r in result["rows"]} == {"tf32"}
    assert "matmul precision tf32" in capsys.readouterr().out
    assert cli.main(argv[:-4] + ["--matmul-precision", "tf33"]) == 2
    err = capsys.readouterr().err.strip()
    assert "'tf33'" in err and "highest, tf32" in err and len(err.splitlines()) == 1


def test_torch_compile_takes_eager_torch_s_steps_after_compiling_cold(tmp_path):
    # torch.compile's warm-up step (its compile seconds) is undone: the same losses as eager
    # torch from the same seeded init, step for step.
    out = tmp_path / "bench.json"
    argv = ["bench", "--models", "cnn", "--strategies", "full_ft", "--methods", "torch",
            "torch_compile", "--image-size", "8", "--batch", "4", "--rounds", "2",
            "--warmup", "1", "--json", str(out)]
    assert cli.main(argv) == 0
    rows = {r["method"]: r for r in json.loads(out.read_text())["rows"]}
    assert all(r["status"] == "ok" for r in rows.values()), rows
    assert rows["torch_compile"]["final_loss"] == pytest.approx(rows["torch"]["final_loss"],
                                                                rel=1e-5)
    assert rows["torch_compile"]["compile_s"] > 1 and rows["torch"]["compile_s"] == 0


def test_a_crashing_child_becomes_a_failed_row():
    spec = {"model": "cnn", "strategy": "linear_probe", "method": "mask_only", "batch": 2,
            "image_size": 3, "optimizer": OPTIMIZER}  # below cnn's 4 px: the child raises
    entries = [(("cnn", "linear_probe", "mask_only"), spec),
               (("cnn", "linear_probe", "torch"), "torch skipped for this test")]
    rows, infos = runner.run_model(entries, rounds=1, warmup=0, env=None, log=lambda m: None)
    assert [r["status"] for r in rows] == ["failed", "skipped"]
    assert "image_size 3" in rows[0]["reason"]
    assert rows[1]["reason"] == "torch skipped for this test" and infos == []


@pytest.mark.parametrize("option, value, message", [
    ("--models", "resnet1", "unknown model 'resnet1'; known:"),
    ("--strategies", "bitfti", "unknown strategy 'bitfti'; known:"),
    ("--methods", "pytorch", "unknown method 'pytorch'; known: mask_clip, mask_only, tljax"),
    ("--dtype", "fp16", "unknown dtype 'fp16'; known: bfloat16, float32"),
])
def test_bench_bad_names_exit_2_with_one_line(option, value, message, tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert cli.main(["bench", option, value, "--json", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_env_of_reaches_only_its_own_child():
    """benchmarks/cpu_config.py compares configurations through per-child environments: a
    bad TLJAX_PATCHES_MAX_SIDE given to one child fails that child alone."""
    spec = {"model": "cnn", "strategy": "linear_probe", "method": "tljax", "batch": 2,
            "image_size": 16, "optimizer": OPTIMIZER}
    bad, good = ("cnn", "linear_probe", "bad"), ("cnn", "linear_probe", "default")
    rows, _ = runner.run_model([(bad, spec), (good, spec)], rounds=1, warmup=0, env=None,
                               log=lambda m: None,
                               env_of={bad: {"TLJAX_PATCHES_MAX_SIDE": "eight"}})
    assert [r["status"] for r in rows] == ["failed", "ok"]
    assert "TLJAX_PATCHES_MAX_SIDE must be a whole number of pixels >= 0, got 'eight'" in \
        rows[0]["reason"]


def test_torch_cnn_references_have_tljax_s_blocks_widths_and_pools():
    """The torch child never imports JAX, so torch_ref writes the CNN tables out: they must
    be tljax's (a changed width would make every cnn6 torch row time another network)."""
    from tljax.models import cnn

    assert torch_ref._CNNS["cnn"] == (tuple(n for n, _ in cnn.TABLE), (32, 64, 128),
                                      (False, True, True))
    assert cnn.SmallCNN.widths == (32, 64, 128) and cnn.SmallCNN.pools == (False, True, True)
    assert torch_ref._CNNS["cnn6"] == (tuple(n for n, _ in cnn.DEEP_TABLE), cnn.DEEP_WIDTHS,
                                       cnn.DEEP_POOLS)


def test_torch_efficientnet_reference_has_tljax_s_stages_and_batchnorm():
    """torch_efficientnet writes Lite0's stage table and BatchNorm settings out (the torch
    child never imports JAX): they must be tljax's, or its torch rows would time another
    network."""
    import flax.linen as nn

    from tljax.bench import torch_efficientnet as ref
    from tljax.models import efficientnet

    assert ref.LITE0_STAGES == efficientnet.LITE0_STAGES
    norms = set()

    def record(f, args, kwargs, context):
        if isinstance(context.module, nn.BatchNorm):
            norms.add((context.module.momentum, context.module.epsilon))
        return f(*args, **kwargs)

    with nn.intercept_methods(record):
        jax.eval_shape(efficientnet.EfficientNetLite().init, jax.random.key(0),
                       jax.numpy.zeros((1, 32, 32, 3)))
    assert norms == {(1 - ref.BN_MOMENTUM, ref.BN_EPS)}


def test_torch_vit_references_have_tljax_s_configs():
    """torch_ref writes the ViT configs out (the torch child never imports JAX): they must
    be tljax's, or a vit_b16 torch row would time another network."""
    from tljax.models import vit

    for name, cfg in (("vit_ti16", vit.VIT_TINY16), ("vit_b16", vit.VIT_B16)):
        assert torch_ref._VITS[name] == (cfg.patch_size, cfg.hidden_size, cfg.depth,
                                         cfg.num_heads, cfg.mlp_dim, cfg.layer_norm_eps)
        assert cfg.hidden_act == "gelu" and cfg.qkv_bias  # the reference's exact GELU, qkv bias
