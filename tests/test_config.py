"""mta_clip/config.py: renamed keys are errors naming the new key; setup_cfg's order of merges."""

import os

import pytest

from mta_clip.config import RENAMED_KEYS, choice, setup_cfg
from tests.conftest import ROOT

TOY = os.path.join(ROOT, "configs", "toy", "mtaclip_toy.yaml")


def _yaml_setting(full_key: str, value: str) -> str:
    """``A.B.C`` -> nested YAML lines setting ``C`` to ``value``."""
    parts = full_key.split(".")
    lines = [f"{'  ' * i}{p}:" for i, p in enumerate(parts[:-1])]
    return "\n".join(lines + [f"{'  ' * (len(parts) - 1)}{parts[-1]}: {value}"]) + "\n"


RENAMED = sorted((old, new if isinstance(new, str) else new[0]) for old, new in RENAMED_KEYS.items())


@pytest.mark.parametrize("old,new", RENAMED)
def test_old_key_in_a_yaml_file_names_the_file_and_the_new_key(tmp_path, old, new):
    path = tmp_path / "old.yaml"
    path.write_text(f"_BASE_: {TOY}\n" + _yaml_setting(old, "True"))
    with pytest.raises(KeyError) as e:
        setup_cfg(str(path))
    assert str(path) in str(e.value) and old in str(e.value) and f"renamed to {new}" in str(e.value)


@pytest.mark.parametrize("old,new", RENAMED)
def test_old_key_as_an_override_names_the_new_key(old, new):
    with pytest.raises(KeyError, match=f"{old} was renamed to {new}"):
        setup_cfg(TOY, [old, "True"])


def test_new_keys_exist_and_old_ones_are_gone():
    cfg = setup_cfg(TOY)
    for old, new in RENAMED:
        node = cfg
        for part in new.split("."):
            assert part in node, new
            node = node[part]
        parent = cfg
        for part in old.split(".")[:-1]:
            parent = parent[part]
        assert old.split(".")[-1] not in parent, old
    assert cfg.clone().key_is_renamed("MODEL.CLIP.CHECKPOINT")  # survives clone()


def test_removed_switch_says_what_to_write_instead():
    with pytest.raises(KeyError, match="renamed to MODEL.META_ARCHITECTURE.*SemanticMask2Former"):
        setup_cfg(TOY, ["MODEL.MTA_CLIP.ENABLED", "False"])


def test_choice_is_case_insensitive_maps_names_and_names_the_key():
    assert choice(("mixneg", "separateneg"), "MixNeg", "MODEL.MTA_CLIP.NEGATIVES") == "mixneg"
    assert choice({"a": len, "b": abs}, "B", "K") is abs
    with pytest.raises(ValueError, match=r"MODEL.X: got 'c', expected one of \['a', 'b'\]"):
        choice({"a": len, "b": abs}, "c", "MODEL.X")


def test_file_then_overrides_and_no_cuda_falls_back_to_cpu(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(f"_BASE_: {TOY}\nSOLVER:\n  MAX_ITER: 7\nMODEL:\n  DEVICE: cuda\n")
    cfg = setup_cfg(str(path), ["SOLVER.MAX_ITER", "9"])
    assert cfg.SOLVER.MAX_ITER == 9 and not cfg.is_frozen()
    import torch

    assert cfg.MODEL.DEVICE == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises((KeyError, AssertionError), match="NOT_A_KEY"):  # yacs asserts for overrides
        setup_cfg(TOY, ["MODEL.NOT_A_KEY", "1"])
