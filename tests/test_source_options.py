"""Options of the source model: its head kept (``keep_head``), its training data mixed
(``pretrain.mix``), and the transfer-curve figure of the transfer_n strategies."""

import json

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from tljax import checkpoint, cli, config, data, models
from tljax.run import source_model
from tljax.errors import UserError
from tljax.report import plots, transfer

CONFIG = '''
from tljax.config import transfer

def get_config():
    c = transfer(experiment="keep_head", model="cnn", dataset="{dataset}", weights="{weights}")
    c.strategies = ["full_ft"]
    c.seeds = [3]
    c.steps = 1
    c.batch_size = 16
    c.lr = 0.0  # no update: the saved head is the one the run started from
    c.keep_head = {keep_head}
    return c
'''


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A 5-class cnn 'source' whose head is unlike any fresh init."""
    model = models.create("cnn", 5)
    variables = jax.device_get(model.init(jax.random.key(123)))
    variables["params"]["head"] = jax.tree.map(lambda v: v + 0.5, variables["params"]["head"])
    path = tmp_path_factory.mktemp("source") / "ckpt"
    return checkpoint.save_variables(path, variables), variables


def _run(tmp_path, weights, keep_head, dataset="digits:5-9"):
    config_file = tmp_path / "c.py"
    config_file.write_text(CONFIG.format(weights=weights, keep_head=keep_head, dataset=dataset))
    return cli.main(["run", str(config_file), "--workdir", str(tmp_path / "w")])


@pytest.mark.parametrize("keep_head", [True, False])
def test_keep_head_starts_from_the_source_head_else_a_fresh_one(tmp_path, source, keep_head):
    path, variables = source
    assert _run(tmp_path, path, keep_head) == 0
    record = json.loads((tmp_path / "w" / "results.jsonl").read_text().splitlines()[0])
    head = ocp.StandardCheckpointer().restore(record["checkpoint"])["params"]["head"]
    fresh = jax.device_get(models.create("cnn", 5).init(jax.random.key(3)))["params"]["head"]
    want = variables["params"]["head"] if keep_head else fresh
    for name in ("kernel", "bias"):
        np.testing.assert_array_equal(head[name], want[name])


def test_keep_head_with_another_class_count_is_one_line(tmp_path, source, capsys):
    path, _ = source
    assert _run(tmp_path, path, True, dataset="digits:0-2") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "head" in err[0], err
    assert not (tmp_path / "w" / "results.jsonl").exists() or \
        not (tmp_path / "w" / "results.jsonl").read_text().count('"status": "ok"')


def test_pretrain_mix_adds_each_views_training_split_and_names_the_source():
    cfg = config.transfer(model="cnn", dataset="digits:5-9")
    cfg.pretrain.dataset = "digits:0-4"
    model = models.create("cnn", 5)
    ds = data.load("digits:0-4")
    x, y = source_model._train_split(cfg, ds, model.preprocessing)
    cfg.pretrain.mix = ["digits:0-4@invert:5"]
    mixed_x, mixed_y = source_model._train_split(cfg, ds, model.preprocessing)
    n = len(y)
    assert len(mixed_y) == 2 * n
    np.testing.assert_array_equal(mixed_y, np.concatenate([y, y]))
    np.testing.assert_array_equal(mixed_x[:n], x)  # the clean images first, unchanged
    assert not np.allclose(mixed_x[n:], x)  # then their inverted view
    # A source trained on other data is another source (another checkpoint directory).
    plain = config.transfer(model="cnn", dataset="digits:5-9")
    plain.pretrain.dataset = "digits:0-4"
    assert source_model.source_key(cfg) != source_model.source_key(plain)
    cfg.pretrain.mix = ["digits:0-2@invert:5"]
    with pytest.raises(UserError, match="pretrain.mix dataset 'digits:0-2@invert:5' has 3 "
                                        "classes; pretrain.dataset 'digits:0-4' has 5"):
        source_model._train_split(cfg, ds, model.preprocessing)


def _row(strategy, test, experiment):
    return {"strategy": strategy, "dataset": "digits:5-9", "shots": 0, "sweep_hash": experiment,
            "experiment": experiment, "test": test, "test_std": 0.01}


def test_transfer_curves_draw_one_line_per_source_and_kind(tmp_path):
    rows = [_row(f"transfer_n{plus}:{n}", 0.9 - 0.01 * n, source)
            for source in ("AnB", "BnB") for plus in ("", "+") for n in range(4)]
    rows.append(_row("full_ft", 0.95, "AnB"))  # not a transfer_n run: not on the figure
    lines = transfer.transfer_lines(rows)
    assert sorted(label for _, label in lines) == ["AnB", "AnB+", "BnB", "BnB+", "base"]
    assert [n for n, _ in lines[("digits:5-9", "AnB")]] == [1, 2, 3]
    # N = 0 re-initialises every block: one base per dataset, whichever source ran it.
    assert [(n, r["experiment"]) for n, r in lines[("digits:5-9", "base")]] == [(0, "AnB")]
    assert plots.transfer_curves(rows, str(tmp_path)).endswith("transfer_curves.png")
    assert plots.transfer_curves(rows[-1:], str(tmp_path)) is None


def test_transfer_table_has_one_row_per_n_and_one_column_per_curve():
    rows = [_row(f"transfer_n{plus}:{n}", 0.9 - 0.01 * n - (0.05 if plus else 0), source)
            for source in ("AnB", "BnB") for plus in ("", "+") for n in range(3)
            if not (source == "BnB" and n == 0)]
    table = transfer.transfer_table(rows).splitlines()
    assert table[0] == "| N | AnB | AnB+ | BnB | BnB+ |"
    # The base (N = 0) starts every curve; N = 2, BnB+ is 0.9 - 0.02 - 0.05.
    assert table[2] == "| 0 (base: from scratch) | " + " | ".join(["0.900 ± 0.010"] * 4) + " |"
    assert table[4] == "| 2 | 0.880 ± 0.010 | 0.830 ± 0.010 | 0.880 ± 0.010 | 0.830 ± 0.010 |"
    assert transfer.transfer_table([_row("full_ft", 0.9, "AnB")]) is None


def test_keep_head_without_a_source_is_one_line(tmp_path, capsys):
    assert _run(tmp_path, "", True) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("tljax: error: keep_head=True needs a source model with a head: set weights "
                   "or pretrain.dataset (now both empty: random init)")
