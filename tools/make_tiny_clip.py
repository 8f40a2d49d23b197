#!/usr/bin/env python
"""Writes a tiny CLIP model with random weights in the formats of OpenAI's released files.

For tests and for trying the pipeline without real weights (nothing is downloaded). The depth of
the chosen architecture is kept (RN50 [3,4,6,3], RN101 [3,4,23,3], ViT-B-16: 12 blocks, patch 16),
widths are tiny. Formats:

- ``torchscript``: a TorchScript archive whose ``torch.jit.load(f).state_dict()`` has OpenAI's keys
  (``visual.*``, ``transformer.*``, ``token_embedding.weight``, ``positional_embedding``,
  ``ln_final.*``, ``text_projection``, ``logit_scale``), convolution / linear / attention weights
  and projections stored in fp16 like OpenAI's ``RN50.pt``.
- ``state_dict``: ``torch.save`` of the same dict (fp32 by default).

Example::

    python tools/make_tiny_clip.py --arch RN50 --format torchscript --output pretrained/tiny_RN50.pt
"""

import argparse
import logging
import os
import sys
import tempfile
import warnings
from typing import Dict, Optional, Sequence

import torch
from torch import nn

logger = logging.getLogger("make_tiny_clip")

ARCHS = ("RN50", "RN101", "ViT-B-16")
_RESNET_LAYERS = {"RN50": (3, 4, 6, 3), "RN101": (3, 4, 23, 3)}
VOCAB_SIZE = 49408  # CLIP's BPE vocabulary (the tokenizer's ids must exist)
CONTEXT_LENGTH = 77


def tiny_clip_kwargs(
    arch: str = "RN50",
    vision_width: Optional[int] = None,
    vision_layers=None,
    text_width: int = 64,
    text_layers: int = 2,
    embed_dim: int = 32,
    image_size: int = 224,
) -> dict:
    """``open_clip.CLIP`` keyword arguments of a tiny model (heads = width // 64, as OpenAI's)."""
    if arch not in ARCHS:
        raise ValueError(f"unknown --arch {arch!r}; expected one of {ARCHS}")
    if text_width % 64:
        raise ValueError(f"text width {text_width} must be a multiple of 64 (one head per 64 channels)")
    if arch == "ViT-B-16":
        width = vision_width or 64
        if width % 64:
            raise ValueError(f"ViT width {width} must be a multiple of 64 (one head per 64 channels)")
        vision_cfg = dict(
            layers=int(vision_layers or 12), width=width, head_width=64, patch_size=16, image_size=image_size
        )
    else:
        width = vision_width or 8
        if width % 2:
            raise ValueError(f"ResNet width {width} must be even (stem width // 2, 32 * width // 64 pool heads)")
        layers = tuple(vision_layers or _RESNET_LAYERS[arch])
        vision_cfg = dict(layers=layers, width=width, head_width=64, patch_size=None, image_size=image_size)
    text_cfg = dict(
        context_length=CONTEXT_LENGTH,
        vocab_size=VOCAB_SIZE,
        width=text_width,
        heads=text_width // 64,
        layers=text_layers,
    )
    return dict(embed_dim=embed_dim, vision_cfg=vision_cfg, text_cfg=text_cfg, quick_gelu=True)


def _randomize(model: nn.Module, generator: torch.Generator) -> None:
    """Non-trivial norms (open_clip zero-inits bn3 and sets unit LayerNorms), random BN statistics."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.copy_(torch.rand(module.weight.shape, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(module.bias.shape, generator=generator) * 0.1)
                module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator) + 0.5)
            elif isinstance(module, nn.LayerNorm):
                module.weight.copy_(1 + torch.randn(module.weight.shape, generator=generator) * 0.1)
                module.bias.copy_(torch.randn(module.bias.shape, generator=generator) * 0.1)


def make_tiny_clip_state_dict(arch: str = "RN50", seed: int = 0, **dims) -> Dict[str, torch.Tensor]:
    """fp32 state dict with OpenAI's key names of a tiny random CLIP (``dims``: see
    :func:`tiny_clip_kwargs`)."""
    import open_clip

    kwargs = tiny_clip_kwargs(arch, **dims)
    torch.manual_seed(seed)
    model = open_clip.CLIP(**kwargs)
    generator = torch.Generator().manual_seed(seed + 1)
    _randomize(model, generator)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def openai_half_keys(state_dict: Dict[str, torch.Tensor]) -> set:
    """Keys OpenAI stores in fp16: conv / linear / attention weights and biases, projections."""
    half = set()
    for key, value in state_dict.items():
        if not value.is_floating_point():
            continue
        leaf = key.rsplit(".", 1)[-1]
        is_norm = any(part.startswith(("bn", "ln_")) for part in key.split(".")) or ".downsample.1." in key
        if key in ("text_projection", "visual.proj"):
            half.add(key)
        elif leaf in ("weight", "bias", "in_proj_weight", "in_proj_bias") and not is_norm and value.dim() >= 1:
            if key != "token_embedding.weight":
                half.add(key)
    return half


class _Node(nn.Module):
    """Holds parameters / buffers under OpenAI's names; never called."""


class _Archive(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.logit_scale


def _as_module(state_dict: Dict[str, torch.Tensor]) -> nn.Module:
    root = _Archive()
    for key, value in state_dict.items():
        parts = key.split(".")
        node = root
        for part in parts[:-1]:
            if not hasattr(node, part):
                node.add_module(part, _Node())
            node = getattr(node, part)
        if value.is_floating_point():
            node.register_parameter(parts[-1], nn.Parameter(value.clone(), requires_grad=False))
        else:
            node.register_buffer(parts[-1], value.clone())
    return root


def write_clip_weights(
    state_dict: Dict[str, torch.Tensor], output: str, fmt: str = "torchscript", half: Optional[bool] = None
) -> str:
    """Writes ``state_dict`` (OpenAI keys) as a TorchScript archive or a plain state dict.

    ``half`` (default: True for torchscript, False for state_dict) stores the keys of
    :func:`openai_half_keys` in fp16. The file appears atomically (temp file + ``os.replace``).
    """
    if fmt not in ("torchscript", "state_dict"):
        raise ValueError(f"unknown format {fmt!r}; expected 'torchscript' or 'state_dict'")
    if "logit_scale" not in state_dict:
        raise ValueError("state dict lacks 'logit_scale': not a CLIP state dict with OpenAI's keys")
    if half is None:
        half = fmt == "torchscript"
    halves = openai_half_keys(state_dict) if half else set()
    tensors = {k: (v.half() if k in halves else v) for k, v in state_dict.items()}
    folder = os.path.dirname(os.path.abspath(output))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tiny_clip_", suffix=".pt", dir=folder)
    os.close(fd)
    try:
        if fmt == "torchscript":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch.jit.* deprecation notices
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                traced = torch.jit.trace(_as_module(tensors), (torch.ones(()),))
                torch.jit.save(traced, tmp)
        else:
            torch.save(tensors, tmp)
        os.replace(tmp, output)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return output


def make_tiny_clip(
    output: str, arch: str = "RN50", fmt: str = "torchscript", half: Optional[bool] = None, seed: int = 0, **dims
) -> str:
    """Writes a tiny random CLIP to ``output``; returns the path. See the module docstring."""
    state_dict = make_tiny_clip_state_dict(arch, seed=seed, **dims)
    write_clip_weights(state_dict, output, fmt, half)
    logger.info("wrote tiny %s CLIP (%s) to %s", arch, fmt, output)
    return output


def main(argv: Optional[Sequence[str]] = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", choices=ARCHS, default="RN50", help="architecture whose depth is kept")
    parser.add_argument("--format", dest="fmt", choices=("torchscript", "state_dict"), default="torchscript")
    parser.add_argument("--output", required=True, help="file to write")
    parser.add_argument("--vision-width", type=int, default=None, help="ResNet base width (default 8) / ViT width (64)")
    parser.add_argument("--vision-layers", type=int, nargs="+", default=None, help="override the depth (4 ints or 1)")
    parser.add_argument("--text-width", type=int, default=64, help="text transformer width (multiple of 64)")
    parser.add_argument("--text-layers", type=int, default=2, help="text transformer blocks")
    parser.add_argument("--embed-dim", type=int, default=32, help="joint embedding width D")
    parser.add_argument("--image-size", type=int, default=224, help="pretraining resolution (pos. embedding grid)")
    parser.add_argument(
        "--precision",
        choices=("auto", "fp16", "fp32"),
        default="auto",
        help="auto: OpenAI's fp16 mix for torchscript, fp32 for state_dict",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    layers = args.vision_layers
    if layers is not None and len(layers) == 1:
        layers = layers[0]
    half = {"auto": None, "fp16": True, "fp32": False}[args.precision]
    return make_tiny_clip(
        args.output,
        args.arch,
        args.fmt,
        half,
        args.seed,
        vision_width=args.vision_width,
        vision_layers=layers,
        text_width=args.text_width,
        text_layers=args.text_layers,
        embed_dim=args.embed_dim,
        image_size=args.image_size,
    )


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    path = main()
    logging.getLogger("make_tiny_clip").info("done: %s", path)
    sys.exit(0)
