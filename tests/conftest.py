"""Shared fixtures: a tiny random CLIP file and small model configs built from the toy YAMLs."""
import importlib.util
import os

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
torch.set_num_threads(min(2, torch.get_num_threads()))


def load_tool(name: str):
    """Imports ``tools/<name>.py`` (tools are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "tools", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def tiny_clip_file(tmp_path_factory):
    """A tiny random RN50-layout CLIP in OpenAI's TorchScript format."""
    path = tmp_path_factory.mktemp("clip") / "tiny_RN50.pt"
    return load_tool("make_tiny_clip").make_tiny_clip(str(path), "RN50", "torchscript")


@pytest.fixture(scope="session", autouse=True)
def _datasets_root(tmp_path_factory):
    """Generated datasets go to a temporary DETECTRON2_DATASETS for the whole session."""
    root = os.environ.get("MTA_CLIP_TEST_DATASETS") or str(tmp_path_factory.mktemp("datasets"))
    old = os.environ.get("DETECTRON2_DATASETS")
    os.environ["DETECTRON2_DATASETS"] = root
    yield root
    if old is None:
        os.environ.pop("DETECTRON2_DATASETS", None)
    else:
        os.environ["DETECTRON2_DATASETS"] = old


def toy_cfg(name: str = "mtaclip_toy.yaml", opts=()):
    """A config from ``configs/toy`` on the CPU, with extra ``opts``."""
    from mta_clip.engine import setup_cfg

    return setup_cfg(os.path.join(ROOT, "configs", "toy", name), ["MODEL.DEVICE", "cpu", *opts])
