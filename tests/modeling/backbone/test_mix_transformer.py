"""MixTransformer (MiT, Table 3 left) against transformers' SegformerModel with the same random weights,
and the official mit_b4.pth layout (names and shapes reconstructed from NVlabs/SegFormer's architecture)."""

import re

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import BACKBONE_REGISTRY, build_backbone
from transformers import SegformerConfig, SegformerForImageClassification, SegformerModel
from transformers.conversion_mapping import get_checkpoint_conversion_mapping

from mta_clip.config import add_mtaclip_config
from mta_clip.modeling.backbone.mix_transformer import MixTransformer, mit_official_state_dict

# A reduced MiT: B4's heads and reduction ratios, small widths and depths.
DIMS, DEPTHS, HEADS, SR = [8, 16, 40, 64], [1, 2, 2, 1], [1, 2, 5, 8], [8, 4, 2, 1]
STAGES = ["res2", "res3", "res4", "res5"]


def _hf_config():
    return SegformerConfig(
        num_channels=3,
        num_encoder_blocks=4,
        depths=DEPTHS,
        sr_ratios=SR,
        hidden_sizes=DIMS,
        patch_sizes=[7, 3, 3, 3],
        strides=[4, 2, 2, 2],
        num_attention_heads=HEADS,
        mlp_ratios=[4] * 4,
        hidden_act="gelu",
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        drop_path_rate=0.0,
        num_labels=10,
    )


def _official_eps(model):
    """The official MiT's block and stage LayerNorms use eps 1e-6 (transformers: 1e-5 everywhere)."""
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.LayerNorm) and re.search(r"(layernorm_(before|after)|stages\.\d\.layer_norm)$", name):
            m.eps = 1e-6


@pytest.fixture(scope="module")
def hf_model():
    torch.manual_seed(0)
    ref = SegformerModel(_hf_config()).eval()
    _official_eps(ref)
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0.0, 0.2)
    return ref


def _hub_layout(v5_state_dict):
    """The layout of the Hugging Face hub files (transformers < 5 names). Checked below against
    transformers' own renaming of those names to its current modules."""
    out = {}
    for k, v in v5_state_dict.items():
        k = re.sub(r"^stages\.(\d)\.patch_embeddings\.", r"encoder.patch_embeddings.\1.", k)
        k = re.sub(r"^stages\.(\d)\.blocks\.", r"encoder.block.\1.", k)
        k = re.sub(r"^stages\.(\d)\.layer_norm\.", r"encoder.layer_norm.\1.", k)
        for new, old in [
            ("attention.q_proj", "attention.self.query"),
            ("attention.k_proj", "attention.self.key"),
            ("attention.v_proj", "attention.self.value"),
            ("attention.sequence_reduction.sequence_reduction", "attention.self.sr"),
            ("attention.sequence_reduction.layer_norm", "attention.self.layer_norm"),
            ("attention.o_proj", "attention.output.dense"),
            ("mlp.fc1", "mlp.dense1"),
            ("mlp.fc2", "mlp.dense2"),
            ("layernorm_before", "layer_norm_1"),
            ("layernorm_after", "layer_norm_2"),
        ]:
            k = k.replace(new, old)
        out[k] = v
    return out


def test_registered():
    assert BACKBONE_REGISTRY.get("MixTransformer") is MixTransformer


def test_hub_layout_is_what_transformers_reads(hf_model):
    renames = get_checkpoint_conversion_mapping("SegformerModel")
    mapped = set()
    for key in _hub_layout(hf_model.state_dict()):
        for r in renames:
            for src, dst in zip(r.source_patterns, r.target_patterns):
                key = re.sub(src, dst, key)
        mapped.add(key)
    assert mapped == set(hf_model.state_dict())


@pytest.mark.parametrize("layout", ["transformers_v5", "hub", "hub_classifier"])
def test_stage_outputs_equal_transformers(hf_model, layout):
    sd = hf_model.state_dict()
    if layout == "hub":
        sd = _hub_layout(sd)
    elif layout == "hub_classifier":  # SegformerForImageClassification file: "segformer." prefix + classifier
        sd = {"segformer." + k: v for k, v in _hub_layout(sd).items()}
        sd.update({"classifier.weight": torch.zeros(10, 64), "classifier.bias": torch.zeros(10)})
    ours = MixTransformer(embed_dims=DIMS, depths=DEPTHS, num_heads=HEADS, sr_ratios=SR, weights=sd).eval()
    x = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        got = ours(x)
        expected = hf_model(x, output_hidden_states=True).hidden_states
    for name, exp, stride in zip(STAGES, expected, [4, 8, 16, 32]):
        assert got[name].shape == exp.shape == (2, DIMS[STAGES.index(name)], 96 // stride, 128 // stride)
        torch.testing.assert_close(got[name], exp, rtol=1e-5, atol=1e-5)
        assert exp.abs().mean() > 0.05


def test_classification_model_state_dict_converts():
    """transformers >= 5 SegformerForImageClassification().state_dict(): prefix and classifier handled."""
    torch.manual_seed(1)
    ref = SegformerForImageClassification(_hf_config())
    converted = mit_official_state_dict(ref.state_dict())
    assert "head.weight" in converted and converted["block3.1.attn.kv.weight"].shape == (80, 40)
    torch.testing.assert_close(
        converted["block3.1.attn.kv.weight"][40:], ref.segformer.stages[2].blocks[1].attention.v_proj.weight
    )


def _official_mit_b4_layout():
    """Names and shapes of SegFormer's ImageNet mit_b4.pth: MixVisionTransformer(embed_dims
    [64, 128, 320, 512], depths [3, 8, 27, 3], sr_ratios [8, 4, 2, 1], qkv_bias) + a 1000-class head."""
    dims, depths, sr = [64, 128, 320, 512], [3, 8, 27, 3], [8, 4, 2, 1]
    shapes = {}
    for s in range(4):
        c, c_in, k = dims[s], 3 if s == 0 else dims[s - 1], 7 if s == 0 else 3
        shapes[f"patch_embed{s + 1}.proj.weight"] = (c, c_in, k, k)
        for name in (
            "patch_embed{}.proj.bias",
            "patch_embed{}.norm.weight",
            "patch_embed{}.norm.bias",
            "norm{}.weight",
            "norm{}.bias",
        ):
            shapes[name.format(s + 1)] = (c,)
        for j in range(depths[s]):
            p = f"block{s + 1}.{j}."
            shapes.update(
                {
                    p + "norm1.weight": (c,),
                    p + "norm1.bias": (c,),
                    p + "norm2.weight": (c,),
                    p + "norm2.bias": (c,),
                    p + "attn.q.weight": (c, c),
                    p + "attn.q.bias": (c,),
                    p + "attn.kv.weight": (2 * c, c),
                    p + "attn.kv.bias": (2 * c,),
                    p + "attn.proj.weight": (c, c),
                    p + "attn.proj.bias": (c,),
                    p + "mlp.fc1.weight": (4 * c, c),
                    p + "mlp.fc1.bias": (4 * c,),
                    p + "mlp.dwconv.dwconv.weight": (4 * c, 1, 3, 3),
                    p + "mlp.dwconv.dwconv.bias": (4 * c,),
                    p + "mlp.fc2.weight": (c, 4 * c),
                    p + "mlp.fc2.bias": (c,),
                }
            )
            if sr[s] > 1:
                shapes.update(
                    {
                        p + "attn.sr.weight": (c, c, sr[s], sr[s]),
                        p + "attn.sr.bias": (c,),
                        p + "attn.norm.weight": (c,),
                        p + "attn.norm.bias": (c,),
                    }
                )
    shapes.update({"head.weight": (1000, 512), "head.bias": (1000,)})
    return shapes


def test_official_mit_b4_file_loads_with_default_config(tmp_path):
    shapes = _official_mit_b4_layout()
    torch.manual_seed(2)
    sd = {k: torch.randn(v) * 0.02 for k, v in shapes.items()}
    torch.save(sd, tmp_path / "mit_b4.pth")
    cfg = get_cfg()
    add_mtaclip_config(cfg)
    cfg.MODEL.BACKBONE.NAME = "MixTransformer"
    cfg.MODEL.MIT.WEIGHTS = str(tmp_path / "mit_b4.pth")
    bb = build_backbone(cfg)  # load_backbone_weights raises on any missing / unexpected / mis-shaped tensor
    own = {k: tuple(v.shape) for k, v in bb.state_dict().items()}
    assert own == {k: v for k, v in shapes.items() if not k.startswith("head.")}
    assert sum(p.numel() for p in bb.parameters()) == 60_842_688  # MiT-B4 encoder: 60.8M (SegFormer Tab. 1)
    torch.testing.assert_close(bb.block3[26].attn.kv.weight, sd["block3.26.attn.kv.weight"])
    assert {k: (v.channels, v.stride) for k, v in bb.output_shape().items()} == {
        "res2": (64, 4),
        "res3": (128, 8),
        "res4": (320, 16),
        "res5": (512, 32),
    }
    rates = [b.drop_path.drop_prob for s in range(1, 5) for b in getattr(bb, f"block{s}")]
    torch.testing.assert_close(torch.tensor(rates), torch.linspace(0, 0.1, 41))

    # a B2 file (depths 3, 4, 6, 3) under the B4 config: missing blocks named
    torch.save(
        {k: v for k, v in sd.items() if not re.match(r"block2\.[4-7]\.|block3\.([6-9]|\d\d)\.", k)},
        tmp_path / "mit_b2_like.pth",
    )
    cfg.MODEL.MIT.WEIGHTS = str(tmp_path / "mit_b2_like.pth")
    cfg.MODEL.MIT.OUT_FEATURES = ["res2", "res3"]  # stages 1-2 only: a cheaper build, the same check
    with pytest.raises(ValueError, match=r"missing tensors \(block2\.4\."):
        build_backbone(cfg)
    cfg.MODEL.MIT.WEIGHTS = str(tmp_path / "no_such_mit_b4.pth")
    with pytest.raises(FileNotFoundError, match=r"MODEL\.MIT\.WEIGHTS.*mit_b4\.pth.*docs/backbones\.md"):
        build_backbone(cfg)


def test_fewer_stages_and_errors(hf_model):
    ours = MixTransformer(
        embed_dims=DIMS, depths=DEPTHS, out_features=["res2", "res3"], weights=hf_model.state_dict()
    ).eval()
    assert not hasattr(ours, "block3") and set(ours(torch.randn(1, 3, 64, 64))) == {"res2", "res3"}
    with pytest.raises(ValueError, match="MODEL.MIT.DEPTHS"):
        MixTransformer(depths=[3, 8, 27])
    with pytest.raises(ValueError, match="not divisible"):
        MixTransformer(embed_dims=[64, 128, 321, 512])
