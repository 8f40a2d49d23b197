#!/usr/bin/env python
"""Parameter counts per module and FLOPs (fvcore) of a model built from a config.

    python tools/analyze_model.py --config-file configs/ade20k/X.yaml --tasks parameter flop --size 512

``parameter``: total / trainable / frozen parameters of every module down to ``--depth``.
``flop``: FLOPs of one eval-mode forward pass on a random ``--size`` x ``--size`` image, per module
down to ``--depth`` (fvcore counts one multiply-add as one flop; ``aten::grid_sampler``, used by
the PyTorch path of the deformable attention, is counted as 4 per output element for bilinear
sampling, and the compiled deformable-attention op the same way; ``aten::baddbmm`` like ``bmm``;
``scaled_dot_product_attention`` as its two matmuls; cheap element-wise operators are skipped). Other
operators fvcore cannot count are listed; their FLOPs are not included.
The model is randomly initialized: no weight file is read (MODEL.WEIGHTS and the CLIP file of the
config are ignored; weights do not change counts), so the analysis needs only the config.
MTA-CLIP's frozen prompt text encoder runs once per model (its output is cached at test time): its
FLOPs are reported apart from the per-image FLOPs, which do not include it.
"""

import argparse
import logging
import os
import sys
from collections import Counter
from typing import Dict, List, Optional, Sequence

import torch
from tabulate import tabulate

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import mta_clip  # noqa: E402,F401  (first: registers models, quiets third-party import warnings)

# isort: split
from detectron2.modeling import build_model  # noqa: E402
from detectron2.utils.analysis import FlopCountAnalysis  # noqa: E402

from mta_clip.predictor import load_config  # noqa: E402

logger = logging.getLogger("mta_clip.analyze_model")


def _depth(name: str) -> int:
    return 0 if name == "" else name.count(".") + 1


def parameter_rows(model: torch.nn.Module, depth: int) -> List[List]:
    """Rows (module, total, trainable, frozen) for every module with parameters, to ``depth``."""
    total, trainable = Counter(), Counter()
    for pname, p in model.named_parameters():
        parts = pname.split(".")[:-1]
        for d in range(0, min(depth, len(parts)) + 1):
            key = ".".join(parts[:d])
            total[key] += p.numel()
            if p.requires_grad:
                trainable[key] += p.numel()
    rows = []
    for name, _ in model.named_modules():
        if name in total and _depth(name) <= depth:
            rows.append([name or "(model)", total[name], trainable[name], total[name] - trainable[name]])
    return rows


def _grid_sampler_flops(inputs, outputs) -> int:
    shape = outputs[0].type().sizes()
    n = 1
    for s in shape:
        n *= s
    return 4 * n


def _baddbmm_flops(inputs, outputs) -> int:
    b, n, m = inputs[1].type().sizes()
    p = inputs[2].type().sizes()[-1]
    return b * n * m * p


def _ms_deform_attn_flops(inputs, outputs) -> int:
    """Compiled deformable attention ``mta_clip::ms_deform_attn(value, level_sizes, locations,
    weights)``: value (N, S, M, D), locations (N, Lq, M, L, P, 2); 4 bilinear multiply-adds per
    sampled channel, like ``aten::grid_sampler`` on the PyTorch path."""
    d = inputs[0].type().sizes()[-1]
    n, lq, m, lv, p, _ = inputs[2].type().sizes()
    return 4 * n * lq * m * lv * p * d


def _sdpa_flops(inputs, outputs) -> int:
    """scaled_dot_product_attention: q (..., Lq, E), k (..., Lk, E), v (..., Lk, Ev)."""
    q, k, v = (inputs[i].type().sizes() for i in range(3))
    batch = 1
    for s in q[:-2]:
        batch *= s
    return batch * q[-2] * k[-2] * (q[-1] + v[-1])


# Element-wise / indexing operators whose cost is negligible next to the matmuls and convolutions.
_CHEAP_OPS = (
    "aten::all",
    "aten::any",
    "aten::clone",
    "aten::cos",
    "aten::sin",
    "aten::linspace",
    "aten::lt",
    "aten::gt",
    "aten::le",
    "aten::ge",
    "aten::eq",
    "aten::masked_fill",
    "aten::masked_fill_",
    "aten::pad",
    "aten::pow",
    "aten::repeat",
    "aten::resolve_conj",
    "aten::resolve_neg",
    "aten::sum",
    "aten::mean",
    "aten::cumsum",
    "aten::arange",
    "aten::meshgrid",
    "aten::stack",
    "aten::unflatten",
    "aten::embedding",
)


def flop_analysis(model: torch.nn.Module, size: int, device: str) -> FlopCountAnalysis:
    image = torch.randint(0, 256, (3, size, size), dtype=torch.uint8, device=device)
    inputs = ([{"image": image, "height": size, "width": size}],)
    flops = FlopCountAnalysis(model, inputs)
    flops.set_op_handle("aten::grid_sampler", _grid_sampler_flops)
    flops.set_op_handle("aten::baddbmm", _baddbmm_flops)
    flops.set_op_handle("aten::scaled_dot_product_attention", _sdpa_flops)
    flops.set_op_handle("mta_clip::ms_deform_attn", _ms_deform_attn_flops)
    flops.set_op_handle(**{op: None for op in _CHEAP_OPS})
    flops.unsupported_ops_warnings(False)
    flops.uncalled_modules_warnings(False)
    return flops


def text_encoder_flops(text_encoder: torch.nn.Module) -> int:
    """FLOPs of one uncached run of the prompt text encoder (all K prompts x C classes)."""
    text_encoder.invalidate_cache()
    flops = FlopCountAnalysis(text_encoder, ())
    flops.set_op_handle("aten::scaled_dot_product_attention", _sdpa_flops)
    flops.set_op_handle("aten::baddbmm", _baddbmm_flops)
    flops.set_op_handle(**{op: None for op in _CHEAP_OPS})
    flops.unsupported_ops_warnings(False)
    flops.uncalled_modules_warnings(False)
    total = flops.total()
    text_encoder.invalidate_cache()
    return total


def flop_rows(flops: FlopCountAnalysis, depth: int) -> List[List]:
    """Rows (module, GFLOPs) to ``depth`` (the tracing wrapper's ``model.`` prefix removed)."""
    by_module: Dict[str, int] = {}
    for name, n in flops.by_module().items():
        if name == "":
            continue
        name = name[len("model") :].lstrip(".") if name.startswith("model") else name
        by_module[name] = n
    rows = []
    for name, n in by_module.items():
        if _depth(name) <= depth and n > 0:
            rows.append([name or "(model)", f"{n / 1e9:.3f}"])
    return rows


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--tasks", nargs="+", choices=["parameter", "flop"], default=["parameter", "flop"])
    parser.add_argument("--size", type=int, default=512, help="side of the square input image")
    parser.add_argument("--depth", type=int, default=1, help="module nesting shown (1 = top-level modules)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--opts", default=[], nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    cfg = load_config(args.config_file, list(args.opts) + ["MODEL.DEVICE", args.device])
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.CLIP.WEIGHTS = ""
    cfg.MODEL.VIT.WEIGHTS = ""
    cfg.MODEL.MIT.WEIGHTS = ""
    cfg.freeze()
    logging.getLogger("mta_clip").setLevel(logging.ERROR)  # "random init" warnings are expected here
    model = build_model(cfg)
    model.eval()
    print(f"Model {cfg.MODEL.META_ARCHITECTURE} from {args.config_file}")
    if "parameter" in args.tasks:
        rows = parameter_rows(model, args.depth)
        print("\nParameters:")
        print(
            tabulate(
                [[r[0], f"{r[1]:,}", f"{r[2]:,}", f"{r[3]:,}"] for r in rows],
                headers=["module", "total", "trainable", "frozen"],
                tablefmt="pipe",
                colalign=("left", "right", "right", "right"),
            )
        )
    if "flop" in args.tasks:
        text_encoder = getattr(model, "text_encoder", None)
        with torch.no_grad():
            if text_encoder is not None:
                text = text_encoder_flops(text_encoder)
                text_encoder()  # fills the test-time cache: the per-image pass does not run it
            flops = flop_analysis(model, args.size, args.device)
            total = flops.total()
        if text_encoder is not None:
            print(
                f"\nText encoder, once per model (K={text_encoder.num_prompts} prompts x C classes, cached "
                f"at test time): {text / 1e9:.3f} GFLOPs"
            )
        print(f"\nFLOPs per {args.size}x{args.size} image (1 multiply-add = 1 flop):")
        print(
            tabulate(
                flop_rows(flops, args.depth), headers=["module", "GFLOPs"], tablefmt="pipe", colalign=("left", "right")
            )
        )
        print(f"Total per image: {total / 1e9:.3f} GFLOPs")
        unsupported = flops.unsupported_ops()
        if unsupported:
            ops = ", ".join(f"{k} ({v}x)" for k, v in sorted(unsupported.items()))
            print(f"Not counted (no fvcore handle): {ops}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
