"""Tests of the generated toy dataset (generation, atomicity, registration, contents)."""

import os
import threading

import cv2
import numpy as np
import pytest
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog

import mta_clip.data  # noqa: F401  (registers the datasets)
from mta_clip.config import add_mtaclip_config
from mta_clip.data import SemanticMaskFormerMapper, toy

SMALL = {"train": 6, "val": 3}


@pytest.fixture(scope="module")
def full_root(tmp_path_factory):
    """The default-size dataset, generated once for this module into a temp folder."""
    return toy.generate_toy_dataset(str(tmp_path_factory.mktemp("d2") / "toy_sem_seg"))


def _all_files(root):
    files = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                files[os.path.relpath(path, root)] = f.read()
    return files


def test_generation_is_deterministic(tmp_path, monkeypatch):
    roots = []
    for sub in ("a", "b"):
        monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / sub))
        roots.append(toy.generate_toy_dataset(sizes=SMALL))
    assert roots[0] == os.path.join(str(tmp_path / "a"), "toy_sem_seg")
    a, b = _all_files(roots[0]), _all_files(roots[1])
    assert len(a) == 2 * (6 + 3) + 1 and a == b
    # The arrays read back equal a fresh in-memory rendering.
    image, label = toy.make_toy_sample("train", 4)
    read = cv2.imread(os.path.join(roots[0], "images", "train", "train_00004.png"))[:, :, ::-1]
    assert np.array_equal(read, image)
    read = cv2.imread(os.path.join(roots[0], "labels", "train", "train_00004.png"), -1)
    assert np.array_equal(read, label)
    # Different images differ.
    assert not np.array_equal(toy.make_toy_sample("train", 0)[1], toy.make_toy_sample("val", 0)[1])


def test_registered_metadata_is_complete():
    assert {"toy_sem_seg_train", "toy_sem_seg_val"} <= set(DatasetCatalog.list())
    for split in ("train", "val"):
        meta = MetadataCatalog.get(f"toy_sem_seg_{split}")
        assert 5 <= len(meta.stuff_classes) <= 7
        assert meta.prompt_classes == meta.stuff_classes
        assert len(set(meta.stuff_classes)) == len(meta.stuff_classes)
        assert len(meta.stuff_colors) == len(meta.stuff_classes)
        assert len({tuple(c) for c in meta.stuff_colors}) == len(meta.stuff_colors)
        assert all(len(c) == 3 and all(0 <= v <= 255 for v in c) for c in meta.stuff_colors)
        assert meta.ignore_label == 255
        assert meta.evaluator_type == "sem_seg"
        assert meta.image_root.endswith(os.path.join("toy_sem_seg", "images", split))
        assert meta.sem_seg_root.endswith(os.path.join("toy_sem_seg", "labels", split))


def test_prompt_names_fit_the_clip_prompt_slot():
    from open_clip.tokenizer import SimpleTokenizer

    tokenizer = SimpleTokenizer()
    for name in toy.TOY_CLASSES:
        assert name.isalpha() and 1 <= len(tokenizer.encode(name)) <= 3, name


@pytest.fixture
def registered_copy(full_root):
    toy.register_toy_sem_seg(full_root, prefix="toy_sem_seg_unittest")
    yield full_root
    for split in ("train", "val"):
        DatasetCatalog.remove(f"toy_sem_seg_unittest_{split}")
        MetadataCatalog.remove(f"toy_sem_seg_unittest_{split}")


def test_register_and_load_full_dataset(registered_copy):
    full_root = registered_copy
    meta = MetadataCatalog.get("toy_sem_seg_unittest_val")
    assert meta.image_root == os.path.join(full_root, "images", "val")
    counts = np.zeros(256, np.int64)
    ignore_images = 0
    for split, n in (("train", 320), ("val", 40)):
        dicts = DatasetCatalog.get(f"toy_sem_seg_unittest_{split}")
        assert len(dicts) == n
        assert len({d["file_name"] for d in dicts}) == n
        for d in dicts:
            assert set(d) >= {"file_name", "sem_seg_file_name", "height", "width"}
            assert (d["height"], d["width"]) == (96, 96)
            label = cv2.imread(d["sem_seg_file_name"], cv2.IMREAD_UNCHANGED)
            assert label.dtype == np.uint8 and label.shape == (96, 96)
            counts += np.bincount(label.ravel(), minlength=256)
            ignore_images += bool((label == 255).any())
    with_ignore_or_class = np.nonzero(counts)[0].tolist()
    assert with_ignore_or_class == list(range(len(toy.TOY_CLASSES))) + [255]
    fractions = counts[: len(toy.TOY_CLASSES)] / counts.sum()
    assert fractions.min() > 0.03  # every class is well represented
    assert 0 < ignore_images < 360 and counts[255] / counts.sum() < 0.05
    image = cv2.imread(dicts[0]["file_name"], cv2.IMREAD_UNCHANGED)
    assert image.shape == (96, 96, 3) and image.dtype == np.uint8


def test_classes_are_learnable_from_color(full_root):
    """A nearest-class-mean color classifier already separates the classes well."""

    def pixels(split, n):
        xs, ys = [], []
        for i in range(n):
            image, label = toy.make_toy_sample(split, i)
            keep = label != 255
            xs.append(image[keep].astype(np.float64))
            ys.append(label[keep])
        return np.concatenate(xs), np.concatenate(ys)

    x, y = pixels("train", 40)
    means = np.stack([x[y == c].mean(0) for c in range(len(toy.TOY_CLASSES))])
    xv, yv = pixels("val", 20)
    pred = ((xv[:, None, :] - means[None]) ** 2).sum(-1).argmin(1)
    assert (pred == yv).mean() > 0.9


def test_mapper_on_toy_data(full_root):
    cfg = add_mtaclip_config(get_cfg())
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = len(toy.TOY_CLASSES)
    cfg.INPUT.MIN_SIZE_TRAIN = (96,)
    cfg.INPUT.MAX_SIZE_TRAIN = 192
    cfg.INPUT.CROP.ENABLED = True
    cfg.INPUT.CROP.TYPE = "absolute"
    cfg.INPUT.CROP.SIZE = (64, 64)
    cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA = 0.9
    cfg.INPUT.SIZE_DIVISIBILITY = 32
    mapper = SemanticMaskFormerMapper(cfg, is_train=True)
    np.random.seed(0)
    for d in toy.load_toy_sem_seg(full_root, "val")[:5]:
        out = mapper(d)
        assert out["image"].shape == (3, 64, 64) and out["sem_seg"].shape == (64, 64)
        for cls, mask in zip(out["instances"].gt_classes, out["instances"].gt_masks):
            assert (mask == (out["sem_seg"] == cls)).all()


def test_generation_is_skipped_when_complete(tmp_path, monkeypatch):
    root = toy.generate_toy_dataset(str(tmp_path / "toy_sem_seg"), sizes=SMALL)
    assert toy.is_toy_dataset_complete(root, SMALL)

    def fail(*args, **kwargs):
        raise AssertionError("regenerated a complete dataset")

    monkeypatch.setattr(toy, "make_toy_sample", fail)
    assert toy.generate_toy_dataset(root, sizes=SMALL) == root
    # A different request (other sizes) is not satisfied by it.
    assert not toy.is_toy_dataset_complete(root, {"train": 7, "val": 3})


def test_interrupted_generation_does_not_count(tmp_path, monkeypatch):
    parent = tmp_path / "d2"
    root = str(parent / "toy_sem_seg")
    real = toy.make_toy_sample
    calls = []

    def interrupted(split, index, *args, **kwargs):
        calls.append(index)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(split, index, *args, **kwargs)

    monkeypatch.setattr(toy, "make_toy_sample", interrupted)
    with pytest.raises(KeyboardInterrupt):
        toy.generate_toy_dataset(root, sizes=SMALL)
    assert not os.path.exists(root) and not toy.is_toy_dataset_complete(root, SMALL)
    # A temp folder left behind by a killed process (no cleanup ran) is not the dataset either.
    leftover = parent / ".toy_sem_seg.tmp-killed"
    (leftover / "images" / "train").mkdir(parents=True)
    (leftover / "VERSION").write_text("{}")
    assert not toy.is_toy_dataset_complete(root, SMALL)
    monkeypatch.setattr(toy, "make_toy_sample", real)
    toy.generate_toy_dataset(root, sizes=SMALL)
    assert toy.is_toy_dataset_complete(root, SMALL)


@pytest.mark.parametrize("damage", ["no_marker", "old_version", "missing_file"])
def test_incomplete_or_outdated_root_is_replaced(tmp_path, damage):
    root = toy.generate_toy_dataset(str(tmp_path / "toy_sem_seg"), sizes=SMALL)
    reference = _all_files(root)
    if damage == "no_marker":
        os.remove(os.path.join(root, "VERSION"))
    elif damage == "old_version":
        with open(os.path.join(root, "VERSION"), "w") as f:
            f.write('{"version": 0}')
    else:
        os.remove(os.path.join(root, "labels", "val", "val_00002.png"))
    assert not toy.is_toy_dataset_complete(root, SMALL)
    toy.generate_toy_dataset(root, sizes=SMALL)
    assert _all_files(root) == reference
    assert sorted(os.listdir(tmp_path)) == ["toy_sem_seg"]  # no temp folders left


def test_concurrent_generation(tmp_path):
    root = str(tmp_path / "toy_sem_seg")
    errors = []

    def work():
        try:
            toy.generate_toy_dataset(root, sizes=SMALL)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert toy.is_toy_dataset_complete(root, SMALL)
    assert sorted(os.listdir(tmp_path)) == ["toy_sem_seg"]


def test_losing_the_rename_race_keeps_the_winner(tmp_path):
    root = toy.generate_toy_dataset(str(tmp_path / "toy_sem_seg"), sizes=SMALL)
    reference = _all_files(root)
    other = toy.generate_toy_dataset(str(tmp_path / "other" / "toy_sem_seg"), sizes=SMALL)
    toy._move_into_place(other, root, SMALL, toy.IMAGE_SIZE)  # root complete: nothing replaced
    assert _all_files(root) == reference and os.path.isdir(other)
