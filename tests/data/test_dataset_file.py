"""Dataset files (YAML/JSON, safe-loaded), --dataset-file / --import, NUM_CLASSES from the training data."""

import argparse
import json
import os
import shutil

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

from mta_clip.config import setup_cfg
from mta_clip.data.dataset_file import add_dataset_arguments, read_dataset_file, register_dataset_file
from mta_clip.engine import Trainer
from tests.conftest import ROOT, TOY_BASELINE_CONFIG, load_tool

EXAMPLE = os.path.join(ROOT, "datasets", "example_own_data", "example_own_data.yaml")


def _write(path, text):
    path.write_text(text)
    return str(path)


def test_example_file_registers_both_splits():
    names = register_dataset_file(EXAMPLE)
    assert names == ["example_own_data_train", "example_own_data_val"]
    meta = MetadataCatalog.get("example_own_data_train")
    assert meta.stuff_classes == ["background", "disc", "bar"]
    assert meta.prompt_classes == ["background", "circle", "stripe"]
    assert [list(c) for c in meta.stuff_colors] == [[90, 90, 90], [220, 40, 40], [40, 60, 220]]
    assert meta.ignore_label == 255 and meta.dataset_file == EXAMPLE
    records = DatasetCatalog.get("example_own_data_train")
    folder = os.path.join(os.path.dirname(EXAMPLE), "images", "train")
    assert len(records) == len(os.listdir(folder)) == 8
    assert all(r["file_name"].startswith(folder) and r["sem_seg_file_name"].endswith(".png") for r in records)
    assert register_dataset_file(EXAMPLE) == names  # the same file again: nothing changes


def test_json_file_with_top_level_folders(tmp_path):
    data = tmp_path / "d"
    shutil.copytree(os.path.join(ROOT, "datasets", "example_own_data", "images", "val"), data / "im")
    shutil.copytree(os.path.join(ROOT, "datasets", "example_own_data", "labels", "val"), data / "lb")
    path = _write(
        data / "set.json",
        json.dumps({"name": "json_set_test", "classes": ["a", "b", "c"], "images": "im", "labels": "lb"}),
    )
    assert register_dataset_file(path) == ["json_set_test"]
    assert len(DatasetCatalog.get("json_set_test")) == 2
    assert MetadataCatalog.get("json_set_test").ignore_label == 255


@pytest.mark.parametrize(
    "text,match",
    [
        ("name: x\nclasses: [a]\nsplits: {t: {images: i, labels: l}}\ncolours: []\n", "unknown key.*colours"),
        ("name: x\nsplits: {t: {images: i, labels: l}}\n", "missing key 'classes'"),
        ("name: x\nclasses: a\nimages: i\nlabels: l\n", "'classes' must be a non-empty list"),
        ("name: x\nclasses: [a, b]\nprompt_names: [a]\nimages: i\nlabels: l\n", "1 prompt names for 2 classes"),
        ("name: my data\nclasses: [a]\nimages: i\nlabels: l\n", "'name' must be"),
        ("name: x\nclasses: [a]\n", "give either 'splits'"),
        ("name: x\nclasses: [a]\nimages: i\nlabels: l\nignore_label: 0\n", "ignore_label 0 is a class index"),
        ("[1, 2", "not valid YAML"),
    ],
)
def test_bad_dataset_files_name_the_file_and_key(tmp_path, text, match):
    path = _write(tmp_path / "bad.yaml", text)
    with pytest.raises(ValueError, match=match) as info:
        register_dataset_file(path)
    assert "bad.yaml" in str(info.value)


def test_python_tags_are_refused_and_not_run(tmp_path):
    marker = tmp_path / "ran"
    path = _write(
        tmp_path / "evil.yaml",
        f"name: !!python/object/apply:os.system ['touch {marker}']\nclasses: [a]\nimages: i\nlabels: l\n",
    )
    with pytest.raises(ValueError, match=r"evil.yaml, line 1: the tag !!python/object/apply:os.system is not allowed"):
        read_dataset_file(path)
    assert not marker.exists()


def test_num_classes_follows_the_training_data():
    opts = ["DATASETS.TRAIN", "('example_own_data_train',)", "DATASETS.TEST", "('example_own_data_val',)"]
    cfg = setup_cfg(TOY_BASELINE_CONFIG, opts, dataset_files=[EXAMPLE])
    assert cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES == 3 and cfg.DATASETS.FILES == [EXAMPLE]
    assert setup_cfg(TOY_BASELINE_CONFIG).MODEL.SEM_SEG_HEAD.NUM_CLASSES == 6  # the toy data
    with pytest.raises(ValueError, match="NUM_CLASSES is 6 but training dataset 'example_own_data_train' has 3"):
        setup_cfg(TOY_BASELINE_CONFIG, opts + ["MODEL.SEM_SEG_HEAD.NUM_CLASSES", "6"], dataset_files=[EXAMPLE])
    with pytest.raises(ValueError, match="NUM_CLASSES is 0 .* no dataset of DATASETS.TRAIN"):
        setup_cfg(TOY_BASELINE_CONFIG, ["DATASETS.TRAIN", "('nowhere_registered',)"])


def test_config_key_lists_dataset_files(tmp_path):
    """A YAML config that names its dataset file is self-contained."""
    cfg_path = _write(
        tmp_path / "mine.yaml",
        f"_BASE_: {TOY_BASELINE_CONFIG}\nDATASETS:\n  FILES: ['{EXAMPLE}']\n"
        "  TRAIN: ('example_own_data_train',)\n  TEST: ('example_own_data_val',)\n",
    )
    if "example_own_data_val" in DatasetCatalog.list():
        DatasetCatalog.remove("example_own_data_val")
    cfg = setup_cfg(cfg_path)
    assert cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES == 3 and "example_own_data_val" in DatasetCatalog.list()


def test_evaluating_on_another_class_count_is_an_error(tmp_path):
    register_dataset_file(EXAMPLE)
    cfg = setup_cfg(TOY_BASELINE_CONFIG, ["OUTPUT_DIR", str(tmp_path)])
    with pytest.raises(ValueError, match="model with 6 classes .* 'example_own_data_val', which has 3 classes"):
        Trainer.build_evaluator(cfg, "example_own_data_val")


def test_import_registration_module(tmp_path):
    code = _write(
        tmp_path / "reg.py",
        "from mta_clip import register_sem_seg_dataset\n"
        f"register_sem_seg_dataset('imported_set_test', r'{os.path.dirname(EXAMPLE)}/images/val', "
        f"r'{os.path.dirname(EXAMPLE)}/labels/val', ['x', 'y', 'z'], overwrite=True)\n",
    )
    cfg = setup_cfg(TOY_BASELINE_CONFIG, ["DATASETS.TRAIN", "('imported_set_test',)"], imports=[code])
    assert cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES == 3
    with pytest.raises(ImportError, match="--import no_such_module_here"):
        setup_cfg(TOY_BASELINE_CONFIG, imports=["no_such_module_here"])


def test_dataset_arguments_are_repeatable_lists_of_the_scripts():
    parser = argparse.ArgumentParser()
    add_dataset_arguments(parser)
    args = parser.parse_args(["--dataset-file", "a.yaml", "--import", "pkg.mod", "--dataset-file", "b.json"])
    assert args.dataset_file == ["a.yaml", "b.json"] and args.imports == ["pkg.mod"]
    assert vars(parser.parse_args([])) == {"dataset_file": [], "imports": []}
    # the three scripts that register datasets take the same options from the one helper
    for script in ("train_net.py", "demo/demo.py", "tools/validate_dataset.py"):
        with open(os.path.join(ROOT, script)) as f:
            text = f.read()
        assert "add_dataset_arguments(parser)" in text and '"--dataset-file"' not in text, script


def test_validate_dataset_takes_dataset_files(capsys):
    tool = load_tool("validate_dataset")
    assert tool.main(["--dataset-file", EXAMPLE]) == 0
    out = capsys.readouterr().out
    assert "Dataset example_own_data_train: 8 images" in out and "Dataset example_own_data_val: 2 images" in out
