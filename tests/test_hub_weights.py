"""Checkpoints from a model hub: Hugging Face model directories by path (the model from
their config.json) and timm files by model name, each compared with the reference
implementation on the features tljax's head reads, and run from the command line.

The directories are written here by ``transformers`` from small random configs
(``save_pretrained``, offline); tljax reads them without torch.
"""

import functools
import json
import os
import re
import shutil
import sys

import jax
import numpy as np
import pytest
import torch
from transformers import (BertConfig, BertModel, ResNetConfig, ResNetForImageClassification,
                          ViTConfig, ViTForImageClassification, ViTModel)

from test_parity import perturb_batch_norm
from tljax import cli, models, weights
from tljax.errors import UserError

TOL = 1e-4
VIT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
           image_size=16, patch_size=8)


def _empty(m) -> dict:
    """Returns zero variables shaped like ``m``'s: the weights fill the backbone, and the
    features never read the head (a real init compiles for tens of seconds on CPU)."""
    return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype),
                        jax.eval_shape(m.init, jax.random.key(0)))


def _load(path, num_classes=3, model=""):
    """Returns ``(model, variables, log lines)`` for the model directory at ``path``."""
    lines = []
    m = models.hub.create(str(path), num_classes, model=model)
    variables = weights.load(str(path), _empty(m), m.torch_names, log=lines.append)
    return m, variables, lines


def _hub_state(ref, path) -> dict:
    """Returns the tensors ``ref.save_pretrained(path)`` writes: the names hub checkpoints
    carry (transformers 5 renames some modules in memory and back on saving)."""
    from safetensors.torch import load_file

    ref.save_pretrained(path)
    return load_file(os.path.join(path, "model.safetensors"))


def _save_bin(ref, path) -> None:
    """Writes ``ref`` as a ``pytorch_model.bin`` directory, as transformers 4 did with
    ``safe_serialization=False`` (transformers 5 writes safetensors only)."""
    state = _hub_state(ref, path)
    os.remove(os.path.join(path, "model.safetensors"))
    torch.save(state, os.path.join(path, "pytorch_model.bin"))


@functools.lru_cache
def _compiled_features(module):
    return jax.jit(lambda v, x: module.apply(v, x, method="features"))


def _features(m, variables, x):
    """Returns the backbone features tljax's head reads (compiled once per module: faster
    than op by op)."""
    return np.asarray(_compiled_features(m.module)(variables, x))


def _nchw(x):
    return torch.from_numpy(x.transpose(0, 3, 1, 2).copy())


@pytest.fixture(scope="module")
def vit_dir(tmp_path_factory):
    """A ViTForImageClassification (5 classes) saved as safetensors, with its reference."""
    torch.manual_seed(0)
    ref = ViTForImageClassification(ViTConfig(num_labels=5, **VIT)).eval()
    path = tmp_path_factory.mktemp("hub") / "vit"
    ref.save_pretrained(path)
    return path, ref


def test_bert_directory_loads_by_path_with_parity_on_the_pooled_features(tmp_path):
    torch.manual_seed(0)
    # gelu_new (the tanh GELU) and 1e-7: the activation and eps come from config.json too.
    ref = BertModel(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                               intermediate_size=64, vocab_size=100, max_position_embeddings=64,
                               hidden_act="gelu_new", layer_norm_eps=1e-7)).eval()
    state = _hub_state(ref, tmp_path / "st")
    # bert-base-uncased's own layout: BertForPreTraining's names (bert.*, the TF-era
    # LayerNorm.gamma/beta) beside its pretraining heads (cls.*), as a pytorch_model.bin.
    legacy = {"bert." + k.replace("LayerNorm.weight", "LayerNorm.gamma")
              .replace("LayerNorm.bias", "LayerNorm.beta"): v for k, v in state.items()}
    legacy.update({"cls.predictions.bias": torch.zeros(100),
                   "cls.seq_relationship.weight": torch.zeros(2, 32)})
    ref.config.save_pretrained(tmp_path / "bin")
    torch.save(legacy, tmp_path / "bin" / "pytorch_model.bin")
    tokens = np.stack([np.random.default_rng(0).integers(1, 100, (2, 12)),
                       np.array([[1] * 12, [1] * 7 + [0] * 5]), np.zeros((2, 12), int)], 1)
    with torch.no_grad():
        out = ref(input_ids=torch.from_numpy(tokens[:, 0]).long(),
                  attention_mask=torch.from_numpy(tokens[:, 1]).long())
    for name in ("st", "bin"):
        m, variables, lines = _load(tmp_path / name)
        # BertForSequenceClassification classifies the CLS token through the pooler.
        assert m.name == "bert" and m.preprocessing.kind == "text"
        assert np.abs(_features(m, variables, tokens) - out.pooler_output.numpy()).max() <= TOL
    assert ("not loaded, not part of this model: cls.predictions.bias (100,), "
            "cls.seq_relationship.weight (2, 32)") in lines[0]
    # A sentence-transformers directory mean-pools the tokens; its pooler is reported unused.
    st = tmp_path / "sentence"
    shutil.copytree(tmp_path / "st", st)
    (st / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling",
         "type": "sentence_transformers.models.Pooling"}]))
    (st / "1_Pooling").mkdir()
    (st / "1_Pooling" / "config.json").write_text(json.dumps(
        {"pooling_mode_mean_tokens": True, "pooling_mode_cls_token": False}))
    m, variables, lines = _load(st)
    mask = tokens[:, 1][..., None]
    mean = (out.last_hidden_state.numpy() * mask).sum(1) / mask.sum(1)
    assert np.abs(_features(m, variables, tokens) - mean).max() <= TOL
    assert "pooler.dense.weight (32, 32)" in lines[0] and "mean-pooled" in lines[0]


def test_vit_directory_loads_by_path_and_reports_the_classifier_it_leaves_out(vit_dir, tmp_path):
    path, ref = vit_dir
    _save_bin(ref, tmp_path / "bin")
    (tmp_path / "bin" / "preprocessor_config.json").write_text(json.dumps(
        {"do_normalize": True, "do_rescale": True, "rescale_factor": 1 / 255,
         "image_mean": [0.4, 0.5, 0.6], "image_std": [0.2, 0.25, 0.5],
         "size": {"height": 16, "width": 16}}))
    x = np.random.default_rng(0).normal(size=(2, 16, 16, 3)).astype(np.float32)
    with torch.no_grad():
        theirs = ref.vit(pixel_values=_nchw(x)).last_hidden_state[:, 0].numpy()
    for directory in (path, tmp_path / "bin"):
        m, variables, lines = _load(directory)
        assert m.name == "vit" and m.preprocessing.image_size == 16
        assert np.abs(_features(m, variables, x) - theirs).max() <= TOL
        # The source's 5-class classifier is left out on purpose, and the log says so.
        assert ("not loaded: the source's 5-class classifier head (classifier.bias (5,), "
                "classifier.weight (5, 32)); this model's 3-class head starts fresh") in lines[0]
        assert "loaded into the backbone" in lines[0]
    # preprocessor_config.json gives the normalisation; without one, the ViT default.
    assert m.preprocessing.mean == pytest.approx((0.4, 0.5, 0.6))
    assert m.preprocessing.std == pytest.approx((0.2, 0.25, 0.5))
    assert models.hub.create(str(path), 3).preprocessing.mean == (0.5, 0.5, 0.5)


@pytest.mark.parametrize("config", [
    dict(layer_type="basic", embedding_size=8, hidden_sizes=[8, 16], depths=[1, 2]),
    dict(layer_type="bottleneck", embedding_size=8, hidden_sizes=[16, 32], depths=[1, 2],
         downsample_in_first_stage=True, downsample_in_bottleneck=True)])
def test_resnet_directory_in_hugging_face_layout_loads_with_parity(tmp_path, config):
    torch.manual_seed(0)
    ref = ResNetForImageClassification(ResNetConfig(num_labels=4, **config))
    perturb_batch_norm(ref)
    ref.save_pretrained(tmp_path / "resnet")
    (tmp_path / "resnet" / "preprocessor_config.json").write_text(json.dumps(
        {"size": {"shortest_edge": 32}, "image_mean": [0.485, 0.456, 0.406],
         "image_std": [0.229, 0.224, 0.225]}))
    m, variables, lines = _load(tmp_path / "resnet")
    assert m.name == "resnet" and m.preprocessing.image_size == 32
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
    with torch.no_grad():
        theirs = ref.resnet(_nchw(x)).pooler_output.numpy().reshape(2, -1)
    assert np.abs(_features(m, variables, x) - theirs).max() <= TOL
    assert "classifier.1.weight (4, " in lines[0]


def test_sharded_directory_loads_and_an_index_that_lies_is_named(vit_dir, tmp_path):
    path, ref = vit_dir
    ref.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    index_path = tmp_path / "sharded" / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    assert len(set(index["weight_map"].values())) > 1
    whole, sharded = weights.read(str(path)), weights.read(str(tmp_path / "sharded"))
    assert sorted(whole) == sorted(sharded)
    assert all(np.array_equal(whole[k], sharded[k]) for k in whole)
    name, shard = next(iter(index["weight_map"].items()))
    other = next(s for s in index["weight_map"].values() if s != shard)
    index["weight_map"][name] = other
    index_path.write_text(json.dumps(index))
    with pytest.raises(UserError, match=f"{name} \\(indexed in {other}, not in it\\), "
                                        f".*{name} \\(in {shard}, not indexed there\\)"):
        weights.read(str(tmp_path / "sharded"))


def _config(tmp_path, **settings) -> str:
    path = tmp_path / "hub_config.py"
    path.write_text("from tljax.config import transfer\n\ndef get_config():\n"
                    f"    return transfer(**{settings!r})\n")
    return str(path)


def _one_line_exit_2(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_:
        sys.exit(cli.main(argv))
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def test_run_takes_the_model_from_a_directory_and_refuses_one_that_disagrees(
        vit_dir, tmp_path, capsys):
    path, _ = vit_dir
    config = _config(tmp_path, experiment="hub", weights=str(path), dataset="digits:0-2",
                     strategies=["linear_probe"], seeds=[0], probe_solver="ridge")
    workdir = tmp_path / "w"
    assert cli.main(["run", config, "--workdir", str(workdir)]) == 0
    err = capsys.readouterr().err
    record = json.loads((workdir / "results.jsonl").read_text())
    assert record["model"] == "vit" and record["status"] == "ok"
    assert record["metrics"]["test"]["accuracy"] > 1 / 3  # three classes
    assert "not loaded: the source's 5-class classifier head" in err
    # A model that disagrees with config.json is one line naming both.
    err = _one_line_exit_2(["run", config, "--set", "model=bert_base"], capsys)
    assert f"weights {str(path)!r} hold a vit" in err and "not model 'bert_base'" in err
    err = _one_line_exit_2(["run", config, "--set", "model=vit_b16"], capsys)
    assert "are a vit with patch_size=8, hidden_size=32, depth=2, num_heads=4, mlp_dim=64" in err
    assert "model 'vit_b16' has patch_size=16, hidden_size=768, depth=12, num_heads=12, " \
           "mlp_dim=3072" in err
    # convert takes the model from the directory too, the source's head kept.
    assert cli.main(["convert", str(path), str(tmp_path / "ckpt")]) == 0
    assert ": vit, " in capsys.readouterr().out and os.path.isdir(tmp_path / "ckpt")
    # A model_type tljax does not build: one line naming the supported ones.
    other = tmp_path / "gpt"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    err = _one_line_exit_2(["run", config, "--set", f"weights={other}"], capsys)
    assert "model_type 'gpt2'" in err and "supported: bert, vit, resnet" in err


def _timm_vit(state: dict, num_classes: int = 1000) -> dict:
    """Returns a Hugging Face ViTModel checkpoint's tensors in timm's layout, written out
    by hand: q, k, v stacked into one ``qkv`` projection, the rest renamed one to one."""
    out = {"cls_token": state["embeddings.cls_token"],
           "pos_embed": state["embeddings.position_embeddings"],
           "patch_embed.proj.weight": state["embeddings.patch_embeddings.projection.weight"],
           "patch_embed.proj.bias": state["embeddings.patch_embeddings.projection.bias"],
           "norm.weight": state["layernorm.weight"], "norm.bias": state["layernorm.bias"],
           "head.weight": torch.randn(num_classes, state["layernorm.weight"].shape[0]),
           "head.bias": torch.randn(num_classes)}
    layers = {k.split(".")[2] for k in state if k.startswith("encoder.layer.")}
    for i in layers:
        hf, timm = f"encoder.layer.{i}.", f"blocks.{i}."
        for leaf in ("weight", "bias"):
            out[timm + f"attn.qkv.{leaf}"] = torch.cat(
                [state[hf + f"attention.attention.{p}.{leaf}"] for p in ("query", "key", "value")])
            for ours, theirs in (("norm1", "layernorm_before"), ("norm2", "layernorm_after"),
                                 ("attn.proj", "attention.output.dense"),
                                 ("mlp.fc1", "intermediate.dense"), ("mlp.fc2", "output.dense")):
                out[timm + f"{ours}.{leaf}"] = state[hf + f"{theirs}.{leaf}"]
    return {k: v.contiguous() for k, v in out.items()}


def test_timm_vit_files_load_by_model_name_with_parity(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    # ViT-Ti/16's sizes with timm's eps, at 32 px (the registered vit_ti16 takes any
    # multiple of 16).
    ref = ViTModel(ViTConfig(hidden_size=192, num_hidden_layers=12, num_attention_heads=3,
                             intermediate_size=768, image_size=32, patch_size=16,
                             layer_norm_eps=1e-6)).eval()
    state = _timm_vit(_hub_state(ref, tmp_path / "hf"))
    save_file(state, str(tmp_path / "vit.safetensors"))
    torch.save(state, tmp_path / "vit.pth")
    m = models.create("vit_ti16", 10, image_size=32)
    fresh = _empty(m)
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
    with torch.no_grad():
        theirs = ref(pixel_values=_nchw(x)).last_hidden_state[:, 0].numpy()
    for name in ("vit.safetensors", "vit.pth"):
        lines = []
        variables = weights.load(str(tmp_path / name), fresh, m.torch_names, log=lines.append)
        assert np.abs(_features(m, variables, x) - theirs).max() <= TOL, name
        assert "the source's 1000-class classifier head (head.bias (1000,), head.weight " \
               "(1000, 192))" in lines[0]


def test_a_sentence_transformers_download_by_path_is_the_packaged_minilm():
    from tljax import text
    from tljax.models import zoo

    # The package ships the hub directory itself: config.json, model.safetensors,
    # modules.json (mean pooling), tokenizer.json.
    directory = os.path.dirname(zoo.path("all_minilm_l6_v2"))
    by_path, by_name = models.hub.create(directory, 3), zoo.create("all_minilm_l6_v2", 3)
    assert by_path.module == by_name.module and by_path.blocks == by_name.blocks
    assert by_path.preprocessing == by_name.preprocessing
    assert models.hub.create(directory, 3, model="bert_minilm_l6").name == "bert_minilm_l6"
    ours = weights.load(directory, _empty(by_path), by_path.torch_names)
    theirs = weights.load(zoo.path("all_minilm_l6_v2"), _empty(by_name), by_name.torch_names)
    assert jax.tree.all(jax.tree.map(np.array_equal, ours, theirs))
    assert text.find_tokenizer("", directory) == os.path.join(directory, "tokenizer.json")


@pytest.mark.parametrize("config, message", [
    ({"model_type": ["vit"]}, "model_type \\['vit'\\]"),
    ({"model_type": "vit", "hidden_size": "32"}, "hidden_size '32' is not a positive integer"),
    ({"model_type": "vit", "num_attention_heads": 0}, "num_attention_heads 0 is not a positive"),
    ({"model_type": "vit", "patch_size": None}, "patch_size None is not a positive integer"),
    ({"model_type": "vit", "num_hidden_layers": 2.5}, "num_hidden_layers 2.5 is not a positive"),
    ({"model_type": "vit", "hidden_act": ["gelu"]}, "hidden_act \\['gelu'\\] is not a name"),
    ({"model_type": "bert", "max_position_embeddings": "512"}, "max_position_embeddings '512'"),
    ({"model_type": "resnet", "depths": 3}, "depths 3 is not a list of positive integers"),
    ({"model_type": "resnet", "hidden_sizes": None}, "hidden_sizes None is not a list"),
    ({"model_type": "resnet", "layer_type": ["basic"]}, "layer_type \\['basic'\\] is not a name"),
    ({"model_type": "resnet", "num_channels": "x"}, "num_channels 'x' is not a positive"),
    ({"model_type": "bert", "layer_norm_eps": "1e-12"}, "layer_norm_eps '1e-12' is not a number"),
])
def test_a_config_json_with_a_value_of_the_wrong_type_is_one_named_error(tmp_path, config,
                                                                          message):
    from safetensors.numpy import save_file

    (tmp_path / "config.json").write_text(json.dumps(config))
    save_file({"x": np.zeros(1, np.float32)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(UserError, match=message):
        models.hub.create(str(tmp_path), 3)


def test_a_model_directorys_digest_ignores_git_and_download_metadata(tmp_path):
    # `git clone` of a hub repository, or `huggingface-cli download --local-dir`, leaves
    # .git/ and .cache/huggingface/ beside the model; git and the downloader rewrite them.
    # Finished runs must not rerun because of that; an edited config.json is another model.
    from safetensors.numpy import save_file

    from tljax.run import identity

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "vit"}))
    save_file({"x": np.zeros(1, np.float32)}, str(tmp_path / "model.safetensors"))
    before = identity.weights_digest(str(tmp_path))
    for name in (".git/index", ".cache/huggingface/download/model.safetensors.metadata"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("rewritten at every fetch")
    assert identity.weights_digest(str(tmp_path)) == before
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "vit", "hidden_act": "relu"}))
    assert identity.weights_digest(str(tmp_path)) != before


@pytest.mark.parametrize("processor", [{"rescale_factor": "x"}, {"rescale_factor": 0},
                                       {"image_mean": []}])
def test_a_preprocessor_config_with_a_bad_number_is_one_named_error(tmp_path, processor):
    from safetensors.numpy import save_file

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "resnet"}))
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(processor))
    save_file({"x": np.zeros(1, np.float32)}, str(tmp_path / "model.safetensors"))
    key, value = next(iter(processor.items()))
    named = f"preprocessor_config.json: .*{key} {re.escape(repr(value))}"
    with pytest.raises(UserError, match=named):
        models.hub.create(str(tmp_path), 3)


@pytest.mark.parametrize("named", ["{outside}", "../outside", "1_Pooling/../../outside"])
def test_modules_json_cannot_make_tljax_read_outside_the_model_directory(tmp_path, named):
    outside = tmp_path / "outside"  # a readable folder with what a Pooling config holds
    outside.mkdir()
    (outside / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    model = tmp_path / "models" / "minilm"
    model.mkdir(parents=True)
    (model / "config.json").write_text(json.dumps(
        {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 1,
         "num_attention_heads": 2, "intermediate_size": 37, "vocab_size": 100,
         "max_position_embeddings": 64}))
    (model / "model.safetensors").write_bytes(b"")
    path = named.format(outside=outside)
    (model / "modules.json").write_text(json.dumps(
        [{"idx": 1, "name": "1", "path": path, "type": "sentence_transformers.models.Pooling"}]))
    with pytest.raises(UserError, match=r"modules.json' names '.*', which is not a path "
                                        r"inside the model directory"):
        models.hub.create(str(model), 2)
