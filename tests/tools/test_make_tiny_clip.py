"""tools/make_tiny_clip.py: files laid out like OpenAI's, read back by our reader."""

import os
import warnings
import zipfile

import pytest
import torch

from mta_clip.modeling.clip.weights import read_clip_weights
from tests.conftest import load_tool


@pytest.fixture(scope="module")
def tool():
    return load_tool("make_tiny_clip")


def _jit_state_dict(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(path, map_location="cpu").state_dict()


def test_torchscript_archive_like_openai(tool, tmp_path):
    path = tool.make_tiny_clip(str(tmp_path / "RN50.pt"), "RN50", "torchscript")
    names = zipfile.ZipFile(path).namelist()
    assert any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names)
    sd = _jit_state_dict(path)
    for key in (
        "visual.conv1.weight",
        "visual.layer4.2.bn3.running_var",
        "visual.attnpool.q_proj.weight",
        "transformer.resblocks.1.attn.in_proj_weight",
        "token_embedding.weight",
        "positional_embedding",
        "ln_final.weight",
        "text_projection",
        "logit_scale",
    ):
        assert key in sd, key
    assert sd["visual.conv1.weight"].dtype == torch.float16  # OpenAI's fp16 storage
    assert sd["transformer.resblocks.0.mlp.c_fc.weight"].dtype == torch.float16
    assert sd["text_projection"].dtype == torch.float16
    assert sd["ln_final.weight"].dtype == torch.float32
    assert sd["visual.bn1.running_var"].dtype == torch.float32
    assert set(sd) == set(tool.make_tiny_clip_state_dict("RN50", seed=0))


def test_cli(tmp_path, tool):
    out = str(tmp_path / "sub" / "tiny_vit.pt")
    path = tool.main(
        ["--arch", "ViT-B-16", "--format", "state_dict", "--output", out, "--vision-layers", "4", "--embed-dim", "16"]
    )
    assert path == out
    sd, arch = read_clip_weights(out)
    assert arch.is_vit and arch.vision_layers == 4 and arch.embed_dim == 16
    assert sd["visual.conv1.weight"].dtype == torch.float32
    assert os.listdir(tmp_path / "sub") == ["tiny_vit.pt"]
    with pytest.raises(SystemExit):
        tool.main(["--arch", "ViT-L-14", "--output", out])
