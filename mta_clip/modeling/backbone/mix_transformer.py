"""SegFormer's Mix Transformer (MiT-B0..B5; the paper's MiT-B4, Table 3 left) as a Detectron2 backbone.

Four stages, each: overlapping patch embedding (strided conv, kernel 7 / stride 4, then kernel 3 /
stride 2, padding k // 2, LayerNorm), blocks of efficient self-attention (keys and values from a
spatially reduced map: conv with kernel = stride = ``sr_ratio``, LayerNorm) and Mix-FFN (Linear,
3x3 depth-wise conv, GELU, Linear), then a LayerNorm; outputs ``res2..res5`` at strides 4/8/16/32.

Parameter names are those of the official ImageNet files (NVlabs/SegFormer ``mit_b4.pth``):
``patch_embed{s}.proj|norm``, ``block{s}.{j}.norm1``, ``.attn.q``, ``.attn.kv``, ``.attn.sr``,
``.attn.norm``, ``.attn.proj``, ``.norm2``, ``.mlp.fc1``, ``.mlp.dwconv.dwconv``, ``.mlp.fc2``,
``norm{s}`` (s = 1..4). Hugging Face ``SegformerModel`` state dicts (both the hub files' layout and
the layout of transformers >= 5 in memory) are converted on load.
"""

import logging
import re
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from torch import nn

from ...layers.drop_path import DropPath
from .freeze import warn_unused_freeze_at
from .weight_files import load_backbone_weights, read_backbone_weights

logger = logging.getLogger(__name__)

__all__ = ["MixTransformer", "mit_official_state_dict"]

_STAGES = ("res2", "res3", "res4", "res5")
_NORM_EPS = 1e-6  # eps of the block and stage LayerNorms in the official MiT (patch / reduction norms: 1e-5)
_CLASSIFIER_PREFIXES = ("head.",)  # ImageNet classifier of the official files


class _OverlapPatchEmbed(nn.Module):
    def __init__(self, in_channels: int, dim: int, kernel: int, stride: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=kernel, stride=stride, padding=kernel // 2)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor):
        """x: (B, C_in, H, W) -> tokens (B, h*w, dim), h, w."""
        x = self.proj(x)
        h, w = x.shape[-2:]
        return self.norm(x.flatten(2).transpose(1, 2)), h, w


class _EfficientSelfAttention(nn.Module):
    """Multi-head attention whose keys / values come from the map reduced ``sr_ratio`` times per side."""

    def __init__(self, dim: int, heads: int, sr_ratio: int):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """x: (B, h*w, C) -> (B, h*w, C)."""
        b, n, c = x.shape
        d = c // self.heads
        q = self.q(x).reshape(b, n, self.heads, d).transpose(1, 2)
        kv_in = x
        if self.sr_ratio > 1:
            kv_in = self.sr(x.transpose(1, 2).reshape(b, c, h, w)).flatten(2).transpose(1, 2)
            kv_in = self.norm(kv_in)
        k, v = self.kv(kv_in).reshape(b, -1, 2, self.heads, d).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, N, d), scale d ** -0.5
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class _DepthwiseConv(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=3, padding=1, groups=dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, n, c = x.shape
        return self.dwconv(x.transpose(1, 2).reshape(b, c, h, w)).flatten(2).transpose(1, 2)


class _MixFFN(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = _DepthwiseConv(hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        return self.fc2(self.act(self.dwconv(self.fc1(x), h, w)))


class _MiTBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float, sr_ratio: int, drop_path: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=_NORM_EPS)
        self.attn = _EfficientSelfAttention(dim, heads, sr_ratio)
        self.norm2 = nn.LayerNorm(dim, eps=_NORM_EPS)
        self.mlp = _MixFFN(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path, "sample")

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), h, w))
        return x + self.drop_path(self.mlp(self.norm2(x), h, w))


@BACKBONE_REGISTRY.register()
class MixTransformer(Backbone):
    """SegFormer's MiT: ``res2..res5`` at strides 4/8/16/32 with ``embed_dims`` channels
    (MiT-B4: 64/128/320/512; depths 3/8/27/3)."""

    @configurable
    def __init__(
        self,
        *,
        embed_dims: Sequence[int] = (64, 128, 320, 512),
        num_heads: Sequence[int] = (1, 2, 5, 8),
        depths: Sequence[int] = (3, 8, 27, 3),
        sr_ratios: Sequence[int] = (8, 4, 2, 1),
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.1,
        out_features: Sequence[str] = _STAGES,
        weights: Optional[Dict[str, torch.Tensor]] = None,
        weights_source: str = "",
    ):
        """
        Args:
            embed_dims, num_heads, depths, sr_ratios: per stage (MiT-B4 defaults).
            mlp_ratio: Mix-FFN hidden width / embed dim (4 in every MiT).
            drop_path_rate: stochastic depth of the last block; linear from 0 over all blocks.
            out_features: subset of res2..res5 (stages up to the last one requested are built).
            weights: official or Hugging Face state dict (see :func:`mit_official_state_dict`); None = random init.
            weights_source: file name for messages.
        """
        super().__init__()
        lists = {"EMBED_DIMS": embed_dims, "NUM_HEADS": num_heads, "DEPTHS": depths, "SR_RATIOS": sr_ratios}
        for key, value in lists.items():
            if len(value) != 4 or min(int(v) for v in value) < 1:
                raise ValueError(
                    f"MixTransformer {key.lower()} {list(value)} (MODEL.MIT.{key}): expected 4 positive ints"
                )
        for s in range(4):
            if embed_dims[s] % num_heads[s]:
                raise ValueError(
                    f"MixTransformer stage {s + 1}: embed dim {embed_dims[s]} is not divisible by "
                    f"{num_heads[s]} heads (MODEL.MIT.EMBED_DIMS / NUM_HEADS)"
                )
        unknown = [f for f in out_features if f not in _STAGES]
        if unknown or not out_features:
            raise ValueError(
                f"MixTransformer out_features {list(out_features)} (MODEL.MIT.OUT_FEATURES): "
                f"expected a subset of {_STAGES}"
            )
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(
                f"MixTransformer drop_path_rate {drop_path_rate} (MODEL.MIT.DROP_PATH_RATE): expected [0, 1)"
            )
        self._out_features = list(out_features)
        self.num_stages = 1 + max(_STAGES.index(f) for f in out_features)
        total = sum(depths)
        rates = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        start = 0
        for s in range(self.num_stages):
            in_ch = 3 if s == 0 else embed_dims[s - 1]
            kernel, stride = (7, 4) if s == 0 else (3, 2)
            setattr(self, f"patch_embed{s + 1}", _OverlapPatchEmbed(in_ch, embed_dims[s], kernel, stride))
            setattr(
                self,
                f"block{s + 1}",
                nn.ModuleList(
                    [
                        _MiTBlock(embed_dims[s], num_heads[s], mlp_ratio, sr_ratios[s], rates[start + j])
                        for j in range(depths[s])
                    ]
                ),
            )
            setattr(self, f"norm{s + 1}", nn.LayerNorm(embed_dims[s], eps=_NORM_EPS))
            start += depths[s]
        if weights is None:
            self.apply(_init_weights)
        else:  # every tensor comes from the file (a partial file is an error): no random init to overwrite
            self._load(weights, weights_source or "MiT weights")

        self._out_feature_strides = {f: 4 * 2**i for i, f in enumerate(_STAGES)}
        self._out_feature_channels = {f: int(embed_dims[i]) for i, f in enumerate(_STAGES)}

    def _load(self, weights: Dict[str, torch.Tensor], source: str) -> None:
        weights = mit_official_state_dict(weights)
        parts = ("patch_embed", "block", "norm")
        built = tuple(f"{part}{s + 1}." for s in range(self.num_stages) for part in parts)
        unbuilt = tuple(f"{part}{s + 1}." for s in range(self.num_stages, 4) for part in parts)
        weights = {k: v for k, v in weights.items() if k.startswith(built) or not k.startswith(unbuilt)}
        load_backbone_weights(self, weights, "MixTransformer", source, ignored_prefixes=_CLASSIFIER_PREFIXES)

    @classmethod
    def from_config(cls, cfg, input_shape: ShapeSpec):
        if input_shape.channels != 3:
            raise ValueError(f"MixTransformer takes 3-channel images, got {input_shape.channels} (MODEL.PIXEL_MEAN)")
        mit = cfg.MODEL.MIT
        warn_unused_freeze_at(cfg, "MixTransformer", "the MiT trains all its stages; set it to 0")
        weights = None
        if mit.WEIGHTS:
            weights = read_backbone_weights(
                mit.WEIGHTS,
                "MODEL.MIT.WEIGHTS",
                "MiT-B4 ImageNet-1k weights: SegFormer's mit_b4.pth (NVlabs/SegFormer README, 'ImageNet-1K "
                "pretrained weights'), or model.safetensors / pytorch_model.bin of the Hugging Face repo "
                "nvidia/mit-b4.",
            )
        else:
            logger.warning(
                "MODEL.MIT.WEIGHTS is empty: MixTransformer is randomly initialized (not the paper's setting)"
            )
        return {
            "embed_dims": tuple(mit.EMBED_DIMS),
            "num_heads": tuple(mit.NUM_HEADS),
            "depths": tuple(mit.DEPTHS),
            "sr_ratios": tuple(mit.SR_RATIOS),
            "mlp_ratio": mit.MLP_RATIO,
            "drop_path_rate": mit.DROP_PATH_RATE,
            "out_features": tuple(mit.OUT_FEATURES),
            "weights": weights,
            "weights_source": mit.WEIGHTS,
        }

    @property
    def size_divisibility(self) -> int:
        return 32

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """x: (B, 3, H, W) normalized images -> {res2..res5: (B, C_s, ~H/stride, ~W/stride)}
        (exactly H/stride when H, W are multiples of 32)."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"MixTransformer takes (B, 3, H, W) input, got {tuple(x.shape)}")
        b = x.shape[0]
        out = {}
        for s in range(self.num_stages):
            x, h, w = getattr(self, f"patch_embed{s + 1}")(x)
            for block in getattr(self, f"block{s + 1}"):
                x = block(x, h, w)
            x = getattr(self, f"norm{s + 1}")(x)
            x = x.transpose(1, 2).reshape(b, -1, h, w)
            if _STAGES[s] in self._out_features:
                out[_STAGES[s]] = x
        return out


def _init_weights(m: nn.Module) -> None:
    """SegFormer's random init: truncated normal 0.02 for Linear, He (fan-out) normal for convs."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Conv2d):
        fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
        nn.init.normal_(m.weight, std=(2.0 / fan_out) ** 0.5)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


# Hugging Face -> official names. Hub files (transformers < 5 module names, also read by >= 5):
_HF_HUB = [
    (r"^encoder\.patch_embeddings\.(\d)\.proj\.", lambda m: f"patch_embed{int(m[1]) + 1}.proj."),
    (r"^encoder\.patch_embeddings\.(\d)\.layer_norm\.", lambda m: f"patch_embed{int(m[1]) + 1}.norm."),
    (r"^encoder\.block\.(\d)\.(\d+)\.", lambda m: f"block{int(m[1]) + 1}.{m[2]}."),
    (r"^encoder\.layer_norm\.(\d)\.", lambda m: f"norm{int(m[1]) + 1}."),
]
_HF_HUB_BLOCK = {
    "layer_norm_1.": "norm1.",
    "layer_norm_2.": "norm2.",
    "attention.self.query.": "attn.q.",
    "attention.self.key.": "attn.k.",
    "attention.self.value.": "attn.v.",
    "attention.self.sr.": "attn.sr.",
    "attention.self.layer_norm.": "attn.norm.",
    "attention.output.dense.": "attn.proj.",
    "mlp.dense1.": "mlp.fc1.",
    "mlp.dense2.": "mlp.fc2.",
    "mlp.dwconv.dwconv.": "mlp.dwconv.dwconv.",
}
# transformers >= 5 module names (SegformerModel().state_dict()):
_HF_V5 = [
    (r"^stages\.(\d)\.patch_embeddings\.proj\.", lambda m: f"patch_embed{int(m[1]) + 1}.proj."),
    (r"^stages\.(\d)\.patch_embeddings\.layer_norm\.", lambda m: f"patch_embed{int(m[1]) + 1}.norm."),
    (r"^stages\.(\d)\.blocks\.(\d+)\.", lambda m: f"block{int(m[1]) + 1}.{m[2]}."),
    (r"^stages\.(\d)\.layer_norm\.", lambda m: f"norm{int(m[1]) + 1}."),
]
_HF_V5_BLOCK = {
    "layernorm_before.": "norm1.",
    "layernorm_after.": "norm2.",
    "attention.q_proj.": "attn.q.",
    "attention.k_proj.": "attn.k.",
    "attention.v_proj.": "attn.v.",
    "attention.sequence_reduction.sequence_reduction.": "attn.sr.",
    "attention.sequence_reduction.layer_norm.": "attn.norm.",
    "attention.o_proj.": "attn.proj.",
    "mlp.fc1.": "mlp.fc1.",
    "mlp.fc2.": "mlp.fc2.",
    "mlp.dwconv.dwconv.": "mlp.dwconv.dwconv.",
}


def mit_official_state_dict(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Official (NVlabs) MiT names for a state dict in the official layout (returned as is) or in a
    Hugging Face layout: hub files (``[segformer.]encoder.block.0.0.attention.self.query.weight``) or
    transformers >= 5 (``stages.0.blocks.0.attention.q_proj.weight``). Separate key / value
    projections are concatenated into ``attn.kv`` (keys first); the HF classifier becomes ``head.*``."""
    prefix = "segformer."
    if any(k.startswith(prefix) for k in state_dict):
        state_dict = {(k[len(prefix) :] if k.startswith(prefix) else k): v for k, v in state_dict.items()}
    if any(k.startswith("encoder.") for k in state_dict):
        rules, block_names = _HF_HUB, _HF_HUB_BLOCK
    elif any(k.startswith("stages.") for k in state_dict):
        rules, block_names = _HF_V5, _HF_V5_BLOCK
    else:
        return dict(state_dict)
    out: Dict[str, torch.Tensor] = {}
    unknown: List[str] = []
    for key, value in state_dict.items():
        if key.startswith("classifier."):
            out["head." + key[len("classifier.") :]] = value
            continue
        new = None
        for pattern, repl in rules:
            m = re.match(pattern, key)
            if m:
                new = repl(m) + key[m.end() :]
                break
        if new is None:
            unknown.append(key)
            continue
        if new.startswith("block"):
            head, rest = new.split(".", 2)[:2], new.split(".", 2)[2]
            for old, official in block_names.items():
                if rest.startswith(old):
                    rest = official + rest[len(old) :]
                    break
            else:
                unknown.append(key)
                continue
            new = ".".join(head) + "." + rest
        out[new] = value
    if unknown:
        raise ValueError(f"MiT weights in a Hugging Face layout have unknown entries: {sorted(unknown)[:10]}")
    for key in [k for k in out if ".attn.k." in k]:
        v_key = key.replace(".attn.k.", ".attn.v.")
        if v_key not in out:
            raise ValueError(f"MiT weights: {key} has no matching value projection {v_key}")
        out[key.replace(".attn.k.", ".attn.kv.")] = torch.cat([out.pop(key), out.pop(v_key)], dim=0)
    stray = [k for k in out if ".attn.v." in k]
    if stray:
        raise ValueError(f"MiT weights: value projections without key projections: {stray[:5]}")
    return out
