"""Benchmark of the MSDeformAttn pixel decoder (forward, forward + backward), eager and compiled.

Shapes of Mask2Former / MTA-CLIP on ADE20k with R50 at 512x512: backbone features res2..res5 at
strides 4..32 (256 / 512 / 1024 / 2048 channels), conv_dim = mask_dim = 256, 6 encoder layers,
8 heads, 4 points, 3 encoder levels (64x64, 32x32, 16x16 at 512x512). Prints the median time of
the repeats after warm-up, per mode:

- ``eager``: the decoder as the models run it (the compiled op on CPU / CUDA when built);
- ``eager-pytorch-path``: the same with the PyTorch (grid_sample) path of the op;
- ``compiled`` (``--compile``): ``torch.compile(fullgraph=True)`` with inductor; compile time is
  reported separately (it is paid once).

    OMP_NUM_THREADS=1 python benchmarks/bench_pixel_decoder.py --device cpu --size 256
    python benchmarks/bench_pixel_decoder.py --device cuda --batch 8 --compile
"""

import argparse
import time

import torch
from _timing import Clock, machine, median_ms
from detectron2.layers import ShapeSpec

import mta_clip.layers.ms_deform_attn as msda
from mta_clip.modeling.pixel_decoder import MSDeformAttnPixelDecoder

STRIDES = {"res2": 4, "res3": 8, "res4": 16, "res5": 32}
CHANNELS = {"res2": 256, "res3": 512, "res4": 1024, "res5": 2048}


def _parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--size", type=int, default=512, help="input image side (features at /4 .. /32)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile(fullgraph=True)")
    return parser.parse_args(argv)


def build_decoder(device):
    torch.manual_seed(0)
    shapes = {k: ShapeSpec(channels=CHANNELS[k], stride=s) for k, s in STRIDES.items()}
    decoder = MSDeformAttnPixelDecoder(
        shapes,
        transformer_dropout=0.0,
        transformer_nheads=8,
        transformer_dim_feedforward=1024,
        transformer_enc_layers=6,
        transformer_n_points=4,
        conv_dim=256,
        mask_dim=256,
        norm="GN",
        transformer_in_features=["res3", "res4", "res5"],
        common_stride=4,
    )
    return decoder.to(device).train()


def main(argv=None):
    args = _parse_args(argv)
    device = torch.device(args.device)
    decoder = build_decoder(device)
    clock = Clock(device)
    gen = torch.Generator().manual_seed(1)
    feats = {
        k: torch.randn(args.batch, CHANNELS[k], args.size // s, args.size // s, generator=gen).to(device)
        for k, s in STRIDES.items()
    }

    def forward(fn):
        def run():
            with torch.no_grad():
                fn(feats)

        return run

    def forward_backward(fn):
        def run():
            decoder.zero_grad(set_to_none=True)
            mask_features, _, multi = fn(feats)
            (mask_features.sum() + sum(m.sum() for m in multi)).backward()

        return run

    rows = []
    modes = [("eager", decoder.forward_features, True), ("eager-pytorch-path", decoder.forward_features, False)]
    for name, fn, compiled_op in modes:
        msda.USE_COMPILED_ON_CPU = compiled_op
        if device.type == "cuda" and not compiled_op:
            msda.USE_COMPILED_ON_CPU = True  # the switch is CPU-only; CUDA always takes the op when built
            continue
        rows.append(
            (
                name,
                median_ms(forward(fn), clock, args.warmup, args.repeats),
                median_ms(forward_backward(fn), clock, args.warmup, args.repeats),
                None,
            )
        )
    msda.USE_COMPILED_ON_CPU = True
    if args.compile:
        compiled = torch.compile(decoder.forward_features, fullgraph=True)
        t0 = time.perf_counter()
        forward_backward(compiled)()
        compile_s = time.perf_counter() - t0
        rows.append(
            (
                "compiled",
                median_ms(forward(compiled), clock, args.warmup, args.repeats),
                median_ms(forward_backward(compiled), clock, args.warmup, args.repeats),
                compile_s,
            )
        )

    levels = "/".join(f"{args.size // STRIDES[k]}x{args.size // STRIDES[k]}" for k in ("res3", "res4", "res5"))
    print(
        f"MSDeformAttn pixel decoder, {args.device}, float32: batch {args.batch}, {args.size}x{args.size} input "
        f"(encoder levels {levels}), 6 layers, conv_dim 256, 8 heads, 4 points"
    )
    print(f"machine: {machine(device)}; median of {args.repeats} steps after {args.warmup} warm-up\n")
    print("| mode | fwd ms | fwd+bwd ms | first call s |")
    print("|---|---|---|---|")
    for name, fwd, both, first in rows:
        print(f"| {name} | {fwd:.1f} | {both:.1f} | {'' if first is None else f'{first:.1f}'} |")


if __name__ == "__main__":
    main()
