"""No changed input is taken for a finished run: what a run reads is part of its identity
(an image folder a source model trains on, files replaced with their mtime kept), a grid
over a data setting is still selected on validation, and a source model's directory stays
inside the workdir whatever its dataset is called."""

import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from tljax import cli, config, data, text
from tljax.run import identity, source_model
from tljax.data import folder_store, textfiles

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _folder(root, classes=("cat", "dog"), per_class=6, seed=0, size=12) -> list:
    """Writes ``root/CLASS/i.png`` of random pixels; returns the paths."""
    rng, paths = np.random.default_rng(seed), []
    for c in classes:
        os.makedirs(os.path.join(root, c), exist_ok=True)
        for i in range(per_class):
            path = os.path.join(root, c, f"{i}.png")
            Image.fromarray(rng.integers(0, 255, (size, size, 3), np.uint8)).save(path)
            paths.append(path)
    return paths


def _replace_keeping_mtime(path, content: bytes) -> None:
    """Writes ``content`` (the same size as before) to ``path`` and puts its old mtime
    back, as ``cp -p``, ``rsync -t`` or ``tar -x`` would."""
    st = os.stat(path)
    assert len(content) == st.st_size
    with open(path, "wb") as f:
        f.write(content)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_a_source_model_trained_on_a_folder_is_retrained_when_the_folder_changes(
        tmp_path, monkeypatch):
    root = str(tmp_path / "source")
    paths = _folder(root)
    cfg = config.transfer(model="cnn", dataset="digits:5-9")
    cfg.pretrain.dataset = root
    first = source_model.source_key(cfg)
    assert source_model.source_key(cfg) == first  # unchanged: reused
    for path in paths:  # every image rewritten, same names
        Image.fromarray(np.zeros((12, 12, 3), np.uint8)).save(path)
    rewritten = source_model.source_key(cfg)
    assert rewritten != first
    _folder(root, classes=("eel",))  # a class added
    assert source_model.source_key(cfg) != rewritten
    cfg.folder_image_size = 16  # the size it is read at
    assert source_model.source_key(cfg) not in (first, rewritten)

    loads = []

    def load(spec, **kwargs):
        loads.append((spec, kwargs.get("folder_image_size")))
        raise KeyboardInterrupt  # far enough: the source reads its folder at that size

    monkeypatch.setattr(source_model.data, "load", load)
    with pytest.raises(KeyboardInterrupt):
        source_model._train_source(cfg, str(tmp_path / "src"), print)
    assert loads == [(root, 16)]


@pytest.mark.parametrize("spec", ["/a/../../x:0-4@contrast:2", "../../outside", "/abs/pets",
                                  "digits:0-4@gaussian_noise:3"])
def test_a_source_model_directory_stays_inside_the_workdir(tmp_path, spec, monkeypatch):
    monkeypatch.setattr(identity, "folder_contents", lambda *a: {})  # no folder needed
    cfg = config.transfer(model="cnn")
    cfg.pretrain.dataset = spec
    key = source_model.source_key(cfg)
    assert os.sep not in key and key not in (".", "..") and len(key) <= 73
    parent = os.path.join(str(tmp_path), "pretrained")
    assert os.path.dirname(os.path.normpath(os.path.join(parent, key))) == parent


def test_a_catalog_source_keeps_the_key_it_had_before_folders_counted():
    cfg = config.transfer(model="cnn")
    cfg.pretrain.dataset = "digits:0-4@gaussian_noise:5"
    cfg.pretrain.steps = 600
    assert source_model.source_key(cfg).startswith("cnn-digits_0-4@gaussian_noise_5-600-")


def test_weights_replaced_by_same_size_bytes_with_the_old_mtime_are_digested_again(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"a" * 64)
    cache = {}
    before = identity.weights_digest(str(path), cache)
    _replace_keeping_mtime(path, b"b" * 64)
    assert identity.weights_digest(str(path), cache) != before
    # A checkpoint directory the same way.
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "d").write_bytes(b"x" * 32)
    before = identity.weights_digest(str(ckpt), cache)
    _replace_keeping_mtime(ckpt / "d", b"y" * 32)
    assert identity.weights_digest(str(ckpt), cache) != before


def test_images_swapped_between_class_folders_with_mtimes_kept_are_read_again(tmp_path):
    root, store = str(tmp_path / "pets"), str(tmp_path / "data")
    _folder(root, per_class=6, size=12)
    cat, dog = os.path.join(root, "cat", "x.bmp"), os.path.join(root, "dog", "x.bmp")
    for path, value in ((cat, 0), (dog, 255)):  # BMP: the same size whatever the pixels
        Image.fromarray(np.full((12, 12, 3), value, np.uint8)).save(path)
    first = data.load(root, data_dir=store)
    cat_bytes, dog_bytes = open(cat, "rb").read(), open(dog, "rb").read()
    _replace_keeping_mtime(cat, dog_bytes)
    _replace_keeping_mtime(dog, cat_bytes)
    again = data.load(root, data_dir=store)
    changed = [s for s in ("train", "val", "test") if not np.array_equal(
        first.splits[s].images, again.splits[s].images)]
    assert changed  # the swapped pixels are served, not the old copy's


def test_a_text_file_replaced_with_its_mtime_kept_is_read_again(tmp_path):
    path = tmp_path / "reviews.csv"
    rows = "text,label\n" + "".join(f"good {i},pos\nbad {i},neg\n" for i in range(10))
    path.write_text(rows)
    columns = textfiles.Columns("text", "label")
    textfiles.read(str(path), columns)
    before = identity.text_contents([str(path)])
    _replace_keeping_mtime(path, rows.replace("good", "fine").replace("bad", "sad").encode())
    _, after = textfiles.read(str(path), columns)
    assert "fine 0" in [t for split in after.values() for t in split.texts]
    assert identity.text_contents([str(path)]) != before


def test_a_swept_tokenizer_or_weights_keeps_one_sweep_per_strategy(tmp_path):
    """The tokenizer's digest is derived from ``tokenizer`` (and ``weights``): sweeping
    either must not give each grid point a sweep of its own (each point would then be
    'selected' alone, with no choice on validation)."""
    from tljax.models import zoo

    dataset = tmp_path / "reviews.csv"
    dataset.write_text("review,sentiment\n" + "".join(
        f"a fine film {i},pos\na dull meal {i},neg\n" for i in range(10)))
    shipped = os.path.join(os.path.dirname(zoo.path("all_minilm_l6_v2")), text.TOKENIZER_FILE)
    tokenizers = []
    for name in ("a", "b"):
        folder = tmp_path / name
        folder.mkdir()
        tok = json.load(open(shipped))
        tok["truncation"] = None if name == "a" else {"max_length": 9}
        (folder / text.TOKENIZER_FILE).write_text(json.dumps(tok))
        tokenizers.append(str(folder))

    def hashes(key, values, **fixed):
        out = set()
        for value in values:
            cfg = config.transfer(model="bert_minilm_l6", weights="all_minilm_l6_v2",
                                  dataset=str(dataset), **fixed)
            cfg[key] = value
            settings = identity.run_settings(cfg.to_dict(), "linear_probe", "probe", "w")
            out.add(identity.sweep_hash(settings, "linear_probe", {key: value}))
        return out

    assert len(hashes("tokenizer", tokenizers)) == 1
    weights = []
    for name, tok in zip("cd", tokenizers):  # weights files with their own tokenizers
        folder = tmp_path / name
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"-")
        shutil.copy(os.path.join(tok, text.TOKENIZER_FILE), folder)
        weights.append(str(folder / "model.safetensors"))
    assert len(hashes("weights", weights)) == 1


def test_a_swept_folder_image_size_is_selected_on_validation(tmp_path, capsys):
    """Two image sizes x seed 0, then the size chosen on validation x seed 1: 3 runs, as
    the dry run says, and one selected row (not one per size)."""
    root = str(tmp_path / "pets")
    _folder(root, per_class=10, size=16)
    cfg = tmp_path / "sizes.py"
    cfg.write_text("from tljax.config import transfer\n\n\ndef get_config():\n"
                   f"    return transfer(experiment='sizes', model='cnn', dataset={root!r})\n")
    settings = ["--set", 'strategies=["linear_probe"]', 'probe_solver="ridge"',
                'sweep={"folder_image_size":[8,16]}', "select_seeds=1", "seeds=[0,1]"]
    assert cli.main(["run", str(cfg), "--dry-run", *settings]) == 0
    assert "runs in all: 3" in capsys.readouterr().out
    workdir = tmp_path / "w"
    assert cli.main(["run", str(cfg), "--workdir", str(workdir), *settings]) == 0
    out = capsys.readouterr()
    records = [json.loads(line) for line in open(workdir / "results.jsonl")]
    assert len(records) == 3
    assert len({r["sweep_hash"] for r in records}) == 1
    assert sorted(r["seed"] for r in records) == [0, 0, 1]
    assert "linear_probe: selected {'folder_image_size'" in out.err
    summary = out.out.split("## Summary")[1].split("##")[0]
    assert summary.count("| linear_probe |") == 1


def test_the_strategies_of_one_config_share_a_settings_hash_and_two_configs_do_not():
    def settings_hash(strategy, **overrides):
        cfg = config.transfer(model="cnn6", dataset="digits:5-9", **overrides)
        settings = identity.run_settings(cfg.to_dict(), strategy, "network", "w")
        return identity.settings_hash(settings, {})

    one = {settings_hash(s) for s in ("transfer_n:1", "transfer_n:2", "transfer_n+:3")}
    assert len(one) == 1
    assert settings_hash("transfer_n:1", lr=3e-3) not in one


def test_a_folder_copied_back_or_chmod_ed_keeps_its_runs_and_its_prepared_copy(
        tmp_path, monkeypatch):
    """Only bytes count: a backup restored with ``cp -a`` (new inodes and ctimes) or a
    ``chmod`` is the same dataset, not a reason to decode it again or rerun its runs."""
    root, store = str(tmp_path / "pets"), str(tmp_path / "data")
    paths = _folder(root)
    data.load(root, data_dir=store)
    before = identity.folder_contents([root], store)
    decoded = []
    monkeypatch.setattr(folder_store, "_decode", lambda *a: decoded.append(a) or pytest.fail(
        "decoded again"))
    for path in paths:
        os.chmod(path, 0o600)
    assert identity.folder_contents([root], store) == before
    shutil.copytree(root, tmp_path / "backup", copy_function=shutil.copy2)
    shutil.rmtree(root)
    shutil.copytree(tmp_path / "backup", root, copy_function=shutil.copy2)
    assert identity.folder_contents([root], store) == before
    data.load(root, data_dir=store)
    assert decoded == []
    # Elsewhere, the same bytes are the same content too (a per-host copy).
    copy = str(tmp_path / "copy")
    shutil.copytree(root, copy)
    assert list(identity.folder_contents([copy], store).values()) == list(before.values())
