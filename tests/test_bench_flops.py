"""``tljax.bench.flops``: the analytic FLOP count behind the bench's GFLOP and TFLOP/s
columns, which must be right on a GPU, where XLA's own count leaves out cuDNN's convs."""

import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tljax.bench import flops, methods, output, runner


def _forward_gflop_per_image(name: str, size: int) -> float:
    model = methods.make_model(name, size)
    shapes = jax.eval_shape(model.init, jax.random.key(0))
    image = jax.ShapeDtypeStruct(model.dummy_input(1).shape, jnp.float32)
    return flops.count(lambda v, x: model.module.apply(v, x, train=False), shapes, image) / 1e9


@pytest.mark.parametrize("name, published", [("resnet50", 2 * 4.09), ("vit_b16", 2 * 17.56),
                                             ("efficientnet_lite0", 2 * 0.385)])
def test_forward_flops_match_the_published_multiply_adds(name, published):
    # Multiply-adds per 224 px image in torchvision's / timm's tables (ResNet-50 4.09 G,
    # ViT-B/16 17.56 G, EfficientNet-Lite0 0.385 G), x2. Traced only: no compile.
    assert _forward_gflop_per_image(name, 224) == pytest.approx(published, rel=0.02)


ALL = [(s, m) for s in ("linear_probe", "full_ft") for m in ("tljax", "mask_only", "mask_clip")]


@pytest.mark.parametrize("name, size, compiled", [
    ("resnet18", 64, [("linear_probe", "tljax"), ("linear_probe", "mask_clip"),
                      ("full_ft", "tljax")]),
    ("cnn", 16, ALL)])
def test_train_step_flops_agree_with_xla_s_complete_cpu_count(name, size, compiled):
    # On CPU XLA's cost analysis sees every conv and matmul (and elementwise work besides);
    # the count must agree for each method and strategy, the frozen backward dropped where
    # nothing reads it (tljax, mask_only) and kept where the clip norm does (mask_clip).
    model = methods.make_model(name, size)
    variables = methods.random_variables(model)
    x, y = methods.make_batch(model, 8)
    counts = {}
    for strategy, method in ALL:
        step, state, _ = methods.build(model, strategy, method, variables)
        counts[strategy, method] = flops.count(step, state, x, y)
        if (strategy, method) in compiled:  # compiling costs seconds: ResNet-18's three
            _, xla = methods.compile_step(step, state, x, y)
            assert counts[strategy, method] == pytest.approx(xla, rel=0.05), (strategy, method)
    assert counts["linear_probe", "tljax"] == counts["linear_probe", "mask_only"]
    assert counts["linear_probe", "mask_clip"] == counts["full_ft", "tljax"]
    assert counts["full_ft", "tljax"] > 2.5 * counts["linear_probe", "tljax"]


def test_the_count_does_not_depend_on_the_cpu_s_conv_routes(monkeypatch):
    # On CPU a depthwise conv runs as shifted slices (elementwise ops) and small maps as
    # patches + a matmul; the count is the same whichever route the backend would take.
    model = methods.make_model("efficientnet_lite0", 32)
    variables = methods.random_variables(model)
    x, y = methods.make_batch(model, 2)
    step, state, _ = methods.build(model, "full_ft", "tljax", variables)
    counted = {}
    for route in ("conv", "slices"):
        monkeypatch.setenv("TLJAX_DEPTHWISE", route)
        counted[route] = flops.count(step, state, x, y)
    assert counted["slices"] == counted["conv"]
    assert os.environ["TLJAX_DEPTHWISE"] == "slices"  # the caller's setting, back
    # ... and the counted trace is not reused when the step is compiled afterwards: it is
    # traced again on the caller's route (slices: no grouped conv).
    text = step.lower(state, x, y).as_text()
    assert "feature_group_count = 1 " in text
    assert set(re.findall(r"feature_group_count = (\d+)", text)) == {"1"}


def test_a_scan_body_counts_once_per_iteration():
    w = jnp.ones((16, 16))

    def body(h, _):
        return h @ w, None

    def fn(h):
        return jax.lax.scan(body, h, None, length=5)[0]

    assert flops.count(fn, jnp.ones((4, 16))) == 5 * 2 * 4 * 16 * 16


def test_rows_get_tflops_and_torch_rows_the_tljax_count():
    def row(method, step_ms, count):
        return {"model": "m", "strategy": "full_ft", "method": method, "dtype": "float32",
                "status": "ok", "step_ms": step_ms, "flops": count, "tflops": None,
                "peak_fraction": None}

    skipped = {**row("torch_compile", None, None), "status": "skipped"}
    rows = [row("tljax", 2.0, 4e12), row("torch", 4.0, None)]
    runner.add_throughput(rows + [skipped], peak_tflops=4.0)
    assert [r["flops"] for r in rows] == [4e12, 4e12] and skipped["flops"] is None
    np.testing.assert_allclose([r["tflops"] for r in rows], [2000.0, 1000.0])
    np.testing.assert_allclose([r["peak_fraction"] for r in rows], [500.0, 250.0])
    info = {"cpu": "c", "cores": 1, "jax": "j", "jaxlib": "j", "torch": None, "backend": "cpu",
            "date": "d", "batch": 1, "image_size": 8, "rounds": 1, "warmup": 0,
            "optimizer": "sgd", "mem_source": [], "peak_tflops": 4.0}
    for r in rows:
        r.update(examples_per_s=1.0, compile_s=0.0, peak_mem_mb=1.0, trainable_params=1)
    table = output.markdown(rows, info)
    assert "| TFLOP/s | of peak |" in table and "| 4000.00 | 2e+03 | 50000.0% |" in table
