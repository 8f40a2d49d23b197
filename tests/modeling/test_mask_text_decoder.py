"""Mask-Text Decoder: query layout, attention variants, similarity (Eqs. 1-6)."""

import pytest
import torch
import torch.nn.functional as F

from mta_clip.modeling.mask_text_decoder import MaskTextDecoder
from mta_clip.modeling.masked_decoder import MaskedDecoder

B, HID, N, C, K, D = 2, 32, 5, 4, 3, 24


def _base_kwargs():
    return dict(
        num_classes=C,
        hidden_dim=HID,
        num_queries=N,
        nheads=4,
        dim_feedforward=64,
        dec_layers=3,
        pre_norm=False,
        mask_dim=HID,
        enforce_input_project=False,
    )


def _decoder(**kw):
    torch.manual_seed(0)
    args = dict(num_text_queries=K * (C + 1), num_prompts=K, text_dim=D)
    args.update(kw)
    return MaskTextDecoder(HID, **args, **_base_kwargs()).eval()


def _inputs(seed=1):
    g = torch.Generator().manual_seed(seed)
    memories = [torch.randn(B, HID, s, s + 1, generator=g) for s in (2, 4, 8)]
    mask_features = torch.randn(B, HID, 16, 18, generator=g)
    text = torch.randn(K, C + 1, D, generator=g)
    return memories, mask_features, text


def test_output_shapes_and_supervised_predictions():
    dec = _decoder(supervise_initial_prediction=False).train()  # dropout is 0: train mode is deterministic
    mem, mf, text = _inputs()
    out = dec(mem, mf, text_embeddings=text)
    assert out["pred_logits"].shape == (B, N, C + 1)
    assert out["pred_masks"].shape == (B, N, 16, 18)
    assert out["pred_sim"].shape == (B, N, K, C + 1)
    # 3 layers, the prediction before the first layer is not supervised: 2 aux outputs
    assert len(out["aux_outputs"]) == 2
    assert all("pred_sim" in a for a in out["aux_outputs"])


def test_similarity_only_where_a_loss_reads_it():
    mem, mf, text = _inputs()
    assert "pred_sim" not in _decoder()(mem, mf, text_embeddings=text)  # eval: inference never reads it
    dec = _decoder(supervise_initial_prediction=False).train()
    seen = []
    original = dec._similarity
    dec._similarity = lambda *a: seen.append(1) or original(*a)
    dec(mem, mf, text_embeddings=text)
    assert len(seen) == dec.num_layers  # not for the unsupervised initial prediction


def _mask_outputs(dec, mem, mf, text):
    out = dec(mem, mf, text_embeddings=text)
    return torch.cat([out["pred_logits"].flatten(), out["pred_masks"].flatten()])


def test_separate_attention_isolates_mask_queries_from_text():
    dec = _decoder(joint_self_attention=False).train()  # train mode runs the text queries (dropout is 0)
    mem, mf, text = _inputs()
    a = _mask_outputs(dec, mem, mf, text)
    b = _mask_outputs(dec, mem, mf, text + torch.randn_like(text))
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_joint_attention_lets_text_change_mask_queries():
    dec = _decoder(joint_self_attention=True).train()
    mem, mf, text = _inputs()
    a = _mask_outputs(dec, mem, mf, text)
    b = _mask_outputs(dec, mem, mf, text + torch.randn_like(text))
    assert (a - b).abs().max() > 1e-3


def _all_mask_predictions(out):
    preds = out["aux_outputs"] + [out]
    return torch.cat([torch.cat([p["pred_logits"].flatten(), p["pred_masks"].flatten()]) for p in preds])


def _rows_into(module):
    """Records the number of query rows each call of ``module`` receives."""
    rows = []
    module.register_forward_hook(lambda mod, args, out: rows.append(out.shape[0]))
    return rows


@pytest.mark.parametrize("joint", [True, False])
def test_inference_skips_unread_text_work_and_gives_the_same_predictions(joint):
    """Eval skips what no output reads: the text rows of the last layer's self-attention and FFN
    (joint attention) or every text query (separate attention). Train mode (dropout 0) computes
    all of it; every supervised prediction must agree."""
    dec = _decoder(joint_self_attention=joint)
    mem, mf, text = _inputs()
    t = dec.num_text_queries
    last_ffn = _rows_into(dec.transformer_ffn_layers[-1])
    first_cross = _rows_into(dec.transformer_cross_attention_layers[0])
    reference = _all_mask_predictions(dec.train()(mem, mf, text_embeddings=text))
    assert last_ffn == [t + N] and first_cross == [t + N]
    fast = _all_mask_predictions(dec.eval()(mem, mf, text_embeddings=text))
    assert last_ffn[1] == N
    assert first_cross[1] == (t + N if joint else N)
    torch.testing.assert_close(fast, reference, rtol=0, atol=1e-5)


def test_text_enhanced_only_skips_the_last_text_rows_in_training_too():
    dec = _decoder(with_similarity=False).train()
    mem, mf, text = _inputs()
    last_ffn = _rows_into(dec.transformer_ffn_layers[-1])
    dec(mem, mf, text_embeddings=text)
    assert last_ffn == [N]


def test_separate_attention_mask_blocks_exactly_the_cross_pairs():
    dec = _decoder(joint_self_attention=False)
    t = dec.num_text_queries
    m = dec._self_attention_mask(t + N, "cpu")
    assert m[:t, :t].sum() == 0 and m[t:, t:].sum() == 0
    assert m[:t, t:].all() and m[t:, :t].all()


def test_without_text_queries_equals_masked_decoder():
    torch.manual_seed(0)
    base = MaskedDecoder(HID, **_base_kwargs()).eval()
    mta = MaskTextDecoder(HID, num_text_queries=0, num_prompts=K, text_dim=D, **_base_kwargs()).eval()
    mta.load_state_dict(base.state_dict(), strict=True)
    mem, mf, _ = _inputs()
    a, b = base(mem, mf), mta(mem, mf)
    torch.testing.assert_close(a["pred_logits"], b["pred_logits"], rtol=0, atol=0)
    torch.testing.assert_close(a["pred_masks"], b["pred_masks"], rtol=0, atol=0)


def test_cosine_similarity_with_zero_gamma_is_cos_to_clip_text():
    """gamma = 0 makes t' = t0 exactly (Eq. 5), so S = cos(Linear(m), t0) (Eq. 6, tau = 1)."""
    dec = _decoder(return_projection="gamma", similarity="cosine").train()
    with torch.no_grad():
        dec.text_gamma.zero_()
    captured = []
    dec.decoder_norm.register_forward_hook(lambda mod, inp, out: captured.append(out))
    mem, mf, text = _inputs()
    out = dec(mem, mf, text_embeddings=text)
    last = captured[-1].transpose(0, 1)[:, dec.num_text_queries :]  # (B, N, hidden) normalized mask queries
    m_clip = last @ dec.mask_to_clip.weight.T + dec.mask_to_clip.bias
    expected = torch.empty(B, N, K, C + 1)
    for b in range(B):
        for i in range(N):
            for k in range(K):
                for c in range(C + 1):
                    expected[b, i, k, c] = F.cosine_similarity(m_clip[b, i], text[k, c], dim=0)
    torch.testing.assert_close(out["pred_sim"], expected, rtol=1e-5, atol=1e-5)


def test_dot_similarity_with_temperature():
    dec = _decoder(return_projection="mlp", similarity="dot", temperature=0.07).train()
    mem, mf, text = _inputs()
    s1 = dec(mem, mf, text_embeddings=text)["pred_sim"]
    dec2 = _decoder(return_projection="mlp", similarity="dot", temperature=0.14).train()
    s2 = dec2(mem, mf, text_embeddings=text)["pred_sim"]
    torch.testing.assert_close(s1, 2 * s2, rtol=1e-4, atol=1e-4)


def test_text_attention_mask_variants_and_text_masks_not_differentiable():
    mem, mf, text = _inputs()
    text = text.clone().requires_grad_(True)
    dec = _decoder(text_attention_mask="predicted")
    dec.train()
    out = dec(mem, mf, text_embeddings=text)
    out["pred_masks"].sum().backward()
    assert text.grad is not None  # text queries influence mask queries through self-attention
    dec_none = _decoder(text_attention_mask="none")
    assert dec_none(mem, mf, text_embeddings=text.detach())["pred_masks"].shape == (B, N, 16, 18)


def test_wrong_text_shape_is_a_clear_error():
    dec = _decoder()
    mem, mf, _ = _inputs()
    with pytest.raises(ValueError, match="text_embeddings must be"):
        dec(mem, mf, text_embeddings=torch.randn(K, C, D))
    with pytest.raises(ValueError, match="needs text_embeddings"):
        dec(mem, mf)


@pytest.mark.parametrize("arg,value", [("similarity", "l2"), ("text_reduction", "conv"), ("return_projection", "x")])
def test_bad_choice_names_the_option(arg, value):
    with pytest.raises(ValueError, match=f"MODEL.MTA_CLIP.{arg.upper()}: got {value!r}"):
        _decoder(**{arg: value})


def test_choices_are_case_insensitive_and_build_the_same_modules():
    from mta_clip.modeling.masked_decoder import MLP

    upper = _decoder(text_reduction="MLP", return_projection="MLP", similarity="Dot")
    lower = _decoder(text_reduction="mlp", return_projection="mlp", similarity="dot")
    assert isinstance(upper.text_proj, MLP) and isinstance(upper.text_to_clip, MLP) and upper.similarity == "dot"
    assert [n for n, _ in upper.named_parameters()] == [n for n, _ in lower.named_parameters()]
    gamma = _decoder(return_projection="GAMMA")
    assert hasattr(gamma, "text_gamma") and not isinstance(gamma.text_to_clip, MLP)


def test_text_attention_masks_come_from_the_text_queries_mask_predictions():
    """Text rows of each cross-attention mask = sigmoid(mask_embed(t) . resize(mask_features)) < 0.5,
    computed here the Mask2Former way (full-resolution mask, then resized)."""
    dec = _decoder(text_attention_mask="predicted")
    mem, mf, text = _inputs()
    normed, masks_seen = [], []
    dec.decoder_norm.register_forward_hook(lambda mod, inp, out: normed.append(out.detach()))
    for layer in dec.transformer_cross_attention_layers:
        layer.register_forward_hook(
            lambda mod, args, kwargs, out: masks_seen.append(kwargs["memory_mask"]), with_kwargs=True
        )
    dec(mem, mf, text_embeddings=text)
    t = dec.num_text_queries
    for i, mask in enumerate(masks_seen):
        text_q = normed[i].transpose(0, 1)[:, :t]
        full = torch.einsum("bqc,bchw->bqhw", dec.mask_embed(text_q), mf)
        size = mem[i % 3].shape[-2:]
        logits = F.interpolate(full, size=size, mode="bilinear", align_corners=False).flatten(2)
        expected = logits.sigmoid() < 0.5
        got = mask[:, :t]
        expected[expected.all(-1)] = False
        confident = logits.abs() > 1e-4
        assert torch.equal(got[confident], expected[confident]), f"layer {i}"


def _saved_bytes_and_grads(dec, mem, mf, text):
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = dec(mem, mf, text_embeddings=text)
    sims = [p["pred_sim"] for p in out["aux_outputs"] + [out]]
    g = torch.Generator().manual_seed(3)
    loss = sum((s * torch.randn(s.shape, generator=g)).sum() for s in sims)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in dec.named_parameters() if p.grad is not None}
    return sum(storages.values()), torch.cat([s.flatten() for s in sims]), grads


def test_checkpointed_similarity_same_values_and_gradients_less_memory():
    mem, mf, text = _inputs()
    plain = _decoder(recompute_similarity=False).train()
    ckpt = _decoder(recompute_similarity=True).train()
    ckpt.load_state_dict(plain.state_dict())
    bytes_plain, sim_plain, grads_plain = _saved_bytes_and_grads(plain, mem, mf, text)
    bytes_ckpt, sim_ckpt, grads_ckpt = _saved_bytes_and_grads(ckpt, mem, mf, text)
    torch.testing.assert_close(sim_ckpt, sim_plain, rtol=0, atol=0)
    assert grads_ckpt.keys() == grads_plain.keys() and "text_to_clip.weight" in grads_ckpt
    for name, grad in grads_plain.items():
        torch.testing.assert_close(grads_ckpt[name], grad, rtol=0, atol=1e-6, msg=name)
    # per supervised prediction: t' and its normalized copy, (B, K*C', D) each, are no longer kept
    per_layer = 2 * B * K * (C + 1) * D * 4
    assert bytes_plain - bytes_ckpt >= _supervised_predictions(plain) * per_layer


def _supervised_predictions(dec):
    return dec.num_layers + int(dec.supervise_initial_prediction)
