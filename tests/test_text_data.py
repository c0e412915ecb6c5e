"""Text classification datasets (.csv / .jsonl files, the built-in ``vader``) through
``tljax run`` on the real all-MiniLM-L6-v2 weights, and their one-line errors."""

import csv
import json
import os
import sys

import numpy as np
import pytest

from tljax import cli, data, text
from tljax.data import textfiles, vader
from tljax.errors import UserError
from tljax.models import zoo

# Two easy classes of short reviews: every text is "a <sentiment word> <thing>".
_POS = ("great", "wonderful", "excellent", "lovely", "delightful", "superb", "fantastic")
_NEG = ("terrible", "awful", "horrible", "dreadful", "miserable", "disgusting", "boring")
_THINGS = ("film", "meal", "hotel", "book", "concert", "song")
# Fast settings: 16 tokens, a few steps, evaluation batches the size of the splits.
_FAST = ["max_length=16", "steps=3", "batch_size=8", "eval_batch_size=16", "log_every=3",
         "checkpoint_every=1000", "probe_l2_grid=[0.01,1.0]"]


def _reviews(per_class: int = 10) -> list:
    rows = []
    for i in range(per_class):
        rows.append({"review": f"a {_POS[i % 7]} {_THINGS[i % 6]}", "sentiment": "pos"})
        rows.append({"review": f"a {_NEG[i % 7]} {_THINGS[(i + 3) % 6]}", "sentiment": "neg"})
    return rows


def _write(path, rows, columns=None) -> str:
    path = str(path)
    if path.endswith(".csv"):
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, columns or list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    else:
        with open(path, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    return path


def _config(tmp_path, dataset: str, strategies) -> str:
    path = tmp_path / "text_config.py"
    path.write_text(
        "from tljax import config\n\n\ndef get_config():\n"
        "    return config.transfer(experiment='text', model='bert_minilm_l6', "
        f"weights='all_minilm_l6_v2', dataset={dataset!r}, strategies={list(strategies)!r}, "
        "text_column='review', label_column='sentiment', lr=1e-3)\n")
    return str(path)


# The JSONL run also takes 5 examples per class (shots) of the 7 in train.
@pytest.mark.parametrize("suffix,shots", [(".csv", 0), (".jsonl", 5)])
def test_text_file_runs_linear_probe_bitfit_and_full_ft_from_the_cli(tmp_path, suffix, shots,
                                                                     capsys):
    dataset = _write(tmp_path / f"reviews{suffix}", _reviews())
    workdir = tmp_path / "w"
    argv = ["run", _config(tmp_path, dataset, ["linear_probe", "bitfit", "full_ft"]),
            "--workdir", str(workdir), "--set", *_FAST, f"shots={shots}"]
    assert cli.main(argv) == 0, capsys.readouterr().err[-2000:]
    records = [json.loads(line) for line in open(workdir / "results.jsonl")]
    by = {r["strategy"]: r for r in records}
    assert sorted(by) == ["bitfit", "full_ft", "linear_probe"]
    total = by["full_ft"]["total_params"]
    for r in records:
        assert r["status"] == "ok" and r["dataset"] == dataset
        assert r["weights"] == "all_minilm_l6_v2" and r["model"] == "bert_minilm_l6"
        assert set(r["metrics"]) == {"train", "val", "test"}
        assert r["total_params"] == total and r["shots"] == shots
    # A 2-class head on MiniLM's 384 mean-pooled features; BitFit adds the biases only.
    assert by["linear_probe"]["trainable_params"] == 384 * 2 + 2
    assert 770 < by["bitfit"]["trainable_params"] < total // 100
    assert by["full_ft"]["trainable_params"] == total
    # Stratified 70/10/20 of 10 examples per class: 7 / 1 / 2 each.
    assert by["linear_probe"]["probe"]["train_examples"] == (2 * shots or 14)
    # Real tokens of the real encoder separate the two sentiments at once.
    assert by["linear_probe"]["metrics"]["test"]["accuracy"] == 1.0
    table = (workdir / "results.md").read_text()
    for strategy in ("linear_probe", "bitfit", "full_ft"):
        assert f"| {strategy} |" in table
    assert "| strategy |" in capsys.readouterr().out


BAD_COLUMNS = [
    (["text_column=body"], "has no column 'body' (text_column); columns found: review, "
                           "sentiment"),
    (["label_column=stars"], "has no column 'stars' (label_column); columns found: review, "
                             "sentiment"),
    (["max_length=600"], "max_length 600 does not fit model 'bert_minilm_l6'; valid: 1..512"),
    (["dataset=digits"], "model 'bert_minilm_l6' takes text (token ids); dataset 'digits' "
                         "holds images; text models: bert_base, bert_minilm_l6"),
]


@pytest.mark.parametrize("overrides,message", BAD_COLUMNS, ids=[o[0] for o, _ in BAD_COLUMNS])
def test_bad_text_settings_exit_2_with_one_line(tmp_path, capsys, overrides, message):
    dataset = _write(tmp_path / "reviews.csv", _reviews())
    workdir = tmp_path / "w"
    with pytest.raises(SystemExit) as exit_:
        sys.exit(cli.main(["run", _config(tmp_path, dataset, ["linear_probe"]), "--workdir",
                           str(workdir), "--set", *overrides]))
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err, err
    assert [line for line in err.splitlines() if "error" in line] == [err.splitlines()[-1]], err
    assert message in err.splitlines()[-1], err
    assert not (workdir / "results.jsonl").exists()


def test_labels_splits_and_class_subsets_of_a_text_file(tmp_path):
    # Integer labels are the class indices as given; string labels sort into classes.
    rows = [{"text": f"text {i}", "label": i % 3} for i in range(30)]
    ints = data.load(_write(tmp_path / "ints.jsonl", rows))
    assert ints.class_names == ("0", "1", "2") and ints.num_classes == 3
    named = data.load(_write(tmp_path / "named.csv", _reviews(), ["review", "sentiment"]),
                      columns=data.Columns("review", "sentiment"))
    assert named.class_names == ("neg", "pos")
    assert {k: len(s.labels) for k, s in named.splits.items()} == {"train": 14, "val": 2,
                                                                    "test": 4}
    # The same seeded stratified 70/10/20 split as digits: the same file splits the same way.
    again = data.load(str(tmp_path / "named.csv"), columns=data.Columns("review", "sentiment"))
    assert list(again.splits["test"].texts) == list(named.splits["test"].texts)
    # A split column fixes the splits.
    fixed = [{**r, "split": ("train", "val", "test")[i // 3 % 3]} for i, r in enumerate(rows)]
    split = data.load(_write(tmp_path / "fixed.csv", fixed))
    assert {k: len(s.labels) for k, s in split.splits.items()} == {"train": 12, "val": 9,
                                                                   "test": 9}
    assert set(split.splits["val"].texts) == {f"text {i}" for i in range(30) if i // 3 % 3 == 1}
    # A class subset relabels in the order given, as for images; a pair column rides along.
    pairs = [{**r, "second": f"pair {i}"} for i, r in enumerate(rows)]
    path = _write(tmp_path / "pairs.jsonl", pairs)
    sub = data.load(f"{path}:2,0", columns=data.Columns(pair="second"))
    assert sub.class_names == ("2", "0") and sub.num_classes == 2
    for s in sub.splits.values():
        assert set(s.labels) == {0, 1}
        assert all(int(t.split()[1]) % 3 == (2, 0)[y] for t, y in zip(s.texts, s.labels))
        assert [p.split()[1] for p in s.pairs] == [t.split()[1] for t in s.texts]
    # k-shot picks k examples per class of a text split.
    idx = data.k_shot_indices(sub.splits["train"].labels, 3, seed=0)
    assert np.bincount(sub.splits["train"].labels[idx]).tolist() == [3, 3]


def _error(path, columns=None, spec=None) -> str:
    with pytest.raises(UserError) as e:
        data.load(spec or str(path), columns=columns)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_bad_text_files_are_one_line_user_errors(tmp_path):
    rows = [{"text": f"t{i}", "label": "ab"[i % 2]} for i in range(20)]
    blank = [dict(r) for r in rows]
    blank[5]["text"] = "  "
    assert "empty 'text' at" in _error(_write(tmp_path / "blank.csv", blank)) and "line 7" in \
        _error(tmp_path / "blank.csv")
    few = rows + [{"text": "lonely", "label": "c"}]
    assert "class 'c' of dataset" in _error(_write(tmp_path / "few.jsonl", few))
    assert "has 1 examples" in _error(tmp_path / "few.jsonl")
    gap = [{"text": f"t{i}", "label": (0, 2)[i % 2]} for i in range(20)]
    assert "class '1' of dataset" in _error(_write(tmp_path / "gap.jsonl", gap))
    (tmp_path / "latin1.csv").write_bytes("text,label\ncaf\xe9,a\n".encode("latin-1"))
    assert "not UTF-8 text" in _error(tmp_path / "latin1.csv")
    (tmp_path / "broken.jsonl").write_text('{"text": "a", "label": 1}\n{"text": \n')
    assert "line 2 is not JSON" in _error(tmp_path / "broken.jsonl")
    assert "dataset file not found" in _error(tmp_path / "missing.csv")
    bad_split = [{**r, "split": "training"} for r in rows]
    assert "'split' value 'training'; valid: train, val, test" in _error(
        _write(tmp_path / "split.csv", bad_split))
    path = _write(tmp_path / "ok.csv", rows)
    assert "corruptions apply to images; dataset" in _error(
        path, spec=f"{path}@gaussian_noise:3")
    assert "class 5 is not in dataset" in _error(path, spec=f"{path}:0,5")


def test_tokens_are_cached_by_content_tokenizer_and_length(tmp_path, monkeypatch):
    tokenizer = os.path.join(os.path.dirname(zoo.path("all_minilm_l6_v2")), "tokenizer.json")
    split = textfiles.TextSplit(np.array(["a great film", "an awful meal"], object),
                                np.array([1, 0]))
    first = text.encode_split(split, tokenizer, 8, str(tmp_path))
    assert first.shape == (2, 3, 8) and first.dtype == np.int32
    assert first[0, 0, 0] == 101 and first[0, 1].sum() == 5  # [CLS] a great film [SEP]
    monkeypatch.setattr(text, "encode", lambda *a, **k: pytest.fail("tokenized again"))
    np.testing.assert_array_equal(text.encode_split(split, tokenizer, 8, str(tmp_path)), first)
    with pytest.raises(BaseException, match="tokenized again"):  # another length: a new entry
        text.encode_split(split, tokenizer, 9, str(tmp_path))


def test_an_edited_text_file_is_another_run_and_image_runs_ignore_text_keys(tmp_path):
    from tljax import config
    from tljax.run import identity

    def run_hash(**overrides):
        cfg = config.transfer(model="bert_minilm_l6", weights="all_minilm_l6_v2", **overrides)
        settings = identity.run_settings(cfg.to_dict(), "linear_probe", "probe", "w")
        return identity.run_hash(settings, "linear_probe", 0)

    path = _write(tmp_path / "reviews.csv", _reviews())
    before = run_hash(dataset=path)
    assert run_hash(dataset=path, max_length=32) != before
    _write(tmp_path / "reviews.csv", _reviews(11))  # same path, new content
    assert run_hash(dataset=path) != before
    assert run_hash(dataset="digits", max_length=32) == run_hash(dataset="digits")


def test_vader_without_its_package_names_the_pip_command(monkeypatch, capsys):
    assert cli.main(["list"]) == 0
    listed = capsys.readouterr().out
    assert "vader " in listed and "<file>.csv|.jsonl" in listed
    monkeypatch.setattr(vader.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match="needs the package 'vadersentiment': pip install "
                                        "vadersentiment"):
        data.check_known("vader")


def test_vader_has_the_documented_classes_and_runs_linear_probe(tmp_path, capsys):
    ds = data.load("vader")
    assert ds.class_names == ("negative", "positive")
    counts = {k: np.bincount(s.labels).tolist() for k, s in ds.splits.items()}
    assert counts == {"train": [2669, 2093], "val": [381, 299], "test": [763, 598]}
    test_texts = set(ds.splits["test"].texts)
    assert not test_texts & set(ds.splits["train"].texts)
    assert {"horrible", "wonderful"} <= set().union(*(s.texts for s in ds.splits.values()))
    workdir = tmp_path / "w"
    argv = ["run", _config(tmp_path, "vader", ["linear_probe"]), "--workdir", str(workdir),
            "--set", "max_length=4", "eval_batch_size=512", "probe_l2_grid=[0.01]"]
    assert cli.main(argv) == 0, capsys.readouterr().err[-2000:]
    (record,) = [json.loads(line) for line in open(workdir / "results.jsonl")]
    assert record["probe"]["train_examples"] == 4762
    # Majority class is 0.56 of test; the rated polarity of a word is in its embedding.
    assert record["metrics"]["test"]["accuracy"] > 0.8


def test_a_tokenizer_with_ids_beyond_the_models_vocab_is_one_line_error(tmp_path, capsys):
    # JAX clamps an out-of-range embedding id to the last row: without the check such a
    # tokenizer would train on silently wrong embeddings.
    from tokenizers import Tokenizer, models as tok_models, pre_tokenizers

    tok = Tokenizer(tok_models.WordLevel({"[PAD]": 0, "[UNK]": 1, "big": 40000},
                                         unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(tmp_path / "tokenizer.json"))
    dataset = _write(tmp_path / "reviews.csv", _reviews())
    workdir = tmp_path / "w"
    with pytest.raises(SystemExit) as exit_:
        sys.exit(cli.main(["run", _config(tmp_path, dataset, ["linear_probe"]), "--workdir",
                           str(workdir), "--set", f"tokenizer={tmp_path}", *_FAST]))
    last = capsys.readouterr().err.splitlines()[-1]
    assert exit_.value.code == 2
    assert str(tmp_path / "tokenizer.json") in last and "40000" in last, last
    assert "vocab_size 30522" in last, last
    assert not (workdir / "results.jsonl").exists()


def test_a_csv_with_a_repeated_column_name_is_an_error_not_its_last_copy(tmp_path):
    # csv.DictReader keeps the last of two same-named columns: the run would silently read
    # the other text.
    path = tmp_path / "twice.csv"
    path.write_text("text,label,text\n" + "".join(f"first {i},{i % 2},second {i}\n"
                                                  for i in range(12)))
    assert "column 'text' twice" in _error(path)
    # A repeated column the run does not read is no concern.
    path.write_text("text,label,note,note\n" + "".join(f"t {i},{i % 2},x,y\n"
                                                       for i in range(12)))
    assert data.load(str(path)).splits["train"].texts[0].startswith("t ")


def test_a_csv_cell_longer_than_128k_characters_is_read(tmp_path):
    # A whole document in one cell is text like any other (truncated later to max_length);
    # Python's csv module refuses fields over 131,072 characters unless told otherwise.
    rows = [{"text": ("long " * 40000 if i == 0 else f"t {i}"), "label": i % 2}
            for i in range(12)]
    ds = data.load(_write(tmp_path / "long.csv", rows))
    assert max(len(t) for s in ds.splits.values() for t in s.texts) == 200000
    assert csv.field_size_limit() == 131072  # the process-wide limit is left as it was


def test_split_values_are_read_as_image_split_folders_are(tmp_path):
    # Hugging Face datasets name the split "validation"; any case, as image split folders.
    for val in ("validation", "Dev"):  # and a dev set, as a dev/ image folder
        rows = [{"text": f"t {i}", "label": i % 2, "split": ("Train", val, "TEST")[i // 4]}
                for i in range(12)]
        ds = data.load(_write(tmp_path / f"hf-{val}.csv", rows))
        assert {k: list(s.texts) for k, s in ds.splits.items()} == {
            "train": ["t 0", "t 1", "t 2", "t 3"], "val": ["t 4", "t 5", "t 6", "t 7"],
            "test": ["t 8", "t 9", "t 10", "t 11"]}


def test_the_tokenizer_a_run_uses_is_part_of_its_identity_wherever_it_comes_from(tmp_path):
    from tljax import config
    from tljax.run import identity

    def run_hash(**overrides):
        cfg = config.transfer(model="bert_minilm_l6", **overrides)
        settings = identity.run_settings(cfg.to_dict(), "linear_probe", "probe", "w")
        return identity.run_hash(settings, "linear_probe", 0)

    dataset = _write(tmp_path / "reviews.csv", _reviews())
    shipped = os.path.join(os.path.dirname(zoo.path("all_minilm_l6_v2")), "tokenizer.json")
    mine = tmp_path / "tok" / "tokenizer.json"
    mine.parent.mkdir()
    mine.write_bytes(open(shipped, "rb").read())
    named = run_hash(dataset=dataset, weights="all_minilm_l6_v2", tokenizer=str(mine.parent))
    # Its bytes count, not where it is: a file or its folder, a copy of the shipped one.
    assert run_hash(dataset=dataset, weights="all_minilm_l6_v2", tokenizer=str(mine)) == named
    assert run_hash(dataset=dataset, weights="all_minilm_l6_v2") == named
    mine.write_text(json.dumps(json.loads(mine.read_text()) | {"truncation": None}))
    assert run_hash(dataset=dataset, weights="all_minilm_l6_v2",
                    tokenizer=str(mine.parent)) != named

    # A tokenizer.json beside a weights file (the weights' digest covers the file alone):
    # editing its vocabulary is another run, not a finished one.
    weights = tmp_path / "model" / "model.safetensors"
    weights.parent.mkdir()
    weights.write_bytes(b"not read here")
    beside = weights.parent / "tokenizer.json"
    beside.write_bytes(open(shipped, "rb").read())
    before = run_hash(dataset=dataset, weights=str(weights))
    edited = json.loads(beside.read_text())
    edited["model"]["vocab"] = {w: (i + 1) % len(edited["model"]["vocab"])
                                for w, i in edited["model"]["vocab"].items()}
    beside.write_text(json.dumps(edited))
    assert run_hash(dataset=dataset, weights=str(weights)) != before


def test_whole_number_float_labels_are_class_indices_as_integers_are(tmp_path):
    # pandas writes an int column holding a NaN as floats (1.0): as strings, 11 classes would
    # sort '10.0' before '2.0' and the subset :2 would pick label 10.
    rows = [{"text": f"t {i}", "label": float(i % 11)} for i in range(66)]
    ds = data.load(_write(tmp_path / "floats.jsonl", rows) + ":2,10")
    assert ds.class_names == ("2", "10")
    train = ds.splits["train"]
    assert sorted(train.labels) == [0] * 4 + [1] * 4
    assert all(int(t.split()[1]) % 11 == (2, 10)[y] for t, y in zip(train.texts, train.labels))
    as_text = data.load(_write(tmp_path / "floats.csv", rows))
    assert as_text.class_names == tuple(str(c) for c in range(11))


def test_an_id_column_read_as_labels_is_named_not_expanded_into_classes(tmp_path):
    # label_column pointed at a numeric id: every class 0..max would be made (and named)
    # before the first is found empty; ids in the billions exhaust memory.
    rows = [{"text": f"t {i}", "label": i % 2, "id": 3_000_000 + i} for i in range(12)]
    path = _write(tmp_path / "ids.csv", rows)
    message = _error(path, columns=data.Columns(label="id"))
    assert "label 3000011" in message and "12 examples" in message, message


def test_csv_rows_with_every_cell_empty_are_skipped_as_blank_lines_are(tmp_path):
    # Spreadsheet exports end with rows of bare commas; a row with some cells is still checked.
    path = tmp_path / "excel.csv"
    path.write_bytes(("text,label,note\r\n" + "".join(f"t {i},{i % 2},\r\n" for i in range(12))
                      + ",,\r\n , ,\r\n").encode())
    assert sum(len(s.labels) for s in data.load(str(path)).splits.values()) == 12
    path.write_text("text,label,note\n" + "".join(f"t {i},{i % 2},\n" for i in range(12))
                    + ",,a note\n")
    assert "empty 'text' at" in _error(path) and "line 14" in _error(path)
