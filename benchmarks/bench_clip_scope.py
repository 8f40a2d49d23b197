"""Benchmark: does the frozen text tower belong in the full-model gradient-clipping norm?

The MTA-CLIP authors freeze the CLIP text tower by a learning rate of 0 (mmengine custom key
``text_encoder: lr_mult 0``), not by ``requires_grad=False``: its gradients are computed in every
backward pass and enter the full-model norm of their gradient clipping (max norm 0.01). This
project freezes it with ``requires_grad=False`` unless ``SOLVER.CLIP_GRADIENTS.INCLUDE_FROZEN_TEXT``
is set. Measured here on the ADE20k MTA-CLIP recipe at full size (real-sized text tower: width 512,
12 blocks, K * (C + 1) = 453 prompts), random weights, random images and block masks:

- ``|g_rest|``: norm of all trainable gradients except the text tower (identical in both variants:
  the same batch, the same random point sampling);
- ``|g_text|``: norm of the text tower's gradients (only computed by the authors' variant);
- clip factor ``min(1, 0.01 / |g|)`` of both variants and their ratio (how much smaller every
  applied update is with the text tower in the norm);
- time of forward + backward of both variants (median over steps).

Usage: ``OMP_NUM_THREADS=1 python benchmarks/bench_clip_scope.py [--size 256 --batch 2 --steps 3]``.
Random weights: the gradient norms of a trained model differ; the table says how large the
effect can be and what it costs, not its value at the end of a real training.
"""

import argparse
import importlib.util
import math
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _bench_mtaclip():
    spec = importlib.util.spec_from_file_location("bench_mtaclip", os.path.join(ROOT, "benchmarks", "bench_mtaclip.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backbone", default="RN50", choices=["RN50", "RN101", "ViT-B-16"])
    p.add_argument("--size", type=int, default=256, help="image side (the text tower does not depend on it)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--classes-per-image", type=int, default=6)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--device", default="cpu")
    return p.parse_args(argv)


def _norm(params) -> float:
    import torch

    grads = [p.grad.detach().double().norm() ** 2 for p in params if p.grad is not None]
    return math.sqrt(float(torch.stack(grads).sum())) if grads else 0.0


def main(argv=None):
    import torch

    args = _parse_args(argv)
    bm = _bench_mtaclip()
    build_args = argparse.Namespace(device=args.device, size=args.size, backbone=args.backbone, opts=[])
    cfg, model = bm._build(build_args, "mtaclip")
    model.train()
    text = [p for p in model.text_encoder._text_parameters()]
    text_ids = {id(p) for p in text}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in text_ids]
    max_norm = cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE
    rows = []
    for step in range(args.steps):
        batch = bm._make_batch(
            args.size, args.batch, args.classes_per_image, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, seed=step
        )
        result = {}
        for variant, text_grad in (("ours", False), ("authors", True)):
            for p in text:
                p.requires_grad_(text_grad)
            model.zero_grad(set_to_none=True)
            torch.manual_seed(1000 + step)  # the same point sampling in both variants
            start = time.perf_counter()
            losses = model(batch)
            sum(losses.values()).backward()
            elapsed = time.perf_counter() - start
            g_rest = _norm(rest)
            g_text = _norm(text) if text_grad else 0.0
            total = math.hypot(g_rest, g_text)
            result[variant] = dict(time=elapsed, g_rest=g_rest, g_text=g_text, factor=min(1.0, max_norm / total))
        rows.append(result)
    for p in text:
        p.requires_grad_(False)

    print(f"Machine: {bm._machine(args.device)}")
    print(
        f"MTA-CLIP {args.backbone} ADE20k recipe, random weights, {args.batch} x {args.size}^2 images, "
        f"{args.classes_per_image} classes per image, text tower {sum(p.numel() for p in text) / 1e6:.1f}M params, "
        f"max norm {max_norm}\n"
    )
    print(
        "| step | |g_rest| | |g_text| | clip factor ours | clip factor authors | authors / ours | "
        "fwd+bwd ours (s) | fwd+bwd authors (s) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for i, r in enumerate(rows):
        o, a = r["ours"], r["authors"]
        print(
            f"| {i} | {a['g_rest']:.4g} | {a['g_text']:.4g} | {o['factor']:.4g} | {a['factor']:.4g} | "
            f"{a['factor'] / o['factor']:.4f} | {o['time']:.2f} | {a['time']:.2f} |"
        )
    t_o = statistics.median(r["ours"]["time"] for r in rows)
    t_a = statistics.median(r["authors"]["time"] for r in rows)
    ratio = statistics.median(r["authors"]["factor"] / r["ours"]["factor"] for r in rows)
    print(
        f"\nmedian: clip factor authors / ours {ratio:.4f}; fwd+bwd {t_o:.2f} s -> {t_a:.2f} s "
        f"(+{100 * (t_a / t_o - 1):.0f}%)"
    )


if __name__ == "__main__":
    main()
