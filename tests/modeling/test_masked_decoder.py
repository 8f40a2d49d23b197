"""Masked-attention decoder: shapes, attention masks from the previous prediction."""

import math

import pytest
import torch
import torch.nn.functional as F

from mta_clip.modeling.masked_decoder import MaskedDecoder

B, HID, N, C, HEADS = 2, 32, 6, 5, 4


def _decoder(layers=4, **kw):
    torch.manual_seed(0)
    return MaskedDecoder(
        HID,
        num_classes=C,
        hidden_dim=HID,
        num_queries=N,
        nheads=HEADS,
        dim_feedforward=64,
        dec_layers=layers,
        pre_norm=False,
        mask_dim=HID,
        enforce_input_project=False,
        **kw,
    ).eval()


def _inputs():
    g = torch.Generator().manual_seed(3)
    sizes = [(2, 3), (4, 6), (8, 12)]
    return [torch.randn(B, HID, h, w, generator=g) for h, w in sizes], torch.randn(B, HID, 16, 24, generator=g)


def test_output_shapes_and_deep_supervision():
    dec = _decoder()
    mem, mf = _inputs()
    out = dec(mem, mf)
    assert out["pred_logits"].shape == (B, N, C + 1)
    assert out["pred_masks"].shape == (B, N, 16, 24)
    assert len(out["aux_outputs"]) == 4 == dec.num_supervised_predictions - 1  # 5 predictions, the last is the output
    no_init_dec = _decoder(supervise_initial_prediction=False)
    no_init = no_init_dec(mem, mf)
    assert len(no_init["aux_outputs"]) == 3 == no_init_dec.num_supervised_predictions - 1
    with pytest.raises(ValueError, match="no prediction to supervise"):
        _decoder(layers=0, supervise_initial_prediction=False)
    torch.testing.assert_close(no_init["pred_masks"], out["pred_masks"])


def test_attention_masks_follow_the_previous_prediction():
    dec = _decoder()
    mem, mf = _inputs()
    seen = []
    for layer in dec.transformer_cross_attention_layers:
        layer.register_forward_hook(
            lambda mod, args, kwargs, out: seen.append(kwargs["memory_mask"].clone()), with_kwargs=True
        )
    out = dec(mem, mf)
    preds = out["aux_outputs"] + [{k: out[k] for k in ("pred_logits", "pred_masks")}]
    sizes = [m.shape[-2:] for m in mem]
    assert len(seen) == 4
    for i, mask in enumerate(seen):
        prev = preds[i]["pred_masks"]  # prediction before layer i
        level = i % 3
        expected = F.interpolate(prev, size=sizes[level], mode="bilinear", align_corners=False).sigmoid() < 0.5
        expected = expected.flatten(2)
        expected[expected.all(-1)] = False  # fully masked rows attend everywhere
        assert torch.equal(mask, expected), f"layer {i}"
        assert mask.shape == (B, N, sizes[level][0] * sizes[level][1])  # shared by all heads


def test_fully_masked_queries_are_unmasked():
    dec = _decoder(layers=1)
    mem, mf = _inputs()
    with torch.no_grad():
        dec.mask_embed.layers[-1].weight.zero_()
        dec.mask_embed.layers[-1].bias.fill_(-1.0)
    seen = []
    dec.transformer_cross_attention_layers[0].register_forward_hook(
        lambda mod, args, kwargs, out: seen.append(kwargs["memory_mask"]), with_kwargs=True
    )
    out = dec(mem, mf.abs() + 1)  # every mask logit < 0: sigmoid < 0.5 everywhere
    assert not seen[0].any()
    assert torch.isfinite(out["pred_logits"]).all()


def test_attention_equals_torch_multihead_attention_with_per_head_masks():
    """Our SDPA attention with a (B, Q, S) mask = nn.MultiheadAttention with the mask copied per head."""
    from mta_clip.modeling.masked_decoder import multihead_attention

    torch.manual_seed(0)
    mha = torch.nn.MultiheadAttention(HID, HEADS).eval()
    q, k, v = torch.randn(7, B, HID), torch.randn(11, B, HID), torch.randn(11, B, HID)
    blocked = torch.rand(B, 7, 11) < 0.4
    blocked[:, :, 0] = False  # every query keeps one key
    expected = mha(q, k, v, attn_mask=blocked.unsqueeze(1).expand(-1, HEADS, -1, -1).flatten(0, 1))[0]
    torch.testing.assert_close(multihead_attention(mha, q, k, v, blocked), expected, rtol=1e-5, atol=1e-6)
    self_blocked = torch.rand(7, 7) < 0.4
    self_blocked.fill_diagonal_(False)
    expected = mha(q, q, q, attn_mask=self_blocked)[0]
    torch.testing.assert_close(multihead_attention(mha, q, q, q, self_blocked), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(multihead_attention(mha, q, k, v), mha(q, k, v)[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("init", ["xavier_uniform", "xavier_normal"])
def test_layer_init_is_xavier_uniform_or_the_authors_normal(init):
    """Mask2Former: xavier_uniform_ on every matrix of the attention / FFN layers; the MTA-CLIP
    authors' head: xavier_normal_ on every parameter of more than one dimension of its transformer
    decoder. Checked on the statistics Glorot's formulas give: std sqrt(2 / (fan_in + fan_out)),
    uniform bound sqrt(6 / (fan_in + fan_out))."""
    torch.manual_seed(0)
    dec = MaskedDecoder(
        256,
        num_classes=C,
        hidden_dim=256,
        num_queries=N,
        nheads=8,
        dim_feedforward=2048,
        dec_layers=2,
        pre_norm=False,
        mask_dim=256,
        enforce_input_project=False,
        layer_init=init,
    )
    mats = [
        p
        for layers in (
            dec.transformer_self_attention_layers,
            dec.transformer_cross_attention_layers,
            dec.transformer_ffn_layers,
        )
        for p in layers.parameters()
        if p.dim() > 1
    ]
    assert len(mats) == 2 * (2 + 2 + 2)  # in_proj + out_proj per attention, 2 linears per FFN
    for p in mats:
        fan_out, fan_in = p.shape
        std, bound = math.sqrt(2.0 / (fan_in + fan_out)), math.sqrt(6.0 / (fan_in + fan_out))
        assert p.std().item() == pytest.approx(std, rel=0.03)
        beyond = (p.abs() > bound).float().mean().item()  # normal: P(|z| > sqrt(3)) = 8.3 %
        assert (beyond == pytest.approx(0.0833, abs=0.01)) if init == "xavier_normal" else beyond == 0.0
    with pytest.raises(ValueError, match="DECODER_LAYER_INIT"):
        _decoder(layer_init="kaiming")
