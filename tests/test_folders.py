"""Image folders as datasets: ``tljax run`` and ``tljax probe`` on a directory of class
folders, prepared once (a second run decodes nothing), prepared again when the folder
changes, unreadable files named and skipped, fixed split folders kept, and class subsets
and corruptions composed with a path exactly as with a name."""

import json
import os

import numpy as np
import pytest
from PIL import Image, ImageDraw

from tljax import cli, config, data
from tljax.run import identity
from tljax.data import corruptions, datasets, folder_store, folders
from tljax.errors import UserError

COLOURS = {"circle": (230, 40, 40), "square": (40, 200, 40), "triangle": (40, 40, 230)}


def _shape(kind: str, w: int, h: int, rng) -> Image.Image:
    """Returns a ``w`` x ``h`` RGB image: one filled shape of the class's colour on white."""
    im = Image.new("RGB", (w, h), (255, 255, 255))
    d = ImageDraw.Draw(im)
    side = int(rng.integers(min(w, h) // 2, min(w, h)))
    x, y = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
    box = [x, y, x + side - 1, y + side - 1]
    if kind == "circle":
        d.ellipse(box, fill=COLOURS[kind])
    elif kind == "square":
        d.rectangle(box, fill=COLOURS[kind])
    else:
        d.polygon([(x, y + side - 1), (x + side - 1, y + side - 1), (x + side // 2, y)],
                  fill=COLOURS[kind])
    return im


def _make(root, per_class: int = 12, seed: int = 0, classes=tuple(COLOURS)) -> list:
    """Writes ``root/CLASS/i.png|jpg`` of sizes 16-40 px; returns the paths written."""
    rng = np.random.default_rng(seed)
    paths = []
    for c, kind in zip(classes, COLOURS):  # class k is drawn as the k-th shape
        os.makedirs(os.path.join(root, c), exist_ok=True)
        for i in range(per_class):
            w, h = (int(v) for v in rng.integers(16, 41, 2))
            path = os.path.join(root, c, f"{i}.{'png' if i % 2 else 'jpg'}")
            _shape(kind, w, h, rng).save(path)
            paths.append(path)
    return paths


@pytest.fixture
def decodes(monkeypatch) -> list:
    """Returns a list that gets one entry per image decoded by ``tljax.data.folder_store``."""
    calls, real = [], folder_store._decode

    def counting(*args):
        calls.append(args[0])
        return real(*args)

    monkeypatch.setattr(folder_store, "_decode", counting)
    return calls


def test_a_folder_runs_linear_probe_and_full_ft_then_probe_without_decoding_again(
        tmp_path, capsys, decodes):
    root = tmp_path / "shapes"
    _make(root)
    (root / "README.txt").write_text("not an image")
    config_file = tmp_path / "folder.py"
    config_file.write_text(
        "from tljax.config import transfer\n"
        "def get_config():\n"
        f"    return transfer(experiment='folder', model='cnn', channels=3, dataset={str(root)!r},\n"
        "                    strategies=['linear_probe', 'full_ft'], steps=30, batch_size=8,\n"
        # The closed-form probe spares the L-BFGS compilation this test does not need.
        "                    lr=3e-3, log_every=100, checkpoint_every=1000,\n"
        "                    probe_solver='ridge')\n")
    workdir = tmp_path / "w"
    assert cli.main(["run", str(config_file), "--workdir", str(workdir)]) == 0
    err = capsys.readouterr().err
    assert err.count(f"tljax: preparing image folder {root} (36 images, 3 classes, stored "
                     "as ") == 1, err
    assert f"ignored 1 file in {root} that are not images" in err and "README.txt" in err
    assert len(decodes) == 36
    records = [json.loads(line) for line in open(workdir / "results.jsonl")]
    assert [r["strategy"] for r in records] == ["linear_probe", "full_ft"]
    for r in records:
        assert r["status"] == "ok" and r["dataset"] == str(root)
        assert r["metrics"]["test"]["accuracy"] > 0.5, r["metrics"]  # three classes: chance 1/3
    assert records[0]["trainable_params"] == 128 * 3 + 3  # a 3-class head on the CNN

    # A second command on the same folder reads the prepared copy: nothing is decoded.
    assert cli.main(["probe", "--model", "cnn", "--dataset", f"{root}:0,2",
                     "--solver", "ridge"]) == 0
    out, err = capsys.readouterr()
    assert len(decodes) == 36
    assert "preparing" not in err
    assert "| all | 1 | ridge |" in out


def _run_hash(dataset: str) -> str:
    cfg = config.transfer(dataset=dataset)
    settings = identity.run_settings(cfg.to_dict(), "full_ft", "network", "")
    return identity.run_hash(settings, "full_ft", 0)


def test_a_changed_folder_is_prepared_again_and_its_old_copy_removed(tmp_path, decodes):
    root, store = tmp_path / "pets", tmp_path / "data"
    paths = _make(root, per_class=6, classes=("cat", "dog"))
    hashes = [_run_hash(f"{root}:1,0")]
    first = data.load(str(root), data_dir=str(store))
    assert len(decodes) == 12
    again = data.load(str(root), data_dir=str(store))
    assert len(decodes) == 12  # unchanged: read, not decoded
    np.testing.assert_array_equal(first.splits["train"].images, again.splits["train"].images)

    hashes.append(_run_hash(f"{root}:1,0"))
    _shape("circle", 30, 20, np.random.default_rng(1)).save(root / "cat" / "new.png")
    hashes.append(_run_hash(f"{root}:1,0"))
    added = data.load(str(root), data_dir=str(store))
    assert len(decodes) == 25 and sum(len(s.labels) for s in added.splits.values()) == 13
    os.utime(paths[0], ns=(1, 1))  # touched: same bytes, new mtime: the same dataset
    data.load(str(root), data_dir=str(store))
    assert len(decodes) == 25
    # A finished run on the old folder is not taken for a run on the new one.
    hashes.append(_run_hash(f"{root}:1,0"))
    assert hashes[0] == hashes[1] != hashes[2] == hashes[3]
    # One prepared copy per folder: the older states are gone from the data dir.
    assert len(_prepared(store)) == 1


def _prepared(store) -> list:
    """Returns the prepared copies in data dir ``store`` (not its digests' folder)."""
    return [d for d in os.listdir(store / folders.BUILDER) if d != folders.DIGESTS]


def test_unreadable_images_are_named_and_skipped_and_an_emptied_class_is_an_error(
        tmp_path, capsys):
    root = tmp_path / "broken"
    paths = _make(root, per_class=6, classes=("cat", "dog"))
    (root / "cat" / "garbage.jpg").write_bytes(b"this is no jpeg")
    whole = open(paths[1], "rb").read()
    (root / "dog" / "truncated.png").write_bytes(whole[:len(whole) // 2])  # header fine
    (root / "dog" / ".DS_Store").write_bytes(b"\0")
    ds = data.load(str(root), data_dir=str(tmp_path / "d"))
    err = capsys.readouterr().err
    assert "skipped 2 unreadable images" in err
    assert "cat/garbage.jpg (UnidentifiedImageError" in err and "dog/truncated.png (" in err
    assert "ignored 1 file" in err and "dog/.DS_Store" in err
    assert sum(len(s.labels) for s in ds.splits.values()) == 12
    listing = open(os.path.join(data.datasets.folder_dir(str(root), str(tmp_path / "d")),
                                "skipped.txt")).read()
    assert "cat/garbage.jpg\t" in listing and "dog/truncated.png\t" in listing

    for path in paths[6:]:  # every dog image unreadable
        open(path, "wb").write(b"broken")
    with pytest.raises(UserError, match="class 'dog' of image folder .* has no readable"):
        data.load(str(root), data_dir=str(tmp_path / "d"))


def test_fixed_split_folders_are_kept_and_val_is_carved_from_train_without_one(tmp_path):
    root = tmp_path / "fixed"
    _make(root / "train", per_class=10, classes=("a", "b"), seed=1)
    _make(root / "validation", per_class=2, classes=("a", "b"), seed=2)
    _make(root / "test", per_class=3, classes=("a", "b"), seed=3)
    ds = data.load(str(root), data_dir=str(tmp_path / "d"))
    assert ds.class_names == ("a", "b")
    assert {k: np.bincount(v.labels).tolist() for k, v in ds.splits.items()} == {
        "train": [10, 10], "val": [2, 2], "test": [3, 3]}
    # The test split is exactly the test folder's images (decoded the same way).
    size = ds.splits["test"].images.shape[1]
    want = {folder_store._decode(os.path.join(root, "test", c, f"{i}.{'png' if i % 2 else 'jpg'}"),
                                 size, False).tobytes()
            for c in ("a", "b") for i in range(3)}
    assert {im.tobytes() for im in ds.splits["test"].images} == want

    os.rename(root / "validation", tmp_path / "elsewhere")
    ds = data.load(str(root), data_dir=str(tmp_path / "d"))
    assert {k: np.bincount(v.labels).tolist() for k, v in ds.splits.items()} == {
        "train": [9, 9], "val": [1, 1], "test": [3, 3]}


def test_subsets_and_corruptions_compose_with_a_path_as_with_a_name(tmp_path):
    root = tmp_path / "shapes"
    _make(root, per_class=10)
    store = str(tmp_path / "d")
    full = data.load(str(root), data_dir=store)
    sub = data.load(f"{root}:2,0", data_dir=store)
    assert sub.class_names == ("triangle", "circle") and sub.num_classes == 2
    keep = np.isin(full.splits["test"].labels, [2, 0])
    np.testing.assert_array_equal(sub.splits["test"].images, full.splits["test"].images[keep])
    np.testing.assert_array_equal(sub.splits["test"].labels,
                                  np.where(full.splits["test"].labels[keep] == 2, 0, 1))
    shifted = data.load(f"{root}@contrast:2", data_dir=store)
    want = corruptions.apply(full.splits["test"].images, "contrast", 2,
                             corruptions.seed(str(root), "contrast", 2, "test"))
    np.testing.assert_array_equal(shifted.splits["test"].images, want)
    assert not np.array_equal(want, full.splits["test"].images)
    both = data.load(f"{root}:2,0@contrast:2", data_dir=store)
    np.testing.assert_array_equal(both.splits["test"].images, want[keep])


def test_images_are_centre_squares_at_one_size_and_grey_folders_keep_one_channel(tmp_path):
    root = tmp_path / "wide"
    for c, fill in (("a", 60), ("b", 180)):
        os.makedirs(root / c)
        for i in range(6):
            im = np.zeros((20, 40 + 2 * i), np.uint8)  # grey, wider than tall
            im[:, :] = fill
            im[:, :10 + i] = 0  # left and right margins outside the centre square
            im[:, 30 + i:] = 255
            Image.fromarray(im, "L").save(root / c / f"{i}.png")
    ds = data.load(str(root), data_dir=str(tmp_path / "d"))
    images = np.concatenate([s.images for s in ds.splits.values()])
    labels = np.concatenate([s.labels for s in ds.splits.values()])
    # Auto size: the largest shorter side (20); the centre square keeps only the fill.
    assert images.shape[1:] == (20, 20, 1)
    assert set(np.unique(images[labels == 0])) == {60}
    assert set(np.unique(images[labels == 1])) == {180}
    resized = data.load(str(root), data_dir=str(tmp_path / "d"), folder_image_size=8)
    assert resized.splits["train"].images.shape[1:] == (8, 8, 1)


def test_paths_are_checked_in_one_line_and_listed(tmp_path, capsys):
    with pytest.raises(UserError, match="^dataset path /no/such/folder does not exist$"):
        data.check_known("/no/such/folder")
    (tmp_path / "file.png").write_bytes(b"x")
    with pytest.raises(UserError, match="is a file; an image dataset is a directory"):
        data.check_known(str(tmp_path / "file.png"))
    with pytest.raises(UserError, match="contains ':' or '@'"):
        data.parse_spec("/data/a:b/pets")
    os.makedirs(tmp_path / "one" / "only")
    Image.new("RGB", (8, 8)).save(tmp_path / "one" / "only" / "x.png")
    with pytest.raises(UserError, match="has 1 class folder.*need two or more"):
        data.load(str(tmp_path / "one"), data_dir=str(tmp_path / "d"))
    _make(tmp_path / "few", per_class=5, classes=("a", "b"))
    with pytest.raises(UserError, match="gives an empty val split .*6 or more per class"):
        data.load(str(tmp_path / "few"), data_dir=str(tmp_path / "d"))
    assert cli.main(["probe", "--model", "cnn", "--dataset", "/no/such/folder"]) == 2
    assert capsys.readouterr().err.strip() == \
        "tljax: error: dataset path /no/such/folder does not exist"
    assert cli.main(["list"]) == 0
    assert "/path/to/DIR" in capsys.readouterr().out
    assert datasets.kind("/data/reviews.csv") == "text"
    assert not folders.is_folder_spec("/data/reviews.csv")


def test_a_dangling_link_is_a_skipped_file_not_a_failed_run(tmp_path, capsys):
    # A link to a file gone (a moved dataset, an unfetched git-annex file) is one
    # unreadable image: named and skipped, as a corrupt one, by the run hash and the load.
    root = tmp_path / "linked"
    _make(root, per_class=6, classes=("cat", "dog"))
    os.symlink(tmp_path / "gone.png", root / "cat" / "link.png")
    assert len(_run_hash(str(root))) > 0
    ds = data.load(str(root), data_dir=str(tmp_path / "d"))
    err = capsys.readouterr().err
    assert "skipped 1 unreadable image" in err and "cat/link.png (FileNotFoundError" in err, err
    assert sum(len(s.labels) for s in ds.splits.values()) == 12


def test_split_folders_are_recognised_in_any_case_and_as_valid(tmp_path):
    # Kaggle's Train/Test and Roboflow's train/valid/test exports: read as splits, never as
    # three classes named after them.
    root = tmp_path / "export"
    for split, n in (("Train", 6), ("valid", 1), ("Test", 2)):
        _make(root / split, per_class=n, classes=("a", "b"), seed=n)
    ds = data.load(str(root), data_dir=str(tmp_path / "d"))
    assert ds.class_names == ("a", "b")
    assert {k: np.bincount(v.labels).tolist() for k, v in ds.splits.items()} == {
        "train": [6, 6], "val": [1, 1], "test": [2, 2]}


def test_a_dev_folder_is_val_and_split_names_taken_as_classes_are_warned_of(tmp_path, capsys):
    root = tmp_path / "export"
    for split, n in (("train", 6), ("dev", 2), ("test", 2)):
        _make(root / split, per_class=n, classes=("a", "b"), seed=n)
    ds = data.load(str(root), data_dir=str(tmp_path / "d"))
    assert ds.class_names == ("a", "b")
    assert {k: np.bincount(v.labels).tolist() for k, v in ds.splits.items()} == {
        "train": [6, 6], "val": [2, 2], "test": [2, 2]}
    assert "warning" not in capsys.readouterr().err
    # A stray folder beside them: every subfolder is a class, and a warning says why.
    _make(root / "notes", per_class=3, classes=("x",), seed=9)
    ds = data.load(str(root), data_dir=str(tmp_path / "d"))
    assert ds.class_names == ("dev", "notes", "test", "train")
    err = capsys.readouterr().err
    assert (f"tljax: warning: image folder {root} has subfolders dev, test, train named like "
            "splits, but not every subfolder is a split (notes is not), so all 4 are taken "
            "as classes") in err


def test_a_folder_changed_while_it_is_prepared_is_an_error_not_a_stale_copy(
        tmp_path, monkeypatch):
    # Images still being copied in when the run starts: a copy of a state the folder never
    # settled in would be read as the folder's (and its runs' hashes taken for the new one).
    root, store = tmp_path / "copying", tmp_path / "d"
    _make(root, per_class=6, classes=("cat", "dog"))
    real = folder_store._decode

    def decode_while_copying(path, *args):
        if not (root / "dog" / "late.png").exists():
            _shape("square", 20, 20, np.random.default_rng(0)).save(root / "dog" / "late.png")
        return real(path, *args)

    monkeypatch.setattr(folder_store, "_decode", decode_while_copying)
    with pytest.raises(UserError, match="changed while it was prepared"):
        data.load(str(root), data_dir=str(store))
    assert _prepared(store) == []
    assert sum(len(s.labels) for s in data.load(str(root), data_dir=str(store))
               .splits.values()) == 13
