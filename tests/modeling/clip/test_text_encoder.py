"""PromptTextEncoder: exactness against open_clip's encode_text, gradients, caching, config,
recomputation and compute precision."""

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import MetadataCatalog

from mta_clip.config import add_mtaclip_config
from mta_clip.modeling.clip.prompt_learner import clip_tokenizer
from mta_clip.modeling.clip.text_encoder import PromptTextEncoder
from tests.modeling.clip.conftest import CLASSES, MIXED, make_encoder, tokens_per_block


@pytest.mark.parametrize("template", ["a photo of a", "a bad photo of the"])
def test_equals_open_clip_encode_text(clip, reference, template):
    """K=1, contexts = the template's token embeddings: identical to encode_text('template class.')."""
    n_ctx = len(clip_tokenizer().encode(template))
    enc = make_encoder(clip, num_prompts=1, n_ctx=n_ctx, class_slot=5, class_suffix=".", context_init=template).eval()
    ours = enc()
    tokens = clip_tokenizer()([f"{template} {c}." for c in CLASSES])  # the real tokenized strings
    with torch.no_grad():
        expected = reference.encode_text(tokens)
    assert ours.shape == (1, len(CLASSES), 32)
    torch.testing.assert_close(ours[0], expected, rtol=0, atol=1e-5)
    # the comparison can fail: without the period the features differ
    enc.prompt_learner.class_suffix = ""
    enc.set_class_names(CLASSES)
    assert (enc()[0] - expected).abs().max() > 1e-3


def test_k_prompts_train_gradients_reach_contexts_only(clip):
    enc = make_encoder(clip, num_prompts=3, n_ctx=8).train()
    assert enc.num_prompts == 3 and enc.embed_dim == 32 and enc.num_classes == len(CLASSES)
    out = enc()
    assert out.shape == (3, len(CLASSES), 32) and out.dtype == torch.float32 and out.requires_grad
    assert (out[0] - out[1]).abs().max() > 1e-4  # different random contexts
    out.square().sum().backward()
    assert enc.prompt_learner.ctx.grad is not None and enc.prompt_learner.ctx.grad.abs().sum() > 0
    frozen = [p for n, p in enc.named_parameters() if not n.startswith("prompt_learner.")]
    assert frozen and all(not p.requires_grad and p.grad is None for p in frozen)
    assert [n for n, p in enc.named_parameters() if p.requires_grad] == ["prompt_learner.ctx"]
    # frozen weights equal the CLIP file's; names are OpenAI's text keys
    weights, _ = clip
    for name, value in enc.state_dict().items():
        if name != "prompt_learner.ctx":
            assert torch.equal(value, weights[name]), name
    trainable = make_encoder(clip, num_prompts=1, freeze=False)
    assert trainable.transformer.resblocks[0].attn.in_proj_weight.requires_grad


def test_random_context_init_std(clip):
    weights, arch = clip
    enc = PromptTextEncoder(class_names=CLASSES, arch=arch, weights=None, num_prompts=3, n_ctx=8, context_init_std=1.0)
    ctx = enc.prompt_learner.ctx.detach()
    assert ctx.shape == (3, 8, 128) and ctx.abs().max() <= 2.0 and 0.75 < ctx.std() < 1.0  # trunc. at 2 std: 0.88
    small = PromptTextEncoder(class_names=CLASSES, arch=arch, num_prompts=3, n_ctx=8, context_init_std=0.02)
    assert small.prompt_learner.ctx.abs().max() <= 0.04 and 0.015 < small.prompt_learner.ctx.std() < 0.02


def test_eval_cache_and_invalidation(clip):
    enc = make_encoder(clip, num_prompts=2, n_ctx=4)
    calls = []
    enc.ln_final.register_forward_hook(lambda *args: calls.append(1))  # once per text-transformer run
    enc.eval()
    first = enc()
    assert enc() is first and enc() is first and len(calls) == 1  # no transformer run per image
    assert not first.requires_grad

    enc.train()
    out = enc()
    assert len(calls) == 2 and out.requires_grad
    enc()
    assert len(calls) == 3  # training: recomputed every call

    enc.eval()
    enc()
    assert len(calls) == 4
    # state-dict load invalidates (through a parent module, as a full-model checkpoint does)
    parent = torch.nn.ModuleDict({"text": enc})
    sd = {k: v.clone() for k, v in parent.state_dict().items()}
    sd["text.prompt_learner.ctx"] = torch.randn_like(sd["text.prompt_learner.ctx"])
    parent.load_state_dict(sd)
    reloaded = enc()
    assert len(calls) == 5 and (reloaded - first).abs().max() > 1e-4
    torch.testing.assert_close(reloaded, enc.encode().detach())
    enc()
    assert len(calls) == 6  # encode() above ran the transformer once; the cache is still used

    # class-name change invalidates and changes C
    enc.set_class_names(["wall", "floor"])
    names_out = enc()
    assert names_out.shape == (2, 2, 32) and len(calls) == 7
    # an in-place change of the contexts (e.g. an optimizer step in eval mode) invalidates too
    with torch.no_grad():
        enc.prompt_learner.ctx.add_(torch.randn_like(enc.prompt_learner.ctx))
    assert (enc() - names_out).abs().max() > 1e-4 and len(calls) == 8


def test_config_build_metadata_and_errors(ckpt, reference):
    cfg = get_cfg()
    add_mtaclip_config(cfg)
    assert (cfg.MODEL.CLIP.TEXT.NUM_PROMPTS, cfg.MODEL.CLIP.TEXT.N_CTX, cfg.MODEL.CLIP.TEXT.CLASS_SLOT) == (3, 8, 5)
    MetadataCatalog.get("_clip_test_prompt").set(
        stuff_classes=["potted plants", "cats"], prompt_classes=["plant", "cat"]
    )
    cfg.DATASETS.TRAIN = ("_clip_test_prompt",)
    cfg.MODEL.CLIP.WEIGHTS = ckpt
    cfg.MODEL.CLIP.TEXT.NUM_PROMPTS = 1
    cfg.MODEL.CLIP.TEXT.N_CTX = 4
    cfg.MODEL.CLIP.TEXT.CONTEXT_INIT = "a photo of a"
    enc = PromptTextEncoder(cfg).eval()
    assert enc.class_names == ["plant", "cat"]
    with torch.no_grad():
        expected = reference.encode_text(clip_tokenizer()(["a photo of a plant", "a photo of a cat"]))
    torch.testing.assert_close(enc()[0], expected, rtol=0, atol=1e-5)

    assert PromptTextEncoder(cfg, ["sky"]).class_names == ["sky"]

    cfg.DATASETS.TRAIN = ("_clip_test_prompt",)
    cfg.MODEL.CLIP.TEXT.N_CTX = 8
    with pytest.raises(ValueError, match="N_CTX"):
        PromptTextEncoder(cfg)
    cfg.MODEL.CLIP.TEXT.CONTEXT_INIT = ""
    cfg.MODEL.CLIP.TEXT.N_CTX = 75
    with pytest.raises(ValueError, match="context length"):
        PromptTextEncoder(cfg)


def test_recompute_blocks(ckpt, clip):
    cfg = get_cfg()
    add_mtaclip_config(cfg)
    assert cfg.MODEL.CLIP.TEXT.RECOMPUTE_BLOCKS is False
    cfg.MODEL.CLIP.WEIGHTS = ckpt
    cfg.MODEL.CLIP.TEXT.RECOMPUTE_BLOCKS = True
    enc = PromptTextEncoder(cfg, MIXED).train()
    assert enc.transformer.grad_checkpointing
    plain = make_encoder(clip, class_names=MIXED).train()
    plain.load_state_dict(enc.state_dict())
    assert not plain.transformer.grad_checkpointing
    counts = tokens_per_block(enc)
    g = torch.randn(3, len(MIXED), 32)
    for shared_prefix in (True, False):
        counts.clear()
        out = enc.encode(shared_prefix=shared_prefix)
        forward_calls = len(counts)
        (grad,) = torch.autograd.grad((out * g).sum(), enc.prompt_learner.ctx)
        assert len(counts) >= forward_calls + 3  # every block ran (at least its ln_1) again in backward
        ref = plain.encode(shared_prefix=shared_prefix)
        (ref_grad,) = torch.autograd.grad((ref * g).sum(), plain.prompt_learner.ctx)
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
        torch.testing.assert_close(grad, ref_grad, rtol=0, atol=1e-6)
    with torch.no_grad():  # nothing to recompute without gradients
        counts.clear()
        enc.encode()
        assert len(counts) == 2 * 3


def _block_output_dtypes(enc):
    dtypes = []
    enc.transformer.resblocks[0].mlp.c_fc.register_forward_hook(lambda m, a, out: dtypes.append(out.dtype))
    return dtypes


@pytest.mark.parametrize("shared_prefix", [True, False])
def test_bfloat16_compute_is_close_to_float32_and_returns_float32(clip, shared_prefix):
    ref = make_encoder(clip, class_names=MIXED).train()
    low = make_encoder(clip, class_names=MIXED, compute_dtype="bfloat16").train()
    low.load_state_dict(ref.state_dict())
    dtypes = _block_output_dtypes(low)
    g = torch.randn(3, len(MIXED), 32)
    out = low.encode(shared_prefix=shared_prefix)
    assert dtypes == [torch.bfloat16] and out.dtype == torch.float32  # the contexts dtype
    (grad,) = torch.autograd.grad((out * g).sum(), low.prompt_learner.ctx)
    expected = ref.encode(shared_prefix=shared_prefix)
    (ref_grad,) = torch.autograd.grad((expected * g).sum(), ref.prompt_learner.ctx)
    assert grad.dtype == torch.float32
    cos = torch.nn.functional.cosine_similarity
    assert cos(out.flatten(0, 1), expected.flatten(0, 1), dim=-1).min() > 0.999
    assert cos(grad.flatten(), ref_grad.flatten(), dim=0) > 0.99
    assert not torch.equal(out, expected)  # it did run in lower precision


def test_float32_compute_stays_float32_inside_autocast(clip):
    enc = make_encoder(clip, class_names=MIXED).eval()
    dtypes = _block_output_dtypes(enc)
    with torch.no_grad():
        plain = enc.encode()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            inside = enc.encode()
    assert dtypes == [torch.float32, torch.float32]
    torch.testing.assert_close(inside, plain, rtol=0, atol=0)


def test_compute_dtype_config_and_bad_value(ckpt, clip):
    cfg = get_cfg()
    add_mtaclip_config(cfg)
    assert cfg.MODEL.CLIP.TEXT.COMPUTE_DTYPE == "float32"
    cfg.MODEL.CLIP.WEIGHTS = ckpt
    cfg.MODEL.CLIP.TEXT.COMPUTE_DTYPE = "bfloat16"
    assert PromptTextEncoder(cfg, MIXED).compute_dtype == "bfloat16"
    with pytest.raises(ValueError, match=r"MODEL.CLIP.TEXT.COMPUTE_DTYPE must be one of .*'fp16'"):
        make_encoder(clip, compute_dtype="fp16")


@pytest.mark.parametrize("shared_prefix", [True, False])
def test_frozen_low_precision_stores_block_matrices_with_the_same_results(clip, shared_prefix):
    """Frozen + bfloat16 keeps the blocks' matrices in bfloat16; trainable text weights stay
    float32 under the same autocast. Both compute the same values (autocast casts the float32
    matrices to the very same bfloat16 numbers)."""
    frozen = make_encoder(clip, class_names=MIXED, compute_dtype="bfloat16").train()
    trainable = make_encoder(clip, class_names=MIXED, compute_dtype="bfloat16", freeze=False).train()
    trainable.load_state_dict(frozen.state_dict())
    block = frozen.transformer.resblocks[0]
    assert block.attn.in_proj_weight.dtype == torch.bfloat16 and block.mlp.c_fc.weight.dtype == torch.bfloat16
    assert block.ln_1.weight.dtype == torch.float32 and frozen.token_embedding.weight.dtype == torch.float32
    assert trainable.transformer.resblocks[0].mlp.c_fc.weight.dtype == torch.float32
    g = torch.randn(3, len(MIXED), 32)
    grads = []
    for enc in (frozen, trainable):
        out = enc.encode(shared_prefix=shared_prefix)
        grads.append(torch.autograd.grad((out * g).sum(), enc.prompt_learner.ctx)[0])
        grads.append(out.detach())
    torch.testing.assert_close(grads[1], grads[3], rtol=0, atol=1e-6)
    torch.testing.assert_close(grads[0], grads[2], rtol=0, atol=1e-6)
    with torch.no_grad():  # eval (cached) path too
        torch.testing.assert_close(frozen.eval()(), trainable.eval()(), rtol=0, atol=1e-6)
    # float32 CLIP weights load into the bfloat16 matrices
    ref = make_encoder(clip, class_names=MIXED)
    frozen.load_state_dict(ref.state_dict())
    assert block.mlp.c_fc.weight.dtype == torch.bfloat16


def test_freeze_by_zero_lr_is_the_authors_clip_scope(clip):
    """The authors freeze the text tower with lr_mult 0 (mmengine custom key), not requires_grad:
    its gradients exist and mmengine's OptimWrapper clips clip_grad_norm_(every optimizer param with
    a grad, 0.01). Ours with FREEZE_BY_ZERO_LR: the same clip factor, and the tower never changes."""
    from mta_clip.solver import _with_full_model_clipping, param_groups

    enc = make_encoder(clip, num_prompts=1, freeze=True, freeze_by_zero_lr=True).train()
    tower = enc.zero_lr_parameters()
    assert tower and all(p.requires_grad and p is not enc.prompt_learner.ctx for p in tower)
    cfg = add_mtaclip_config(get_cfg())
    cfg.SOLVER.BASE_LR, cfg.SOLVER.WEIGHT_DECAY = 1e-3, 0.02
    groups = param_groups(cfg, enc)
    by_name = {g["name"]: g for g in groups}
    assert by_name["prompt_learner.ctx"]["lr"] == 1e-3
    assert all(g["lr"] == 0.0 and g["weight_decay"] == 0.0 for n, g in by_name.items() if n != "prompt_learner.ctx")
    opt = _with_full_model_clipping(torch.optim.AdamW, 0.01)(groups, lr=1e-3)
    enc().pow(2).sum().backward()
    grads = [p.grad.clone() for p in enc.parameters() if p.grad is not None]
    total = torch.sqrt(sum((g.double() ** 2).sum() for g in grads))
    tower_before = [p.detach().clone() for p in tower]
    ctx_grad = enc.prompt_learner.ctx.grad.clone()
    opt.step()
    # mmengine / torch clip_grad_norm_: every gradient times max_norm / (total + 1e-6) when larger
    factor = min(1.0, 0.01 / (float(total) + 1e-6))
    torch.testing.assert_close(enc.prompt_learner.ctx.grad, ctx_grad * factor, rtol=1e-5, atol=1e-12)
    assert all(torch.equal(a, b.detach()) for a, b in zip(tower_before, tower))
    with pytest.raises(ValueError, match="FREEZE_BY_ZERO_LR"):
        make_encoder(clip, num_prompts=1, freeze=False, freeze_by_zero_lr=True)
