"""Prefix sharing: the prompt text encoder's exact speed-up of the K*C prompts.

The first ``P = 1 + n_ctx``
positions of a prompt ([SOT, ctx_k]) are the same for all C classes, and under CLIP's causal mask
so are their hidden states at every layer. Each block therefore runs on one packed sequence per
prompt k: the prefix (P positions) followed by the class positions of every class up to its own
end token (``m_c + 1`` positions for ``m_c`` BPE tokens). A class position attends to the prefix
of its prompt and to the earlier positions of its own class only, which gives exactly the result
of the full (K*C, L) computation (kept as ``encode(shared_prefix=False)``) with 18% of its
positions for ADE20k's 151 prompt names (K = 3, n_ctx = 8: 3 * 345 instead of 3 * 151 * 13).

:class:`~.text_encoder.PromptTextEncoder` uses it by default (``encode(shared_prefix=True)``) when
:func:`prefix_sharing_unsupported` finds every text block to be open_clip's plain block.
"""

import math
from typing import List, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = ["PackedLayout", "packed_layout", "prefix_sharing_unsupported", "encode_shared_prefix"]


class PackedLayout(NamedTuple):
    """Where the class positions sit in the packed sequence of one prompt (prefix first, P positions).

    ``groups``: ``(offset, n, t)`` per class length: ``n`` classes of ``t`` positions each (BPE tokens
    + end token) stored one class after the other from packed position ``P + offset``.
    ``token_ids`` / ``positions``: (N,) token id and prompt position of every packed class position.
    ``end_rows``: (C,) packed index of every class's end token, in class order.
    ``future``: per group, (t, t) bool, True where a key position comes after the query.
    """

    groups: Tuple[Tuple[int, int, int], ...]
    token_ids: torch.Tensor
    positions: torch.Tensor
    end_rows: torch.Tensor
    future: Tuple[torch.Tensor, ...]


def packed_layout(class_tokens: torch.Tensor, class_lengths: torch.Tensor, n_ctx: int) -> PackedLayout:
    """Layout of the class positions of C classes.

    ``class_tokens`` (C, S): the class slot's token ids (SOT first), ``class_lengths`` (C,): BPE
    tokens per class (the end token follows them), ``n_ctx``: learned context tokens per prompt.
    """
    lengths = class_lengths.tolist()
    slot = class_tokens.shape[1]
    prefix = 1 + n_ctx
    flat_index: List[int] = []  # into class_tokens.view(-1)
    positions: List[int] = []
    end_rows = [0] * len(lengths)
    groups = []
    for t in sorted({m + 1 for m in lengths}):  # positions per class: BPE tokens + end token
        members = [c for c, m in enumerate(lengths) if m + 1 == t]
        offset = len(flat_index)
        for i, c in enumerate(members):
            flat_index.extend(c * slot + j for j in range(1, t + 1))  # slot 0 (SOT) is the prefix's
            positions.extend(range(prefix, prefix + t))
            end_rows[c] = prefix + offset + i * t + t - 1
        groups.append((offset, len(members), t))
    device = class_lengths.device
    return PackedLayout(
        groups=tuple(groups),
        token_ids=class_tokens.reshape(-1)[torch.tensor(flat_index, device=device)],
        positions=torch.tensor(positions, dtype=torch.long, device=device),
        end_rows=torch.tensor(end_rows, dtype=torch.long, device=device),
        future=tuple(torch.ones(t, t, dtype=torch.bool, device=device).triu_(1) for _, _, t in groups),
    )


def prefix_sharing_unsupported(transformer: nn.Module) -> Optional[str]:
    """None when every block of open_clip's text ``transformer`` has the structure OpenAI CLIP
    configs build, else the reason."""
    from open_clip.transformer import LayerScale, ResidualAttentionBlock

    blocks = getattr(transformer, "resblocks", None)
    if not isinstance(blocks, nn.ModuleList):
        return f"text transformer {type(transformer).__name__} has no 'resblocks' list"
    for i, block in enumerate(blocks):
        if type(block) is not ResidualAttentionBlock:
            return f"block {i} is {type(block).__name__}, not open_clip's ResidualAttentionBlock"
        if hasattr(block, "ln_1_kv"):
            return f"block {i} is a cross-attention block (ln_1_kv)"
        attn = block.attn
        if not isinstance(attn, nn.MultiheadAttention):
            return f"block {i} attention is {type(attn).__name__}, not nn.MultiheadAttention"
        if not attn._qkv_same_embed_dim or attn.bias_k is not None or attn.add_zero_attn or attn.dropout != 0:
            return f"block {i} attention uses separate q/k/v widths, bias_k/v, add_zero_attn or dropout"
        for name in ("ls_1", "ls_2"):
            if type(getattr(block, name)) not in (nn.Identity, LayerScale):
                return f"block {i}.{name} is {type(getattr(block, name)).__name__}, not Identity / LayerScale"
    return None


def encode_shared_prefix(encoder: nn.Module, layout: PackedLayout) -> torch.Tensor:
    """Text features (K, C, D) of a :class:`~.text_encoder.PromptTextEncoder` (its embeddings,
    blocks, final norm, projection and prompt learner) from packed sequences (K, P + N, W): the
    prefix [SOT, ctx_k], then all class positions of ``layout``."""
    learner = encoder.prompt_learner
    ctx = learner.ctx  # (K, n_ctx, W)
    K, n_ctx, width = ctx.shape
    prefix_len = 1 + n_ctx
    sot = encoder.token_embedding(learner.class_tokens[:1, 0]).to(ctx.dtype)  # (1, W)
    cls = encoder.token_embedding(layout.token_ids).to(ctx.dtype)  # (N, W)
    pos = encoder.positional_embedding.to(ctx.dtype)
    x = torch.cat([sot.expand(K, 1, width), ctx, cls.unsqueeze(0).expand(K, -1, width)], dim=1)
    x = x + torch.cat([pos[:prefix_len], pos[layout.positions]], dim=0)
    recompute = encoder.transformer.grad_checkpointing and torch.is_grad_enabled()
    blocks = encoder.transformer.resblocks
    for i, block in enumerate(blocks):
        # only the end tokens are read after the last block: it keeps just those rows
        keep = layout.end_rows if i == len(blocks) - 1 else None
        if recompute:
            x = checkpoint(_shared_prefix_block, block, x, prefix_len, layout, keep, use_reentrant=False)
        else:
            x = _shared_prefix_block(block, x, prefix_len, layout, keep)
    if len(blocks) == 0:
        x = x[:, layout.end_rows]
    x = encoder.ln_final(x)  # (K, C, W) at the end tokens
    return x @ encoder.text_projection


def _shared_prefix_block(
    block: nn.Module, x: torch.Tensor, prefix_len: int, layout: PackedLayout, keep: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """One open_clip ``ResidualAttentionBlock`` (its own weights) on packed sequences x (K, P + N, W).

    Positions ``[:P]`` (the prefix) attend causally among themselves. A class position attends to
    the P prefix positions of its prompt and to the positions of its own class up to itself.
    ``keep`` (R,): return only these rows, (K, R, W); the output projection and MLP then run on
    them alone (every position is still a key).
    """
    attn = block.attn
    K, total, width = x.shape
    heads, head_dim = attn.num_heads, attn.head_dim
    P = prefix_len
    qkv = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias).view(K, total, 3, heads, head_dim)
    q, k, v = qkv.unbind(2)  # (K, P + N, H, d)
    q = q * (1.0 / math.sqrt(head_dim))
    qp, kp, vp = q[:, :P], k[:, :P], v[:, :P]
    out = [  # prefix: plain causal attention, (K, P, W)
        F.scaled_dot_product_attention(
            qp.transpose(1, 2), kp.transpose(1, 2), vp.transpose(1, 2), is_causal=True, scale=1.0
        )
        .transpose(1, 2)
        .reshape(K, P, width)
    ]
    for (offset, n, t), future in zip(layout.groups, layout.future):
        sl = slice(P + offset, P + offset + n * t)
        qc, kc, vc = (y[:, sl].reshape(K, n, t, heads, head_dim) for y in (q, k, v))
        to_prefix = torch.einsum("kcthd,kphd->kchtp", qc, kp)  # (K, n, H, t, P)
        to_self = torch.einsum("kcthd,kcshd->kchts", qc, kc).masked_fill(future, float("-inf"))  # (K, n, H, t, t)
        weights = torch.cat([to_prefix, to_self], dim=-1).softmax(dim=-1)
        oc = torch.einsum("kchtp,kphd->kcthd", weights[..., :P], vp)
        oc = oc + torch.einsum("kchts,kcshd->kcthd", weights[..., P:], vc)
        out.append(oc.reshape(K, n * t, width))
    attended = torch.cat(out, dim=1)  # (K, P + N, W)
    if keep is not None:
        x, attended = x[:, keep], attended[:, keep]
    x = x + block.ls_1(F.linear(attended, attn.out_proj.weight, attn.out_proj.bias))
    return x + block.ls_2(block.mlp(block.ln_2(x)))
