"""Prefix sharing (mta_clip.modeling.clip.shared_prefix) against the full (K*C, L) computation."""

import logging

import pytest
import torch

from tests.modeling.clip.conftest import CLASSES, MIXED, make_encoder, tokens_per_block


@pytest.mark.parametrize("num_prompts,n_ctx,suffix", [(1, 4, "."), (3, 8, ""), (3, 8, "."), (2, 0, "")])
def test_shared_prefix_equals_full(clip, num_prompts, n_ctx, suffix):
    torch.manual_seed(0)
    enc = make_encoder(
        clip, class_names=MIXED, num_prompts=num_prompts, n_ctx=n_ctx, class_slot=6, class_suffix=suffix
    ).train()
    assert set(enc.prompt_learner.class_lengths.tolist()) == ({1, 2, 3} if suffix == "" else {2, 3, 4})
    ctx = enc.prompt_learner.ctx
    full, shared = enc.encode(shared_prefix=False), enc.encode()
    assert shared.shape == full.shape == (num_prompts, len(MIXED), 32)
    torch.testing.assert_close(shared, full, rtol=0, atol=1e-5)
    assert full.abs().max() > 0.5  # not a trivially small output
    g = torch.randn_like(full)
    if n_ctx:
        (grad_full,) = torch.autograd.grad((full * g).sum(), ctx)
        (grad_shared,) = torch.autograd.grad((shared * g).sum(), ctx)
        assert grad_full.abs().max() > 0.1
        torch.testing.assert_close(grad_shared, grad_full, rtol=0, atol=1e-5)
    # another class list (one length only) rebuilds the packed layout
    enc.set_class_names(["sky", "wall", "cat"])
    torch.testing.assert_close(enc.encode(), enc.encode(shared_prefix=False), rtol=0, atol=1e-5)


def test_shared_prefix_exact_in_float64_and_weight_gradients(clip):
    """In float64 the two paths agree to rounding (~1e-14): the same function, not an approximation;
    with trainable text weights their gradients agree too."""
    torch.manual_seed(1)
    enc = make_encoder(clip, class_names=MIXED, num_prompts=3, n_ctx=8, freeze=False).train()
    enc.encode()  # packed layout built before the dtype change
    enc.double()
    full, shared = enc.encode(shared_prefix=False), enc.encode()
    assert shared.dtype == torch.float64
    torch.testing.assert_close(shared, full, rtol=0, atol=1e-10)
    g = torch.randn_like(full)
    params = [
        enc.prompt_learner.ctx,
        enc.transformer.resblocks[0].attn.in_proj_weight,
        enc.transformer.resblocks[0].attn.out_proj.bias,
        enc.transformer.resblocks[-1].mlp.c_fc.weight,
        enc.positional_embedding,
        enc.token_embedding.weight,
    ]
    for a, b in zip(torch.autograd.grad((full * g).sum(), params), torch.autograd.grad((shared * g).sum(), params)):
        assert a.abs().max() > 1e-3
        torch.testing.assert_close(b, a, rtol=0, atol=1e-10)


def test_shared_prefix_processes_fewer_positions(clip):
    """Every block sees K * (1 + n_ctx + sum_c (m_c + 1)) positions instead of K * C * L; the last
    block's MLP only the K * C end tokens, the rows read after it."""
    enc = make_encoder(clip, class_names=MIXED, num_prompts=3, n_ctx=8, class_slot=5).train()
    counts = tokens_per_block(enc)
    enc()  # the default (training) path
    lengths = enc.prompt_learner.class_lengths.tolist()
    shared = 3 * (1 + 8 + sum(m + 1 for m in lengths))
    full = 3 * len(MIXED) * 13
    expected = [shared] * (2 * 3 - 1) + [3 * len(MIXED)]  # ln_1 / mlp of 3 blocks
    assert counts == expected and shared < 0.45 * full
    counts.clear()
    enc.eval()
    enc()  # the cached eval computation too
    assert counts == expected
    counts.clear()
    enc.encode(shared_prefix=False)
    assert counts == [full] * (2 * 3)  # the count can tell the paths apart


def test_shared_prefix_falls_back_for_other_blocks(clip, caplog):
    enc = make_encoder(clip, num_prompts=2, n_ctx=4).train()
    counts = tokens_per_block(enc)
    enc.transformer.resblocks[1].ls_2 = torch.nn.Dropout(0.0)  # not a block structure the shared path knows
    with caplog.at_level(logging.WARNING, logger="mta_clip.modeling.clip.text_encoder"):
        out = enc.encode()
        enc.encode()
    assert [r.getMessage() for r in caplog.records if "prefix sharing off" in r.getMessage()] == [
        "PromptTextEncoder: prefix sharing off, running full prompts: "
        "block 1.ls_2 is Dropout, not Identity / LayerScale"
    ]  # logged once
    assert counts[0] == 2 * len(CLASSES) * 9
    assert torch.equal(out, enc.encode(shared_prefix=False))
