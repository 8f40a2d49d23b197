"""Masked-attention transformer decoder (Mask2Former), the base of the Mask-Text Decoder.

Queries attend to one memory level per layer (round-robin, lowest resolution first) under an
attention mask built from the previous layer's mask prediction, then to each other, then pass an
FFN (post-norm by default). After the initial queries and after every layer, the heads predict
class logits (C+1) and mask logits (dot product with ``mask_features``).

Subclasses change the query set and the heads through ``_initial_queries``,
``_self_attention_mask``, ``_first_row_read_after_last_layer`` and ``_predict`` without copying
the layer loop.
"""

from typing import Dict, List, Optional, Tuple

import fvcore.nn.weight_init as weight_init
import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import Conv2d
from detectron2.utils.registry import Registry
from torch import nn

from ..config import choice
from .position_encoding import PositionEmbeddingSine

TRANSFORMER_DECODER_REGISTRY = Registry("MTA_CLIP_TRANSFORMER_DECODER")
TRANSFORMER_DECODER_REGISTRY.__doc__ = "Transformer decoders of mta_clip (queries -> class and mask predictions)."


def build_transformer_decoder(cfg, in_channels: int, **kwargs) -> nn.Module:
    name = cfg.MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME
    return TRANSFORMER_DECODER_REGISTRY.get(name)(cfg, in_channels, **kwargs)


def multihead_attention(
    mha: nn.MultiheadAttention,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    blocked: Optional[torch.Tensor] = None,
    training: bool = False,
) -> torch.Tensor:
    """``mha``'s attention (its weights, same result) through ``scaled_dot_product_attention``.

    query: (Q, B, C); key, value: (S, B, C); blocked: bool, True = may not attend, (Q, S) or
    (B, Q, S), broadcast over the heads instead of copied per head as ``nn.MultiheadAttention``
    needs (less memory and time; figures in docs/benchmarks.md).
    Returns (Q, B, C).
    """
    q_len, batch, channels = query.shape
    heads = mha.num_heads
    head_dim = channels // heads
    w_q, w_k, w_v = mha.in_proj_weight.chunk(3)
    b_q, b_k, b_v = mha.in_proj_bias.chunk(3)

    def split(x, w, b):  # (L, B, C) -> (B, heads, L, head_dim)
        return F.linear(x, w, b).view(x.shape[0], batch, heads, head_dim).permute(1, 2, 0, 3)

    allowed = None
    if blocked is not None:
        allowed = ~(blocked if blocked.dim() == 2 else blocked.unsqueeze(1))
    out = F.scaled_dot_product_attention(
        split(query, w_q, b_q),
        split(key, w_k, b_k),
        split(value, w_v, b_v),
        attn_mask=allowed,
        dropout_p=mha.dropout if training else 0.0,
    )
    return mha.out_proj(out.permute(2, 0, 1, 3).reshape(q_len, batch, channels))


class SelfAttentionLayer(nn.Module):
    """Self-attention among queries with residual and LayerNorm (post- or pre-norm)."""

    def __init__(self, d_model: int, nhead: int, dropout: float = 0.0, normalize_before: bool = False):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.normalize_before = normalize_before
        _xavier_init(self)

    def forward(
        self, tgt, tgt_mask: Optional[torch.Tensor] = None, query_pos: Optional[torch.Tensor] = None, first_row: int = 0
    ):
        """tgt, query_pos: (Q, B, C); tgt_mask: (Q, Q) bool, True = may not attend.

        Returns rows ``first_row:`` of the output, (Q - first_row, B, C); all Q queries are keys.
        """
        x = self.norm(tgt) if self.normalize_before else tgt
        k = x if query_pos is None else x + query_pos
        mask = None if tgt_mask is None else tgt_mask[first_row:]
        attn = multihead_attention(self.self_attn, k[first_row:], k, x, mask, self.training)
        out = tgt[first_row:] + self.dropout(attn)
        return out if self.normalize_before else self.norm(out)


class CrossAttentionLayer(nn.Module):
    """Cross-attention from queries to one memory level, with an optional attention mask."""

    def __init__(self, d_model: int, nhead: int, dropout: float = 0.0, normalize_before: bool = False):
        super().__init__()
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.normalize_before = normalize_before
        _xavier_init(self)

    def forward(self, tgt, memory, memory_mask=None, pos=None, query_pos=None):
        """tgt: (Q, B, C); memory, pos: (HW, B, C); memory_mask: (B, Q, HW) bool, True = blocked."""
        x = self.norm(tgt) if self.normalize_before else tgt
        q = x if query_pos is None else x + query_pos
        k = memory if pos is None else memory + pos
        out = tgt + self.dropout(multihead_attention(self.multihead_attn, q, k, memory, memory_mask, self.training))
        return out if self.normalize_before else self.norm(out)


class FFNLayer(nn.Module):
    """Two-layer ReLU FFN with residual and LayerNorm."""

    def __init__(self, d_model: int, dim_feedforward: int = 2048, dropout: float = 0.0, normalize_before: bool = False):
        super().__init__()
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm = nn.LayerNorm(d_model)
        self.normalize_before = normalize_before
        _xavier_init(self)

    def forward(self, tgt):
        x = self.norm(tgt) if self.normalize_before else tgt
        out = tgt + self.dropout(self.linear2(self.dropout(F.relu(self.linear1(x)))))
        return out if self.normalize_before else self.norm(out)


class MLP(nn.Module):
    """Plain MLP with ReLU between layers (``layers.{i}`` names, as in Mask2Former)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int):
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims, dims[1:] + [output_dim]))

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


def _xavier_init(module: nn.Module, normal: bool = False) -> None:
    for p in module.parameters():
        if p.dim() > 1:
            (nn.init.xavier_normal_ if normal else nn.init.xavier_uniform_)(p)


#: values of ``MODEL.MASK_FORMER.DECODER_LAYER_INIT``
LAYER_INITS = ("xavier_uniform", "xavier_normal")


@TRANSFORMER_DECODER_REGISTRY.register()
class MaskedDecoder(nn.Module):
    """Mask2Former's multi-scale masked-attention decoder.

    Parameter names match published Mask2Former checkpoints (``sem_seg_head.predictor.*``).
    """

    @configurable
    def __init__(
        self,
        in_channels: int,
        *,
        num_classes: int,
        hidden_dim: int,
        num_queries: int,
        nheads: int,
        dim_feedforward: int,
        dec_layers: int,
        pre_norm: bool,
        mask_dim: int,
        enforce_input_project: bool,
        dropout: float = 0.0,
        supervise_initial_prediction: bool = True,
        layer_init: str = "xavier_uniform",
    ):
        """``dec_layers`` counts the layers (Mask2Former's DEC_LAYERS - 1); ``num_classes`` = C.
        ``layer_init``: init of the attention / FFN layers' weight matrices, "xavier_uniform"
        (Mask2Former) or "xavier_normal" (the MTA-CLIP authors' head re-initializes every
        parameter of more than one dimension of its transformer decoder that way)."""
        layer_init = choice(LAYER_INITS, layer_init, "MODEL.MASK_FORMER.DECODER_LAYER_INIT")
        super().__init__()
        self.pe_layer = PositionEmbeddingSine(hidden_dim // 2, normalize=True)
        self.num_heads = nheads
        self.num_layers = dec_layers
        self.num_queries = num_queries
        self.num_classes = num_classes
        self.supervise_initial_prediction = supervise_initial_prediction
        self.transformer_self_attention_layers = nn.ModuleList(
            SelfAttentionLayer(hidden_dim, nheads, dropout, pre_norm) for _ in range(dec_layers)
        )
        self.transformer_cross_attention_layers = nn.ModuleList(
            CrossAttentionLayer(hidden_dim, nheads, dropout, pre_norm) for _ in range(dec_layers)
        )
        self.transformer_ffn_layers = nn.ModuleList(
            FFNLayer(hidden_dim, dim_feedforward, dropout, pre_norm) for _ in range(dec_layers)
        )
        if layer_init == "xavier_normal":
            for layers in (
                self.transformer_self_attention_layers,
                self.transformer_cross_attention_layers,
                self.transformer_ffn_layers,
            ):
                _xavier_init(layers, normal=True)
        self.decoder_norm = nn.LayerNorm(hidden_dim)
        self.query_feat = nn.Embedding(num_queries, hidden_dim)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.num_feature_levels = 3
        self.level_embed = nn.Embedding(self.num_feature_levels, hidden_dim)
        self.input_proj = nn.ModuleList()
        for _ in range(self.num_feature_levels):
            if in_channels != hidden_dim or enforce_input_project:
                proj = Conv2d(in_channels, hidden_dim, kernel_size=1)
                weight_init.c2_xavier_fill(proj)
                self.input_proj.append(proj)
            else:
                self.input_proj.append(nn.Sequential())
        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, 3)
        if self.num_supervised_predictions < 1:
            raise ValueError(
                f"no prediction to supervise: {dec_layers} decoder layers (MODEL.MASK_FORMER.DEC_LAYERS - 1) and "
                f"SUPERVISE_INITIAL_PREDICTION {supervise_initial_prediction}"
            )

    @property
    def num_supervised_predictions(self) -> int:
        """Predictions a loss reads: one per layer, plus the one before the first layer if it is
        supervised; the last is the output, the others are ``aux_outputs``."""
        return self.num_layers + int(self.supervise_initial_prediction)

    @classmethod
    def from_config(cls, cfg, in_channels: int):
        mf = cfg.MODEL.MASK_FORMER
        if mf.DEC_LAYERS < 1:
            raise ValueError(f"MODEL.MASK_FORMER.DEC_LAYERS must be >= 1, got {mf.DEC_LAYERS}")
        return {
            "in_channels": in_channels,
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "hidden_dim": mf.HIDDEN_DIM,
            "num_queries": mf.NUM_OBJECT_QUERIES,
            "nheads": mf.NHEADS,
            "dim_feedforward": mf.DIM_FEEDFORWARD,
            "dec_layers": mf.DEC_LAYERS - 1,
            "pre_norm": mf.PRE_NORM,
            "mask_dim": cfg.MODEL.SEM_SEG_HEAD.MASK_DIM,
            "enforce_input_project": mf.ENFORCE_INPUT_PROJ,
            "dropout": mf.DROPOUT,
            "supervise_initial_prediction": mf.SUPERVISE_INITIAL_PREDICTION,
            "layer_init": mf.DECODER_LAYER_INIT,
        }

    # ----------------------------------------------------------------- hooks for subclasses
    def _initial_queries(self, batch: int, **inputs) -> Tuple[torch.Tensor, torch.Tensor]:
        """Query features and positional embeddings, each (Q, B, hidden)."""
        feat = self.query_feat.weight.unsqueeze(1).repeat(1, batch, 1)
        pos = self.query_embed.weight.unsqueeze(1).repeat(1, batch, 1)
        return feat, pos

    def _self_attention_mask(self, num_queries: int, device) -> Optional[torch.Tensor]:
        """(Q, Q) bool mask for query self-attention (True = blocked); None = all attend."""
        return None

    def _first_row_read_after_last_layer(self, num_queries: int) -> int:
        """Queries before this row are not read after the last layer, which then skips their
        self-attention rows and FFN (they keep their values from before it)."""
        return 0

    def _predict(
        self, output: torch.Tensor, mask_features: torch.Tensor, attn_size, supervised: bool = True, **inputs
    ) -> Dict:
        """Heads on the normalized queries.

        output: (Q, B, hidden); mask_features: (B, mask_dim, H, W).
        Returns ``pred_logits`` (B, N, C+1), ``pred_masks`` (B, N, H, W) and ``attn_mask``
        (B, Q, h*w) for the next layer's cross-attention at size ``attn_size`` (None after
        the last layer). ``supervised`` says whether a loss will read this prediction.
        """
        decoded = self.decoder_norm(output).transpose(0, 1)
        masks = torch.einsum("bqc,bchw->bqhw", self.mask_embed(decoded), mask_features)
        return {
            "pred_logits": self.class_embed(decoded),
            "pred_masks": masks,
            "attn_mask": None if attn_size is None else self._attention_mask(masks, attn_size),
        }

    # ----------------------------------------------------------------- shared machinery
    def _attention_mask(self, masks: torch.Tensor, size) -> torch.Tensor:
        """Blocks memory positions where the (resized) predicted mask has probability < 0.5."""
        resized = F.interpolate(masks, size=size, mode="bilinear", align_corners=False)
        return (resized.sigmoid().flatten(2) < 0.5).detach()  # (B, Q, hw), shared by all heads

    def _prepare_memories(self, x: List[torch.Tensor]):
        if len(x) != self.num_feature_levels:
            raise ValueError(f"expected {self.num_feature_levels} memory levels, got {len(x)}")
        srcs, pos, sizes = [], [], []
        for i, feat in enumerate(x):
            sizes.append(tuple(feat.shape[-2:]))
            pos.append(self.pe_layer(feat).flatten(2).permute(2, 0, 1))
            src = self.input_proj[i](feat).flatten(2) + self.level_embed.weight[i][None, :, None]
            srcs.append(src.permute(2, 0, 1))
        return srcs, pos, sizes

    def forward(self, x: List[torch.Tensor], mask_features: torch.Tensor, **inputs) -> Dict:
        """x: memories (B, C, H_l, W_l), lowest resolution first; mask_features (B, mask_dim, H, W).

        Returns the last prediction's keys plus ``aux_outputs``: the earlier supervised predictions.
        """
        srcs, pos, sizes = self._prepare_memories(x)
        output, query_pos = self._initial_queries(mask_features.shape[0], **inputs)
        self_mask = self._self_attention_mask(output.shape[0], output.device)
        last = self.num_layers - 1
        preds = [
            self._predict(
                output,
                mask_features,
                sizes[0] if self.num_layers else None,
                supervised=self.supervise_initial_prediction,
                **inputs,
            )
        ]
        for i in range(self.num_layers):
            level = i % self.num_feature_levels
            attn_mask = preds[-1]["attn_mask"].clone()
            # a query whose mask covers nothing attends everywhere rather than nowhere
            attn_mask[attn_mask.all(dim=-1)] = False
            output = self.transformer_cross_attention_layers[i](
                output, srcs[level], memory_mask=attn_mask, pos=pos[level], query_pos=query_pos
            )
            first = self._first_row_read_after_last_layer(output.shape[0]) if i == last else 0
            updated = self.transformer_self_attention_layers[i](output, self_mask, query_pos, first_row=first)
            updated = self.transformer_ffn_layers[i](updated)
            output = torch.cat([output[:first], updated]) if first else updated
            next_size = sizes[(i + 1) % self.num_feature_levels] if i < last else None
            preds.append(self._predict(output, mask_features, next_size, **inputs))
        for p in preds:
            p.pop("attn_mask")
        supervised = preds if self.supervise_initial_prediction else preds[1:]
        out = dict(preds[-1])
        out["aux_outputs"] = supervised[:-1]
        return out
