"""Frozen CLIP text transformer run on learned prompts: the text queries ``t`` (K, C, D) of MTA-CLIP.

Usage by a meta-architecture::

    encoder = PromptTextEncoder(cfg, class_names)   # or class_names=None: read from dataset metadata
    t = encoder()                                   # (K, C, D) float, D = CLIP embedding width

Training mode runs the text transformer every call with autograd on (its weights have
``requires_grad=False`` when frozen, so only the contexts get gradients). Eval mode computes the
output once under ``no_grad`` and returns the cached tensor (do not modify it in place) until
``train()``/``eval()``, a state-dict load, ``set_class_names`` or an in-place change of the
contexts invalidates it.

The shared-prefix computation that :meth:`PromptTextEncoder.encode` uses by default lives in
``shared_prefix.py``.
"""

import logging
from typing import Dict, List, Optional, Sequence

import torch
from detectron2.config import configurable
from torch import nn

from ...data.class_names import class_names_from_metadata
from .prompt_learner import PromptLearner, clip_tokenizer, tokenize_template
from .shared_prefix import PackedLayout, encode_shared_prefix, packed_layout, prefix_sharing_unsupported
from .weights import CLIPArch, clip_weights_and_arch, load_clip_weights

logger = logging.getLogger(__name__)

__all__ = ["PromptTextEncoder"]

# MODEL.CLIP.TEXT.COMPUTE_DTYPE -> autocast dtype (None: autocast off)
COMPUTE_DTYPES = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}

# OpenAI's key prefixes of the text tower (top level of the CLIP state dict)
TEXT_TOWER_PREFIXES = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.", "text_projection")


class PromptTextEncoder(nn.Module):
    """CLIP text transformer (OpenAI weights, frozen) applied to K learned prompts x C classes.

    Submodule / parameter names equal the text keys of OpenAI's weight files (``token_embedding``,
    ``positional_embedding``, ``transformer.resblocks.*``, ``ln_final``, ``text_projection``); the
    contexts are ``prompt_learner.ctx`` (K, n_ctx, width). Prompt layout: see ``prompt_learner.py``.
    """

    @configurable
    def __init__(
        self,
        *,
        class_names: Sequence[str],
        arch: CLIPArch,
        weights: Optional[Dict[str, torch.Tensor]] = None,
        weights_source: str = "",
        num_prompts: int = 3,
        n_ctx: int = 8,
        class_slot: int = 5,
        class_suffix: str = "",
        context_init: str = "",
        context_init_std: float = 1.0,
        freeze: bool = True,
        recompute_blocks: bool = False,
        compute_dtype: str = "float32",
        freeze_by_zero_lr: bool = False,
    ):
        """
        Args:
            class_names: C class texts put in the class slot.
            arch: CLIP shapes (text tower fields are used).
            weights: CLIP state dict with OpenAI's keys (visual keys are ignored); None = random.
            weights_source: file name for messages.
            num_prompts: K learned context sets.
            n_ctx: learned tokens per set.
            class_slot: positions of the class slot (start, <= class_slot - 2 BPE tokens, end).
            class_suffix: appended to every class name (e.g. "." for CoOp-style prompts).
            context_init: template whose token embeddings initialize every set ("" = random);
                its token count must equal ``n_ctx``.
            context_init_std: std of the random (truncated normal, +-2 std) context init.
            freeze: ``requires_grad=False`` on all text-transformer weights.
            freeze_by_zero_lr: with ``freeze``, keep ``requires_grad`` and freeze by a learning rate
                of 0 instead (``zero_lr_parameters``; the MTA-CLIP authors' mmengine custom key
                ``text_encoder: lr_mult 0``): the tower's gradients are computed and count in the
                full-model gradient-clipping norm.
            recompute_blocks: when gradients are on, recompute every text block's activations in
                backward instead of storing them (less memory, about one more forward pass of time).
            compute_dtype: "float32" (autocast off, also inside an AMP region), "bfloat16" or
                "float16": the text transformer runs under autocast to that dtype (faster, half the
                activations; figures in docs/benchmarks.md); the output has the contexts' dtype.
                With ``freeze`` the blocks' weight matrices are also stored in that dtype.
        """
        super().__init__()
        from open_clip.transformer import QuickGELU, TextTransformer

        if compute_dtype not in COMPUTE_DTYPES:
            raise ValueError(
                f"MODEL.CLIP.TEXT.COMPUTE_DTYPE must be one of {sorted(COMPUTE_DTYPES)}, got {compute_dtype!r}"
            )
        self.compute_dtype = compute_dtype

        seq_len = n_ctx + class_slot
        if seq_len > arch.context_length:
            raise ValueError(
                f"prompt length n_ctx + class_slot = {n_ctx} + {class_slot} exceeds CLIP's context length "
                f"{arch.context_length} (MODEL.CLIP.TEXT.N_CTX / CLASS_SLOT)"
            )
        if arch.vocab_size < clip_tokenizer().vocab_size:
            raise ValueError(
                f"CLIP text vocabulary of {arch.vocab_size} entries is smaller than the BPE tokenizer's "
                f"{clip_tokenizer().vocab_size}"
            )
        tower = TextTransformer(**arch.text_tower_kwargs(), output_dim=arch.embed_dim, act_layer=QuickGELU)
        self.token_embedding = tower.token_embedding
        self.positional_embedding = tower.positional_embedding
        self.transformer = tower.transformer
        self.ln_final = tower.ln_final
        self.text_projection = tower.text_projection
        self.transformer.grad_checkpointing = recompute_blocks  # open_clip's flag, honoured by both paths
        causal = torch.full((seq_len, seq_len), float("-inf")).triu_(1)
        self.register_buffer("attn_mask", causal, persistent=False)
        self._embed_dim = arch.embed_dim

        if weights is not None:
            text = {k: v for k, v in weights.items() if k.startswith(TEXT_TOWER_PREFIXES)}
            load_clip_weights(self, text, "PromptTextEncoder", weights_source or "CLIP weights", ("prompt_learner.",))
        self.freeze = freeze
        if freeze_by_zero_lr and not freeze:
            raise ValueError("MODEL.CLIP.TEXT.FREEZE_BY_ZERO_LR needs MODEL.CLIP.TEXT.FREEZE True")
        self.freeze_by_zero_lr = freeze_by_zero_lr
        if freeze and not freeze_by_zero_lr:
            for p in self._text_parameters():
                p.requires_grad_(False)
            if COMPUTE_DTYPES[compute_dtype] is not None:
                self._store_block_matrices(COMPUTE_DTYPES[compute_dtype])

        init = None
        if context_init:
            ids = tokenize_template(context_init)
            if len(ids) != n_ctx:
                raise ValueError(
                    f"context template {context_init!r} (MODEL.CLIP.TEXT.CONTEXT_INIT) has {len(ids)} tokens "
                    f"but MODEL.CLIP.TEXT.N_CTX is {n_ctx}; set N_CTX to {len(ids)}"
                )
            with torch.no_grad():
                init = self.token_embedding(torch.tensor(ids, dtype=torch.long)).clone()
        self.prompt_learner = PromptLearner(
            num_prompts, n_ctx, arch.text_width, class_slot, class_suffix, context_init_std, init
        )
        self._cache: Optional[torch.Tensor] = None
        self._cache_key = None
        self._layout: Optional[PackedLayout] = None
        self._layout_key = None
        self._fallback_logged = False
        self.set_class_names(class_names)

    @classmethod
    def from_config(cls, cfg, class_names: Optional[Sequence[str]] = None):
        """``class_names=None`` reads them with :func:`class_names_from_metadata`."""
        if class_names is None:
            class_names = class_names_from_metadata(cfg)
        clip = cfg.MODEL.CLIP
        weights, arch = clip_weights_and_arch(clip.WEIGHTS, clip.MODEL_NAME, clip.DOWNLOAD, "PromptTextEncoder")
        t = clip.TEXT
        return dict(
            class_names=list(class_names),
            arch=arch,
            weights=weights,
            weights_source=clip.WEIGHTS,
            num_prompts=t.NUM_PROMPTS,
            n_ctx=t.N_CTX,
            class_slot=t.CLASS_SLOT,
            class_suffix=t.CLASS_SUFFIX,
            context_init=t.CONTEXT_INIT,
            context_init_std=t.CONTEXT_INIT_STD,
            freeze=t.FREEZE,
            recompute_blocks=t.RECOMPUTE_BLOCKS,
            compute_dtype=t.COMPUTE_DTYPE,
            freeze_by_zero_lr=t.FREEZE_BY_ZERO_LR,
        )

    def _store_block_matrices(self, dtype: torch.dtype) -> None:
        """Keeps the frozen blocks' weight matrices in ``dtype``: autocast would cast them to it at
        every call anyway (and keep those copies for backward), so the results are the same with
        half their memory. Embeddings, LayerNorms, biases and the projection stay as they are."""
        for p in self.transformer.resblocks.parameters():
            if p.dim() == 2:  # in_proj, out_proj, c_fc, c_proj weights (LayerNorm and bias params are 1-D)
                p.data = p.data.to(dtype)

    def _text_parameters(self) -> List[nn.Parameter]:
        return [p for n, p in self.named_parameters() if not n.startswith("prompt_learner.")]

    def zero_lr_parameters(self) -> List[nn.Parameter]:
        """Parameters the optimizer must keep at learning rate 0 (and no weight decay): the text
        tower with ``freeze_by_zero_lr``, else none."""
        return self._text_parameters() if self.freeze_by_zero_lr else []

    @property
    def embed_dim(self) -> int:
        """D: width of the output text features."""
        return self._embed_dim

    @property
    def num_prompts(self) -> int:
        """K: number of learned context sets."""
        return self.prompt_learner.num_prompts

    @property
    def num_classes(self) -> int:
        """C: number of class names."""
        return self.prompt_learner.num_classes

    @property
    def class_names(self) -> List[str]:
        return list(self.prompt_learner.class_names)

    def set_class_names(self, class_names: Sequence[str]) -> None:
        """Replaces the C class names (error naming those that do not fit); drops the cache."""
        self.prompt_learner.set_class_names(class_names)
        self.invalidate_cache()

    def invalidate_cache(self) -> None:
        self._cache = None
        self._cache_key = None

    def train(self, mode: bool = True):
        self.invalidate_cache()
        return super().train(mode)

    def _load_from_state_dict(self, *args, **kwargs):
        self.invalidate_cache()
        return super()._load_from_state_dict(*args, **kwargs)

    def encode(self, shared_prefix: bool = True) -> torch.Tensor:
        """Runs the text transformer on all prompts (no cache): (K, C, D).

        ``shared_prefix=True`` computes the shared [SOT, ctx_k] positions once per prompt and each
        class only up to its end token (same result; see the module docstring);
        ``shared_prefix=False`` runs all K*C full sequences of length L. Blocks that are not open_clip's
        plain ``ResidualAttentionBlock`` fall back to the full computation (logged once).
        """
        ctx = self.prompt_learner.ctx
        low = COMPUTE_DTYPES[self.compute_dtype]
        with torch.autocast(ctx.device.type, dtype=low or torch.bfloat16, enabled=low is not None):
            if shared_prefix:
                reason = prefix_sharing_unsupported(self.transformer)
                if reason is None:
                    return encode_shared_prefix(self, self._packed_layout()).to(ctx.dtype)
                if not self._fallback_logged:
                    logger.warning("PromptTextEncoder: prefix sharing off, running full prompts: %s", reason)
                    self._fallback_logged = True
            return self._encode_full().to(ctx.dtype)

    def _packed_layout(self) -> PackedLayout:
        """Layout of the class positions for the current class list (rebuilt when it changes)."""
        lengths = self.prompt_learner.class_lengths
        key = (lengths, lengths._version)
        if self._layout is None or self._layout_key[0] is not key[0] or self._layout_key[1] != key[1]:
            self._layout = packed_layout(self.prompt_learner.class_tokens, lengths, self.prompt_learner.n_ctx)
            self._layout_key = key
        return self._layout

    def _encode_full(self) -> torch.Tensor:
        """(K*C, L) prompts through the unchanged open_clip transformer: (K, C, D)."""
        prompts, eot = self.prompt_learner(self.token_embedding)  # (K*C, L, W), (K*C,)
        seq_len = prompts.shape[1]
        x = prompts + self.positional_embedding[:seq_len].to(prompts.dtype)
        x = self.transformer(x, attn_mask=self.attn_mask)
        x = self.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), eot]  # (K*C, W) at the end token
        x = x @ self.text_projection
        return x.reshape(self.num_prompts, self.num_classes, -1)

    def _current_key(self):
        ctx = self.prompt_learner.ctx
        return (ctx._version, ctx.data_ptr(), ctx.device, ctx.dtype)

    def forward(self) -> torch.Tensor:
        """Text features ``t`` (K, C, D), prompt-major; not L2-normalized."""
        if self.training:
            self._cache = None
            return self.encode()
        key = self._current_key()
        if self._cache is None or self._cache_key != key:
            with torch.no_grad():
                self._cache = self.encode()
            self._cache_key = key
        return self._cache

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, freeze={self.freeze}, compute_dtype={self.compute_dtype}"
