"""Frozen CLIP text transformer run on learned prompts: the text queries ``t`` (K, C, D) of MTA-CLIP.

Usage by a meta-architecture::

    encoder = PromptTextEncoder(cfg, class_names)   # or class_names=None: read from dataset metadata
    t = encoder()                                   # (K, C, D) float, D = CLIP embedding width

Training mode runs the text transformer every call with autograd on (its weights have
``requires_grad=False`` when frozen, so only the contexts get gradients). Eval mode computes the
output once under ``no_grad`` and returns the cached tensor (do not modify it in place) until
``train()``/``eval()``, a state-dict load, ``set_class_names`` or an in-place change of the
contexts invalidates it.
"""
import logging
from typing import Dict, List, Optional, Sequence

import torch
from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from torch import nn

from .checkpoint import CLIPArch, clip_weights_and_arch, load_clip_weights
from .prompt_learner import PromptLearner, clip_tokenizer, tokenize_template

logger = logging.getLogger(__name__)

__all__ = ["PromptTextEncoder", "class_names_from_metadata"]

# OpenAI checkpoint keys of the text tower (top level of the CLIP state dict)
TEXT_TOWER_PREFIXES = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.", "text_projection")


def class_names_from_metadata(cfg) -> List[str]:
    """Prompt class names of the training datasets: metadata ``MODEL.CLIP.TEXT.CLASS_NAMES_KEY``
    (default ``prompt_classes``), falling back to ``stuff_classes``."""
    key = cfg.MODEL.CLIP.TEXT.CLASS_NAMES_KEY
    datasets = list(cfg.DATASETS.TRAIN) or list(cfg.DATASETS.TEST)
    if not datasets:
        raise ValueError("no dataset in DATASETS.TRAIN / DATASETS.TEST to read prompt class names from")
    found = None
    for name in datasets:
        meta = MetadataCatalog.get(name)
        names = meta.get(key, None)
        if names is None:
            names = meta.get("stuff_classes", None)
        if names is None:
            raise ValueError(
                f"dataset '{name}' metadata has neither '{key}' (MODEL.CLIP.TEXT.CLASS_NAMES_KEY) nor "
                f"'stuff_classes': cannot build the CLIP prompts"
            )
        if found is not None and list(names) != found:
            raise ValueError(f"datasets {datasets} have different prompt class names; the text encoder needs one list")
        found = list(names)
    return found


class PromptTextEncoder(nn.Module):
    """CLIP text transformer (OpenAI weights, frozen) applied to K learned prompts x C classes.

    Submodule / parameter names equal the text keys of OpenAI's checkpoints (``token_embedding``,
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
        """
        super().__init__()
        from open_clip.transformer import QuickGELU, TextTransformer

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
        tower = TextTransformer(
            context_length=arch.context_length,
            vocab_size=arch.vocab_size,
            width=arch.text_width,
            heads=arch.text_heads,
            layers=arch.text_layers,
            output_dim=arch.embed_dim,
            act_layer=QuickGELU,
        )
        self.token_embedding = tower.token_embedding
        self.positional_embedding = tower.positional_embedding
        self.transformer = tower.transformer
        self.ln_final = tower.ln_final
        self.text_projection = tower.text_projection
        causal = torch.full((seq_len, seq_len), float("-inf")).triu_(1)
        self.register_buffer("attn_mask", causal, persistent=False)
        self._embed_dim = arch.embed_dim

        if weights is not None:
            text = {k: v for k, v in weights.items() if k.startswith(TEXT_TOWER_PREFIXES)}
            load_clip_weights(self, text, "PromptTextEncoder", weights_source or "CLIP weights", ("prompt_learner.",))
        self.freeze = freeze
        if freeze:
            for p in self._text_parameters():
                p.requires_grad_(False)

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
        self.set_class_names(class_names)

    @classmethod
    def from_config(cls, cfg, class_names: Optional[Sequence[str]] = None):
        """``class_names=None`` reads them with :func:`class_names_from_metadata`."""
        if class_names is None:
            class_names = class_names_from_metadata(cfg)
        clip = cfg.MODEL.CLIP
        weights, arch = clip_weights_and_arch(clip.CHECKPOINT, clip.MODEL_NAME, clip.DOWNLOAD, "PromptTextEncoder")
        t = clip.TEXT
        return dict(
            class_names=list(class_names),
            arch=arch,
            weights=weights,
            weights_source=clip.CHECKPOINT,
            num_prompts=t.NUM_PROMPTS,
            n_ctx=t.N_CTX,
            class_slot=t.CLASS_SLOT,
            class_suffix=t.CLASS_SUFFIX,
            context_init=t.CONTEXT_INIT,
            context_init_std=t.CONTEXT_INIT_STD,
            freeze=t.FREEZE,
        )

    def _text_parameters(self) -> List[nn.Parameter]:
        return [p for n, p in self.named_parameters() if not n.startswith("prompt_learner.")]

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

    def encode(self) -> torch.Tensor:
        """Runs the text transformer on all prompts (no cache): (K, C, D)."""
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
        return f"embed_dim={self.embed_dim}, freeze={self.freeze}"
