"""Multi-scale deformable-attention pixel decoder (Mask2Former's pixel decoder).

Backbone features at strides 8/16/32 go through a deformable-attention encoder; the stride-4
feature joins through a lateral FPN path and gives ``mask_features``. Parameter names match
published Mask2Former checkpoints (``sem_seg_head.pixel_decoder.*``).
"""

import math
from typing import Dict, List, Optional, Sequence, Tuple

import fvcore.nn.weight_init as weight_init
import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.utils.registry import Registry
from torch import nn

from ..layers import multi_scale_deformable_attention
from .position_encoding import PositionEmbeddingSine

PIXEL_DECODER_REGISTRY = Registry("MTA_CLIP_PIXEL_DECODER")
PIXEL_DECODER_REGISTRY.__doc__ = "Pixel decoders of mta_clip: backbone features -> mask features + memories."


def build_pixel_decoder(cfg, input_shape: Dict[str, ShapeSpec]) -> nn.Module:
    return PIXEL_DECODER_REGISTRY.get(cfg.MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME)(cfg, input_shape)


class MSDeformAttn(nn.Module):
    """Deformable attention over L levels: each query samples P points per head and level."""

    def __init__(self, d_model: int = 256, n_levels: int = 3, n_heads: int = 8, n_points: int = 4):
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self.d_model, self.n_levels, self.n_heads, self.n_points = d_model, n_levels, n_heads, n_points
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        nn.init.constant_(self.sampling_offsets.weight, 0.0)
        # initial offsets: head h looks along direction 2*pi*h/H, point p at distance p+1
        angles = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        dirs = torch.stack([angles.cos(), angles.sin()], -1)
        dirs = dirs / dirs.abs().max(-1, keepdim=True)[0]
        grid = dirs.view(self.n_heads, 1, 1, 2).repeat(1, self.n_levels, self.n_points, 1)
        grid = grid * torch.arange(1, self.n_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.flatten())
        nn.init.constant_(self.attention_weights.weight, 0.0)
        nn.init.constant_(self.attention_weights.bias, 0.0)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.constant_(self.value_proj.bias, 0.0)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.constant_(self.output_proj.bias, 0.0)

    def forward(
        self,
        query: torch.Tensor,
        reference_points: torch.Tensor,
        value_in: torch.Tensor,
        spatial_shapes: Sequence[Tuple[int, int]],
        level_start_index: Optional[Sequence[int]] = None,
        offset_normalizer: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """query: (B, Q, C); reference_points: (B, Q, L, 2) in [0, 1]; value_in: (B, S, C);
        spatial_shapes: [(H_l, W_l)] integers; offset_normalizer: (L, 2) = (W_l, H_l) (built from
        ``spatial_shapes`` if None). Returns (B, Q, C)."""
        b, q, _ = query.shape
        s = value_in.shape[1]
        value = self.value_proj(value_in).view(b, s, self.n_heads, self.d_model // self.n_heads)
        offsets = self.sampling_offsets(query).view(b, q, self.n_heads, self.n_levels, self.n_points, 2)
        weights = self.attention_weights(query).view(b, q, self.n_heads, self.n_levels * self.n_points)
        weights = weights.softmax(-1).view(b, q, self.n_heads, self.n_levels, self.n_points)
        if offset_normalizer is None:
            offset_normalizer = level_size_tensor(spatial_shapes, offsets.dtype, offsets.device)
        # offsets are in pixels of each level: normalize by (W_l, H_l)
        locations = reference_points[:, :, None, :, None, :] + offsets / offset_normalizer[None, None, None, :, None, :]
        out = multi_scale_deformable_attention(value, spatial_shapes, level_start_index, locations, weights)
        return self.output_proj(out)


def level_size_tensor(spatial_shapes: Sequence[Tuple[int, int]], dtype: torch.dtype, device) -> torch.Tensor:
    """(L, 2) tensor of (W_l, H_l), made on ``device`` by fills (no host-to-device copy, which
    CUDA's sync debug mode counts as a synchronization)."""
    sizes = [torch.full((), v, dtype=dtype, device=device) for h, w in spatial_shapes for v in (w, h)]
    return torch.stack(sizes).view(len(spatial_shapes), 2)


class DeformableEncoderLayer(nn.Module):
    """Post-norm encoder layer: deformable self-attention then FFN."""

    def __init__(self, d_model: int, d_ffn: int, dropout: float, n_levels: int, n_heads: int, n_points: int):
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.dropout2 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.dropout3 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, src, pos, reference_points, spatial_shapes, level_start_index, offset_normalizer=None):
        """src/pos: (B, S, C); spatial_shapes: [(H_l, W_l)] integers. Returns (B, S, C)."""
        attn = self.self_attn(src + pos, reference_points, src, spatial_shapes, level_start_index, offset_normalizer)
        src = self.norm1(src + self.dropout1(attn))
        ffn = self.linear2(self.dropout2(F.relu(self.linear1(src))))
        return self.norm2(src + self.dropout3(ffn))


class DeformableEncoder(nn.Module):
    """Stack of deformable encoder layers over flattened multi-level features."""

    def __init__(self, num_layers: int, **layer_kwargs):
        super().__init__()
        self.layers = nn.ModuleList([DeformableEncoderLayer(**layer_kwargs) for _ in range(num_layers)])

    @staticmethod
    def reference_points(spatial_shapes: List[Tuple[int, int]], batch: int, device) -> torch.Tensor:
        """Pixel centers of every level, normalized to [0, 1]: (B, S, L, 2) as (x, y)."""
        points = []
        for h, w in spatial_shapes:
            ys, xs = torch.meshgrid(
                (torch.arange(h, dtype=torch.float32, device=device) + 0.5) / h,
                (torch.arange(w, dtype=torch.float32, device=device) + 0.5) / w,
                indexing="ij",
            )  # = linspace(0.5, size - 0.5, size) / size bit for bit; linspace would fix a symbolic size
            points.append(torch.stack((xs.reshape(-1), ys.reshape(-1)), -1))
        ref = torch.cat(points, 0)
        return ref[None, :, None, :].expand(batch, -1, len(spatial_shapes), -1)

    def forward(self, src, pos, spatial_shapes: List[Tuple[int, int]], level_start_index: List[int]):
        """src/pos: (B, S, C); spatial_shapes / level_start_index: integers. Returns (B, S, C)."""
        ref = self.reference_points(spatial_shapes, src.shape[0], src.device)
        normalizer = level_size_tensor(spatial_shapes, src.dtype, src.device)
        out = src
        for layer in self.layers:
            out = layer(out, pos, ref, spatial_shapes, level_start_index, normalizer)
        return out


class DeformableTransformerEncoderOnly(nn.Module):
    """Holds the level embedding and the encoder (names follow Mask2Former checkpoints)."""

    def __init__(
        self,
        d_model: int,
        nhead: int,
        num_encoder_layers: int,
        dim_feedforward: int,
        dropout: float,
        num_feature_levels: int,
        enc_n_points: int,
    ):
        super().__init__()
        self.encoder = DeformableEncoder(
            num_encoder_layers,
            d_model=d_model,
            d_ffn=dim_feedforward,
            dropout=dropout,
            n_levels=num_feature_levels,
            n_heads=nhead,
            n_points=enc_n_points,
        )
        self.level_embed = nn.Parameter(torch.empty(num_feature_levels, d_model))
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for m in self.modules():
            if isinstance(m, MSDeformAttn):
                m._reset_parameters()
        nn.init.normal_(self.level_embed)

    def forward(self, srcs: List[torch.Tensor], pos_embeds: List[torch.Tensor]):
        """srcs/pos_embeds: per level (B, C, H_l, W_l). Returns (B, S, C), [(H_l, W_l)] and the
        level start indices, both as integers (the level sizes never leave the host)."""
        shapes = [(x.shape[-2], x.shape[-1]) for x in srcs]
        flat = torch.cat([x.flatten(2).transpose(1, 2) for x in srcs], 1)
        pos = torch.cat(
            [p.flatten(2).transpose(1, 2) + self.level_embed[i].view(1, 1, -1) for i, p in enumerate(pos_embeds)], 1
        )
        level_start_index = [0]
        for h, w in shapes[:-1]:
            level_start_index.append(level_start_index[-1] + h * w)
        memory = self.encoder(flat, pos, shapes, level_start_index)
        return memory, shapes, level_start_index


@PIXEL_DECODER_REGISTRY.register()
class MSDeformAttnPixelDecoder(nn.Module):
    """Pixel decoder: deformable encoder over the low-resolution levels plus an FPN path.

    ``forward_features`` returns ``mask_features`` (B, mask_dim, H/4, W/4) and the encoder's
    multi-scale memories, ordered from the lowest resolution (stride 32) to the highest.
    """

    @configurable
    def __init__(
        self,
        input_shape: Dict[str, ShapeSpec],
        *,
        transformer_dropout: float,
        transformer_nheads: int,
        transformer_dim_feedforward: int,
        transformer_enc_layers: int,
        transformer_n_points: int,
        conv_dim: int,
        mask_dim: int,
        norm: str,
        transformer_in_features: List[str],
        common_stride: int,
    ):
        super().__init__()
        shapes = sorted(input_shape.items(), key=lambda kv: kv[1].stride)
        self.in_features = [k for k, _ in shapes]
        feature_channels = [v.channels for _, v in shapes]
        missing = [f for f in transformer_in_features if f not in input_shape]
        if missing:
            raise ValueError(
                f"MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES names {missing}, "
                f"which the backbone does not output (it gives {sorted(input_shape)})"
            )
        # encoder levels, ordered from the lowest resolution to the highest
        tr = sorted(((k, input_shape[k]) for k in transformer_in_features), key=lambda kv: -kv[1].stride)
        self.transformer_in_features = [k for k, _ in tr]
        self.transformer_num_feature_levels = len(tr)
        self.input_proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(v.channels, conv_dim, kernel_size=1), nn.GroupNorm(32, conv_dim)) for _, v in tr
        )
        for proj in self.input_proj:
            nn.init.xavier_uniform_(proj[0].weight, gain=1)
            nn.init.constant_(proj[0].bias, 0)
        self.transformer = DeformableTransformerEncoderOnly(
            d_model=conv_dim,
            nhead=transformer_nheads,
            num_encoder_layers=transformer_enc_layers,
            dim_feedforward=transformer_dim_feedforward,
            dropout=transformer_dropout,
            num_feature_levels=self.transformer_num_feature_levels,
            enc_n_points=transformer_n_points,
        )
        self.pe_layer = PositionEmbeddingSine(conv_dim // 2, normalize=True)
        self.mask_dim = mask_dim
        self.mask_features = Conv2d(conv_dim, mask_dim, kernel_size=1)
        weight_init.c2_xavier_fill(self.mask_features)
        self.maskformer_num_feature_levels = 3  # memories handed to the transformer decoder
        self.common_stride = common_stride
        min_encoder_stride = min(v.stride for _, v in tr)
        num_fpn = int(math.log2(min_encoder_stride) - math.log2(common_stride))
        use_bias = norm == ""
        self.lateral_convs, self.output_convs = [], []
        for idx, channels in enumerate(feature_channels[:num_fpn]):
            lateral = Conv2d(channels, conv_dim, kernel_size=1, bias=use_bias, norm=get_norm(norm, conv_dim))
            output = Conv2d(
                conv_dim,
                conv_dim,
                kernel_size=3,
                padding=1,
                bias=use_bias,
                norm=get_norm(norm, conv_dim),
                activation=F.relu,
            )
            weight_init.c2_xavier_fill(lateral)
            weight_init.c2_xavier_fill(output)
            self.add_module(f"adapter_{idx + 1}", lateral)
            self.add_module(f"layer_{idx + 1}", output)
            self.lateral_convs.append(lateral)
            self.output_convs.append(output)
        # FPN order: from the encoder's highest resolution outward
        self.lateral_convs = self.lateral_convs[::-1]
        self.output_convs = self.output_convs[::-1]
        self._fpn_features = self.in_features[:num_fpn][::-1]

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        sh = cfg.MODEL.SEM_SEG_HEAD
        return {
            "input_shape": {k: v for k, v in input_shape.items() if k in sh.IN_FEATURES},
            "conv_dim": sh.CONVS_DIM,
            "mask_dim": sh.MASK_DIM,
            "norm": sh.NORM,
            "transformer_dropout": cfg.MODEL.MASK_FORMER.DROPOUT,
            "transformer_nheads": sh.DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS,
            "transformer_dim_feedforward": sh.DEFORMABLE_TRANSFORMER_ENCODER_DIM_FEEDFORWARD,
            "transformer_enc_layers": sh.TRANSFORMER_ENC_LAYERS,
            "transformer_n_points": sh.DEFORMABLE_TRANSFORMER_ENCODER_N_POINTS,
            "transformer_in_features": sh.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES,
            "common_stride": sh.COMMON_STRIDE,
        }

    def forward_features(self, features: Dict[str, torch.Tensor]):
        """Returns (mask_features (B, mask_dim, H/4, W/4), the lowest-resolution encoder output
        (B, C, H_0, W_0), [memories (B, C, H_l, W_l)] x 3, lowest resolution first).

        The middle element is kept for interface parity with Mask2Former (it is ``memories[0]``).
        Runs in fp32 even under autocast (deformable attention sampling is precision-sensitive).
        """
        device_type = next(iter(features.values())).device.type
        if not torch.amp.is_autocast_available(device_type):  # e.g. "meta": no autocast to leave
            return self._forward_features_fp32(features)
        with torch.autocast(device_type=device_type, enabled=False):
            return self._forward_features_fp32(features)

    def _forward_features_fp32(self, features: Dict[str, torch.Tensor]):
        srcs, pos = [], []
        for i, name in enumerate(self.transformer_in_features):
            x = features[name].float()
            srcs.append(self.input_proj[i](x))
            pos.append(self.pe_layer(x))
        memory, shapes, _ = self.transformer(srcs, pos)
        b = memory.shape[0]
        sizes = [h * w for h, w in shapes]
        outs = [m.transpose(1, 2).reshape(b, -1, h, w) for m, (h, w) in zip(memory.split(sizes, dim=1), shapes)]
        for name, lateral, output in zip(self._fpn_features, self.lateral_convs, self.output_convs):
            x = features[name].float()
            y = lateral(x) + F.interpolate(outs[-1], size=x.shape[-2:], mode="bilinear", align_corners=False)
            outs.append(output(y))
        multi_scale = outs[: self.maskformer_num_feature_levels]
        return self.mask_features(outs[-1]), outs[0], multi_scale
