"""Frozen CLIP text transformer run on learned prompts: the text queries ``t`` (K, C, D) of MTA-CLIP.

Usage by a meta-architecture::

    encoder = PromptTextEncoder(cfg, class_names)   # or class_names=None: read from dataset metadata
    t = encoder()                                   # (K, C, D) float, D = CLIP embedding width

Training mode runs the text transformer every call with autograd on (its weights have
``requires_grad=False`` when frozen, so only the contexts get gradients). Eval mode computes the
output once under ``no_grad`` and returns the cached tensor (do not modify it in place) until
``train()``/``eval()``, a state-dict load, ``set_class_names`` or an in-place change of the
contexts invalidates it.

Prefix sharing (default path of :meth:`PromptTextEncoder.encode`): the first ``P = 1 + n_ctx``
positions of a prompt ([SOT, ctx_k]) are the same for all C classes, and under CLIP's causal mask
so are their hidden states at every layer. Each block therefore runs on one packed sequence per
prompt k: the prefix (P positions) followed by the class positions of every class up to its own
end token (``m_c + 1`` positions for ``m_c`` BPE tokens). A class position attends to the prefix
of its prompt and to the earlier positions of its own class only, which gives exactly the result
of the full (K*C, L) computation (kept as ``encode(shared_prefix=False)``) with 18% of its
positions for ADE20k's 151 prompt names (K = 3, n_ctx = 8: 3 * 345 instead of 3 * 151 * 13).
"""
import logging
import math
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from torch import nn
from torch.utils.checkpoint import checkpoint

from .checkpoint import CLIPArch, clip_weights_and_arch, load_clip_weights
from .prompt_learner import PromptLearner, clip_tokenizer, tokenize_template

logger = logging.getLogger(__name__)

__all__ = ["PromptTextEncoder", "class_names_from_metadata"]

# MODEL.CLIP.TEXT.COMPUTE_DTYPE -> autocast dtype (None: autocast off)
COMPUTE_DTYPES = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}

# OpenAI checkpoint keys of the text tower (top level of the CLIP state dict)
TEXT_TOWER_PREFIXES = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.", "text_projection")


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
        checkpoint_blocks: bool = False,
        compute_dtype: str = "float32",
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
            checkpoint_blocks: activation checkpointing of every text block when gradients are on
                (recomputed in backward: less memory, about one more forward pass of time).
            compute_dtype: "float32" (autocast off, also inside an AMP region), "bfloat16" or
                "float16": the text transformer runs under autocast to that dtype (3.3x faster
                fwd+bwd on an AVX512-BF16 CPU, half the activations); the output has the contexts' dtype.
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
        self.transformer.grad_checkpointing = checkpoint_blocks  # open_clip's flag, honoured by both paths
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
            checkpoint_blocks=t.CHECKPOINT_BLOCKS,
            compute_dtype=t.COMPUTE_DTYPE,
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
                reason = self._prefix_sharing_unsupported()
                if reason is None:
                    return self._encode_shared_prefix().to(ctx.dtype)
                if not self._fallback_logged:
                    logger.warning("PromptTextEncoder: prefix sharing off, running full prompts: %s", reason)
                    self._fallback_logged = True
            return self._encode_full().to(ctx.dtype)

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

    def _prefix_sharing_unsupported(self) -> Optional[str]:
        """None when every block has the structure OpenAI CLIP configs build, else the reason."""
        from open_clip.transformer import LayerScale, ResidualAttentionBlock

        blocks = getattr(self.transformer, "resblocks", None)
        if not isinstance(blocks, nn.ModuleList):
            return f"text transformer {type(self.transformer).__name__} has no 'resblocks' list"
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

    def _packed_layout(self) -> PackedLayout:
        """Layout of the class positions for the current class list (rebuilt when it changes)."""
        lengths_t = self.prompt_learner.class_lengths
        key = (lengths_t, lengths_t._version)
        if self._layout is not None and self._layout_key[0] is key[0] and self._layout_key[1] == key[1]:
            return self._layout
        lengths = lengths_t.tolist()
        slot = self.prompt_learner.class_tokens.shape[1]
        prefix = 1 + self.prompt_learner.n_ctx
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
        device = lengths_t.device
        self._layout = PackedLayout(
            groups=tuple(groups),
            token_ids=self.prompt_learner.class_tokens.reshape(-1)[torch.tensor(flat_index, device=device)],
            positions=torch.tensor(positions, dtype=torch.long, device=device),
            end_rows=torch.tensor(end_rows, dtype=torch.long, device=device),
            future=tuple(torch.ones(t, t, dtype=torch.bool, device=device).triu_(1) for _, _, t in groups),
        )
        self._layout_key = key
        return self._layout

    def _encode_shared_prefix(self) -> torch.Tensor:
        """Packed sequences (K, P + N, W): prefix [SOT, ctx_k] then all class positions. (K, C, D)."""
        layout = self._packed_layout()
        ctx = self.prompt_learner.ctx  # (K, n_ctx, W)
        K, n_ctx, width = ctx.shape
        prefix_len = 1 + n_ctx
        sot = self.token_embedding(self.prompt_learner.class_tokens[:1, 0]).to(ctx.dtype)  # (1, W)
        cls = self.token_embedding(layout.token_ids).to(ctx.dtype)  # (N, W)
        pos = self.positional_embedding.to(ctx.dtype)
        x = torch.cat([sot.expand(K, 1, width), ctx, cls.unsqueeze(0).expand(K, -1, width)], dim=1)
        x = x + torch.cat([pos[:prefix_len], pos[layout.positions]], dim=0)
        use_checkpoint = self.transformer.grad_checkpointing and torch.is_grad_enabled()
        blocks = self.transformer.resblocks
        for i, block in enumerate(blocks):
            # only the end tokens are read after the last block: it keeps just those rows
            keep = layout.end_rows if i == len(blocks) - 1 else None
            if use_checkpoint:
                x = checkpoint(_shared_prefix_block, block, x, prefix_len, layout, keep, use_reentrant=False)
            else:
                x = _shared_prefix_block(block, x, prefix_len, layout, keep)
        if len(blocks) == 0:
            x = x[:, layout.end_rows]
        x = self.ln_final(x)  # (K, C, W) at the end tokens
        return x @ self.text_projection

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


def _shared_prefix_block(block: nn.Module, x: torch.Tensor, prefix_len: int, layout: PackedLayout,
                         keep: Optional[torch.Tensor] = None) -> torch.Tensor:
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
        ).transpose(1, 2).reshape(K, P, width)
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
