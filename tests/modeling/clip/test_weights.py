"""CLIP weight-file reading (mta_clip.modeling.clip.weights) on tiny random CLIP files."""

import logging
import os
import warnings

import pytest
import torch

from mta_clip.modeling.clip.weights import (
    CLIPArch,
    clip_weights_and_arch,
    load_clip_weights,
    read_clip_weights,
    resize_grid_pos_embed,
)
from tests.conftest import load_tool


@pytest.fixture(scope="module")
def tool():
    return load_tool("make_tiny_clip")


@pytest.fixture(scope="module")
def files(tool, tmp_path_factory):
    d = tmp_path_factory.mktemp("clip")
    return {
        "ts": tool.make_tiny_clip(str(d / "RN50.pt"), "RN50", "torchscript"),
        "sd": tool.make_tiny_clip(str(d / "rn50_sd.pt"), "RN50", "state_dict"),
        "vit": tool.make_tiny_clip(str(d / "ViT-B-16.pt"), "ViT-B-16", "torchscript"),
        "expected": tool.make_tiny_clip_state_dict("RN50", seed=0),
    }


def test_read_torchscript_matches_open_clip_reader(files):
    """Our reader and open_clip's OpenAI loader see the same fp32 weights in the archive."""
    import open_clip

    sd, arch = read_clip_weights(files["ts"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        ref = open_clip.load_openai_model(files["ts"], precision="fp32", device="cpu").state_dict()
    assert set(sd) == set(ref)
    for k, v in sd.items():
        if v.is_floating_point():
            assert v.dtype == torch.float32, k
        assert torch.equal(v, ref[k].to(v.dtype)), k
    # values are the tool's weights rounded through fp16 where OpenAI stores fp16
    exp = files["expected"]
    assert torch.equal(sd["visual.conv1.weight"], exp["visual.conv1.weight"].half().float())
    assert not torch.equal(sd["visual.conv1.weight"], exp["visual.conv1.weight"])
    assert torch.equal(sd["ln_final.bias"], exp["ln_final.bias"])


def test_read_plain_state_dict_is_exact(files, tmp_path):
    exp = files["expected"]
    sd, arch = read_clip_weights(files["sd"])
    assert set(sd) == set(exp)
    assert all(torch.equal(sd[k], exp[k]) for k in exp)
    # wrapped {"state_dict": {"module.<key>": ...}} and fp16 tensors are read the same way
    wrapped = {
        "state_dict": {"module." + k: (v.half() if v.is_floating_point() else v) for k, v in exp.items()},
        "epoch": 3,
    }
    path = str(tmp_path / "wrapped.pt")
    torch.save(wrapped, path)
    sd2, arch2 = read_clip_weights(path)
    assert arch2 == arch
    assert sd2["text_projection"].dtype == torch.float32
    assert torch.equal(sd2["text_projection"], exp["text_projection"].half().float())


def test_arch_from_files_and_official_configs(files, tool, tmp_path):
    _, rn50 = read_clip_weights(files["ts"])
    assert rn50 == CLIPArch(32, (3, 4, 6, 3), 8, None, 224, 77, 49408, 64, 1, 2)
    assert not rn50.is_vit and rn50.vision_heads == 4 and rn50.official_name is None
    _, vit = read_clip_weights(files["vit"])
    assert vit.is_vit and vit.vision_layers == 12 and vit.vision_patch_size == 16 and vit.vision_width == 64
    assert vit.vision_image_size == 224 and vit.vision_heads == 1
    rn101 = tool.make_tiny_clip(str(tmp_path / "rn101.pt"), "RN101", "state_dict", text_width=128, text_layers=1)
    _, a = read_clip_weights(rn101)
    assert a.vision_layers == (3, 4, 23, 3) and a.text_heads == 2 and a.text_layers == 1

    off = CLIPArch.from_official("RN50")
    assert off.vision_layers == (3, 4, 6, 3) and off.vision_width == 64 and off.embed_dim == 1024
    assert off.official_name == "RN50" and off.vision_heads == 32
    assert CLIPArch.from_official("RN101").vision_layers == (3, 4, 23, 3)
    assert CLIPArch.from_official("RN101").embed_dim == 512
    v = CLIPArch.from_official("ViT-B-16")
    assert (v.vision_width, v.vision_layers, v.vision_patch_size, v.embed_dim, v.vision_heads) == (768, 12, 16, 512, 12)
    with pytest.raises(ValueError, match="ViT-L-14"):
        CLIPArch.from_official("ViT-L-14")


def test_missing_file_names_path_and_official_files_without_download(tmp_path, monkeypatch):
    import open_clip

    def no_network(*args, **kwargs):
        raise AssertionError("download attempted")

    monkeypatch.setattr(open_clip, "download_pretrained_from_url", no_network)
    path = str(tmp_path / "nowhere" / "RN50.pt")
    with pytest.raises(FileNotFoundError) as e:
        read_clip_weights(path, "RN50")
    msg = str(e.value)
    assert path in msg and "RN50.pt" in msg and "RN101.pt" in msg and "ViT-B-16.pt" in msg
    assert "https://openaipublic.azureedge.net/clip/models/" in msg and msg.count("https://") == 1
    with pytest.raises(FileNotFoundError):
        clip_weights_and_arch(path, "RN50")
    monkeypatch.chdir(tmp_path)  # a relative path is shown resolved
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "pretrained" / "RN50.pt")):
        read_clip_weights("pretrained/RN50.pt", "RN50")


def test_download_only_when_asked(tmp_path, monkeypatch, tool):
    import open_clip

    calls = []

    def fake_download(url, cache_dir=None):
        calls.append(url)
        target = os.path.join(cache_dir, os.path.basename(url))
        tool.make_tiny_clip(target, "RN50", "torchscript")
        return target

    monkeypatch.setattr(open_clip, "download_pretrained_from_url", fake_download)
    path = str(tmp_path / "pretrained" / "RN50.pt")
    sd, arch = read_clip_weights(path, "RN50", allow_download=True)
    assert len(calls) == 1 and calls[0].endswith("/RN50.pt") and os.path.isfile(path)
    assert os.listdir(tmp_path / "pretrained") == ["RN50.pt"]  # temporary folder removed
    read_clip_weights(path, "RN50", allow_download=True)  # present: no second download
    assert len(calls) == 1
    with pytest.raises(ValueError, match="RN50.pt"):
        read_clip_weights(str(tmp_path / "mine.pt"), "RN50", allow_download=True)


def test_unreadable_and_foreign_files(tmp_path):
    bad = tmp_path / "RN50.pt"
    bad.write_bytes(b"not a weights file at all")
    with pytest.raises(ValueError) as e:
        read_clip_weights(str(bad))
    assert str(bad) in str(e.value) and "ViT-B-16.pt" in str(e.value)
    foreign = str(tmp_path / "foreign.pt")
    torch.save({"backbone.weight": torch.zeros(2)}, foreign)
    with pytest.raises(ValueError, match="token_embedding.weight"):
        read_clip_weights(foreign)


def test_empty_weights_file_is_random_with_warning(caplog):
    with caplog.at_level(logging.WARNING):
        weights, arch = clip_weights_and_arch("", "RN101", user="test backbone")
    assert weights is None and arch == CLIPArch.from_official("RN101")
    assert any("MODEL.CLIP.WEIGHTS is empty" in r.message and "test backbone" in r.message for r in caplog.records)


def test_resize_grid_pos_embed():
    pos = torch.randn(1 + 3 * 4, 5)
    assert resize_grid_pos_embed(pos, (3, 4), (3, 4)) is pos
    out = resize_grid_pos_embed(pos, (3, 4), (6, 8))
    assert out.shape == (1 + 48, 5) and torch.equal(out[0], pos[0])
    # row-major layout: a grid that varies only with the row stays constant along each new row
    rows = torch.arange(3.0).view(3, 1, 1).expand(3, 4, 2).reshape(12, 2)
    grid = resize_grid_pos_embed(torch.cat([torch.zeros(1, 2), rows]), (3, 4), (5, 7))[1:].reshape(5, 7, 2)
    assert torch.allclose(grid, grid[:, :1].expand_as(grid), atol=1e-6)
    assert not torch.allclose(grid[0], grid[-1])
    # constant grids stay constant (bicubic weights sum to one)
    const = resize_grid_pos_embed(torch.full((1 + 9, 3), 2.5), (3, 3), (2, 5))
    assert torch.allclose(const, torch.full_like(const, 2.5), atol=1e-6)
    with pytest.raises(ValueError):
        resize_grid_pos_embed(pos, (4, 4), (2, 2))


def test_load_clip_weights_reports_keys(caplog):
    module = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 3))
    sd = {"0.weight": torch.ones(2, 2), "0.bias": torch.zeros(2), "extra.weight": torch.zeros(1)}
    with caplog.at_level(logging.INFO):
        missing, unexpected = load_clip_weights(module, sd, "Tiny", "file.pt", new_prefixes=("1.bias",))
    assert sorted(missing) == ["1.bias", "1.weight"] and unexpected == ["extra.weight"]
    warn = [r.message for r in caplog.records if r.levelno == logging.WARNING]
    assert any("1.weight" in m and "1.bias" not in m for m in warn)
    assert any("extra.weight" in m for m in warn)
    assert torch.equal(module[0].weight, torch.ones(2, 2))
    with pytest.raises(ValueError, match="file.pt"):
        load_clip_weights(module, {"0.weight": torch.ones(3, 3)}, "Tiny", "file.pt")
