"""Shared fixtures and helpers: a tiny random CLIP file, open_clip references, small model configs and
random toy weights built from the toy YAMLs."""

import importlib.util
import os
import warnings

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOY_BASELINE_CONFIG = os.path.join(ROOT, "configs", "toy", "mask2former_toy.yaml")
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


def open_clip_reference(path: str):
    """open_clip's own loader of an OpenAI CLIP file (independent of our reader), fp32, eval mode."""
    import open_clip

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return open_clip.load_openai_model(path, precision="fp32", device="cpu").eval()


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
    from mta_clip.config import setup_cfg

    return setup_cfg(os.path.join(ROOT, "configs", "toy", name), ["MODEL.DEVICE", "cpu", *opts])


def save_random_toy_weights(folder, seed: int) -> str:
    """Saves a toy baseline (``TOY_BASELINE_CONFIG``) initialized after ``torch.manual_seed(seed)``
    as the checkpoint ``<folder>/toy.pth`` (``{"model": state_dict}``); returns its path."""
    from mta_clip.predictor import Predictor

    torch.manual_seed(seed)
    predictor = Predictor(TOY_BASELINE_CONFIG, weights="", device="cpu")
    path = os.path.join(str(folder), "toy.pth")
    torch.save({"model": predictor.model.state_dict()}, path)
    return path


def graph_recording_backend():
    """A ``torch.compile`` backend (AOTAutograd, graphs run as they are) that keeps the text of every
    FX graph it is given: returns ``(backend, {"forward": [...], "backward": [...]})``."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    graphs = {"forward": [], "backward": []}

    def keep(kind):
        def compiler(gm, example_inputs):
            graphs[kind].append(str(gm.graph))
            return make_boxed_func(gm.forward)

        return compiler

    return aot_autograd(fw_compiler=keep("forward"), bw_compiler=keep("backward")), graphs


@pytest.fixture(scope="module")
def restore_loggers():
    """Entry points (train_net.main) give the project's loggers file handlers and stop their
    propagation (Detectron2's setup_logger); later tests that capture logs need them back."""
    import logging

    names = ("mta_clip", "fvcore", "detectron2", "d2")
    saved = {n: (logging.getLogger(n).propagate, list(logging.getLogger(n).handlers)) for n in names}
    yield
    for n, (propagate, handlers) in saved.items():
        logger = logging.getLogger(n)
        for h in logger.handlers:
            if h not in handlers:
                logger.removeHandler(h)
        logger.propagate = propagate
