"""Mask-Text Prompt Learning (paper §3.2.2): K learned context sets shared by all classes.

Token layout of one prompt (``n_ctx`` learned contexts, class slot of ``S`` positions)::

    position: 0     1 .. n_ctx        n_ctx+1 .. n_ctx+m   n_ctx+m+1   .. n_ctx+S-1
    token:    SOT   ctx_k[0..n_ctx)   class tokens (m)     EOT         padding (id 0)

The class slot is the class text (name + optional suffix) tokenized with a context length of
``S``: ``[SOT, m <= S-2 BPE tokens, EOT, 0...]``; its SOT moves to position 0 and the contexts go
between it and the class tokens. The sequence is ``L = n_ctx + S`` long (13 by default) and uses
CLIP's first ``L`` positional rows. The text feature is read at the EOT position. Because CLIP's
text transformer is causal, positions after EOT do not change it: with contexts equal to a
template's token embeddings the result equals CLIP's ``encode_text`` of ``"template class"``.
"""

import functools
import logging
from typing import List, Optional, Sequence, Tuple

import torch
from torch import nn

logger = logging.getLogger(__name__)

__all__ = ["PromptLearner", "clip_tokenizer", "tokenize_class_slot", "tokenize_template"]


@functools.lru_cache(maxsize=1)
def clip_tokenizer():
    """CLIP's BPE tokenizer (open_clip ``SimpleTokenizer``; vocabulary ships with the package)."""
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer()


def tokenize_class_slot(
    class_names: Sequence[str], class_slot: int = 5, suffix: str = ""
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Tokenizes ``name + suffix`` of every class into the class slot.

    Returns ``(tokens (C, class_slot) int64 = [SOT, BPE..., EOT, 0...], lengths (C,) int64)`` where
    ``lengths`` counts the BPE tokens. Names needing more than ``class_slot - 2`` BPE tokens (or
    none) raise a ValueError naming every such class; nothing is truncated.
    """
    if class_slot < 3:
        raise ValueError(f"class slot must hold start, >= 1 class token and end: got {class_slot} positions")
    if len(class_names) == 0:
        raise ValueError("no class names given for the CLIP prompts")
    tok = clip_tokenizer()
    tokens = torch.zeros(len(class_names), class_slot, dtype=torch.long)
    lengths = torch.zeros(len(class_names), dtype=torch.long)
    bad: List[str] = []
    for i, name in enumerate(class_names):
        if not isinstance(name, str):
            raise ValueError(f"class name #{i} is {name!r}, expected a string")
        ids = tok.encode(name + suffix)
        if not 1 <= len(ids) <= class_slot - 2:
            bad.append(f"{name + suffix!r} ({len(ids)} tokens)")
            continue
        tokens[i, 0] = tok.sot_token_id
        tokens[i, 1 : 1 + len(ids)] = torch.tensor(ids, dtype=torch.long)
        tokens[i, 1 + len(ids)] = tok.eot_token_id
        lengths[i] = len(ids)
    if bad:
        raise ValueError(
            f"{len(bad)} class name(s) do not fit the CLIP prompt class slot of {class_slot} positions "
            f"(start, 1..{class_slot - 2} BPE tokens, end): {', '.join(bad)}. Give shorter prompt names "
            f"(dataset metadata 'prompt_classes') or raise MODEL.CLIP.TEXT.CLASS_SLOT."
        )
    return tokens, lengths


def tokenize_template(template: str) -> List[int]:
    """BPE ids of a context template such as ``"a photo of a"`` (no start / end tokens)."""
    ids = clip_tokenizer().encode(template)
    if not ids:
        raise ValueError(f"context template {template!r} (MODEL.CLIP.TEXT.CONTEXT_INIT) has no tokens")
    return ids


class PromptLearner(nn.Module):
    """Learned contexts ``ctx`` (K, n_ctx, width) and the tokenized class slot of C classes.

    ``forward(token_embedding)`` returns the prompt embeddings (K*C, n_ctx + class_slot, width),
    ordered prompt-major (row ``k * C + c``), and the EOT position of every row (K*C,).
    """

    def __init__(
        self,
        num_prompts: int,
        n_ctx: int,
        width: int,
        class_slot: int = 5,
        class_suffix: str = "",
        init_std: float = 1.0,
        init_embeddings: Optional[torch.Tensor] = None,
    ):
        """
        Args:
            num_prompts: K context sets.
            n_ctx: learned tokens per context set.
            width: token embedding width of the text transformer.
            class_slot: positions of the class slot (start, class tokens, end).
            class_suffix: text appended to every class name before tokenizing (e.g. ".").
            init_std: std of the truncated normal init (cut at +-2 std); used without a template.
            init_embeddings: (n_ctx, width) template token embeddings copied to all K sets.
        """
        super().__init__()
        if num_prompts < 1 or n_ctx < 0:
            raise ValueError(f"need num_prompts >= 1 and n_ctx >= 0, got {num_prompts} and {n_ctx}")
        self.num_prompts = num_prompts
        self.n_ctx = n_ctx
        self.class_slot = class_slot
        self.class_suffix = class_suffix
        self.ctx = nn.Parameter(torch.empty(num_prompts, n_ctx, width))
        if init_embeddings is None:
            nn.init.trunc_normal_(self.ctx, mean=0.0, std=init_std, a=-2.0 * init_std, b=2.0 * init_std)
        else:
            if tuple(init_embeddings.shape) != (n_ctx, width):
                raise ValueError(
                    f"context init embeddings have shape {tuple(init_embeddings.shape)}, expected ({n_ctx}, {width})"
                )
            with torch.no_grad():
                self.ctx.copy_(init_embeddings.detach().to(self.ctx.dtype).expand_as(self.ctx))
        # class tokens depend on the class list, not on training: kept out of the state dict
        self.register_buffer("class_tokens", torch.zeros(0, class_slot, dtype=torch.long), persistent=False)
        self.register_buffer("class_lengths", torch.zeros(0, dtype=torch.long), persistent=False)
        self.class_names: List[str] = []

    @property
    def seq_len(self) -> int:
        """Prompt length L = n_ctx + class_slot."""
        return self.n_ctx + self.class_slot

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def set_class_names(self, class_names: Sequence[str]) -> None:
        """Tokenizes the class slot of ``class_names`` (error naming those that do not fit)."""
        tokens, lengths = tokenize_class_slot(class_names, self.class_slot, self.class_suffix)
        device = self.ctx.device
        self.class_tokens = tokens.to(device)
        self.class_lengths = lengths.to(device)
        self.class_names = list(class_names)

    def forward(self, token_embedding: nn.Embedding) -> Tuple[torch.Tensor, torch.Tensor]:
        """Returns ``(prompts (K*C, L, width), eot_index (K*C,) int64)``."""
        if self.num_classes == 0:
            raise RuntimeError("PromptLearner has no class names: call set_class_names first")
        K, C, n = self.num_prompts, self.num_classes, self.n_ctx
        slot = token_embedding(self.class_tokens)  # (C, S, W)
        slot = slot.to(self.ctx.dtype)
        width = slot.shape[-1]
        start = slot[:, :1].unsqueeze(0).expand(K, C, 1, width)
        rest = slot[:, 1:].unsqueeze(0).expand(K, C, self.class_slot - 1, width)
        ctx = self.ctx.unsqueeze(1).expand(K, C, n, width)
        prompts = torch.cat([start, ctx, rest], dim=2).reshape(K * C, self.seq_len, width)
        eot = (self.class_lengths + 1 + n).repeat(K)  # SOT + contexts + class tokens
        return prompts, eot

    def extra_repr(self) -> str:
        return (
            f"num_prompts={self.num_prompts}, n_ctx={self.n_ctx}, class_slot={self.class_slot}, "
            f"class_suffix={self.class_suffix!r}, num_classes={self.num_classes}"
        )
