"""Benchmark of multi-scale deformable attention: compiled op (C++ CPU / CUDA) vs PyTorch path.

Shapes of the Mask2Former pixel decoder on ADE20k with R50 at 512x512 (per GPU): levels 64x64,
32x32, 16x16 (strides 8, 16, 32), queries = all 5376 positions, 8 heads, 3 levels, 4 points,
D = 32. Prints forward, backward and forward+backward times (median over repeats) and the peak
memory one forward+backward step adds on top of its inputs, each implementation measured in a
fresh process.

    python benchmarks/bench_ms_deform_attn.py --device cuda --batch 8
    OMP_NUM_THREADS=1 python benchmarks/bench_ms_deform_attn.py --device cpu --batch 1

Peak memory: CUDA, from the caching allocator's peak statistics; CPU, from the process's peak
resident set (VmHWM, reset through /proc/self/clear_refs before the step; "n/a" where the kernel
does not allow it).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

from _timing import Clock, machine

LEVELS = [(64, 64), (32, 32), (16, 16)]
HEADS, POINTS, CHANNELS = 8, 4, 32
IMPLS = ("pytorch", "compiled")


def _parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    parser.add_argument("--batch", type=int, default=None, help="default: 8 on cuda, 1 on cpu")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--repeats", type=int, default=None, help="timed steps (default: 20 cuda, 5 cpu)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--impl", choices=("all",) + IMPLS, default="all")
    parser.add_argument("--json", default="", help="also write the rows to this JSON file")
    parser.add_argument("--worker", choices=IMPLS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.batch is None:
        args.batch = 8 if args.device == "cuda" else 1
    if args.repeats is None:
        args.repeats = 20 if args.device == "cuda" else 5
    return args


def _rss_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _reset_peak_rss():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _worker(args):
    """Runs one implementation; prints one JSON line with its measurements."""
    import torch

    from mta_clip.layers import ms_deform_attn_compiled, ms_deform_attn_op_available, ms_deform_attn_pytorch

    device = torch.device(args.device)
    if args.worker == "compiled" and not ms_deform_attn_op_available(device):
        print(json.dumps({"impl": args.worker, "error": f"compiled op not available on {device}"}))
        return
    fn = ms_deform_attn_compiled if args.worker == "compiled" else ms_deform_attn_pytorch
    dtype = getattr(torch, args.dtype)
    gen = torch.Generator().manual_seed(0)
    shapes = torch.tensor(LEVELS, dtype=torch.int64)
    sizes = shapes[:, 0] * shapes[:, 1]
    starts = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
    total = int(sizes.sum())
    b, q = args.batch, total
    value = torch.randn(b, total, HEADS, CHANNELS, generator=gen, dtype=dtype)
    locations = torch.rand(b, q, HEADS, len(LEVELS), POINTS, 2, generator=gen, dtype=dtype)
    weights = torch.rand(b, q, HEADS, len(LEVELS), POINTS, generator=gen, dtype=dtype).softmax(-1)
    grad_out = torch.randn(b, q, HEADS * CHANNELS, generator=gen, dtype=dtype)
    value, locations, weights, grad_out = (t.to(device) for t in (value, locations, weights, grad_out))
    shapes, starts = shapes.to(device), starts.to(device)
    leaves = [t.requires_grad_(True) for t in (value, locations, weights)]
    clock = Clock(device)

    def step():
        for t in leaves:
            t.grad = None
        t0 = clock.now()
        out = fn(leaves[0], shapes, starts, leaves[1], leaves[2])
        t1 = clock.now()
        out.backward(grad_out)
        t2 = clock.now()
        return t1 - t0, t2 - t1

    peak_mib = None
    if device.type == "cpu" and _reset_peak_rss():  # first step, before any allocator caching
        base = _rss_kib("VmRSS")
        step()
        peak_mib = (_rss_kib("VmHWM") - base) / 1024
    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        for t in leaves:
            t.grad = None
        clock.sync()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        step()
        peak_mib = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    times = [step() for _ in range(args.repeats)]
    fwd = statistics.median(t[0] for t in times) * 1e3
    bwd = statistics.median(t[1] for t in times) * 1e3
    both = statistics.median(t[0] + t[1] for t in times) * 1e3
    print(json.dumps({"impl": args.worker, "fwd_ms": fwd, "bwd_ms": bwd, "total_ms": both, "peak_mib": peak_mib}))


def main(argv=None):
    args = _parse_args(argv)
    if args.worker:
        _worker(args)
        return
    impls = IMPLS if args.impl == "all" else (args.impl,)
    rows = []
    for impl in impls:
        cmd = [
            sys.executable,
            os.path.abspath(__file__),
            "--worker",
            impl,
            "--device",
            args.device,
            "--batch",
            str(args.batch),
            "--dtype",
            args.dtype,
            "--repeats",
            str(args.repeats),
            "--warmup",
            str(args.warmup),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
        if proc.returncode != 0 or not lines:
            rows.append({"impl": impl, "error": (proc.stderr.strip().splitlines() or ["failed"])[-1]})
        else:
            rows.append(json.loads(lines[-1]))
    total = sum(h * w for h, w in LEVELS)
    out = sys.stdout
    out.write(
        f"multi-scale deformable attention, {args.device}, {args.dtype}: batch {args.batch}, levels "
        f"{'/'.join(f'{h}x{w}' for h, w in LEVELS)}, Q=S={total}, heads {HEADS}, points {POINTS}, D {CHANNELS}\n"
    )
    out.write(f"machine: {machine(args.device)}; median of {args.repeats} steps\n\n")
    header = f"| {'impl':<9} | {'fwd ms':>9} | {'bwd ms':>9} | {'fwd+bwd ms':>10} | {'peak MiB':>9} | {'speed-up':>8} |"
    out.write(header + "\n|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|\n")
    ref = next((r["total_ms"] for r in rows if r["impl"] == "pytorch" and "total_ms" in r), None)
    for r in rows:
        if "error" in r:
            out.write(f"| {r['impl']:<9} | {'error: ' + r['error']} |\n")
            continue
        peak = f"{r['peak_mib']:9.1f}" if r["peak_mib"] is not None else f"{'n/a':>9}"
        speed = f"{ref / r['total_ms']:7.2f}x" if ref else f"{'':>8}"
        out.write(
            f"| {r['impl']:<9} | {r['fwd_ms']:9.2f} | {r['bwd_ms']:9.2f} | {r['total_ms']:10.2f} | {peak} | {speed} |\n"
        )
    if args.json:
        folder = os.path.dirname(os.path.abspath(args.json))
        os.makedirs(folder, exist_ok=True)
        payload = {"args": vars(args), "machine": machine(args.device), "levels": LEVELS, "rows": rows}
        with tempfile.NamedTemporaryFile("w", dir=folder, suffix=".tmp", delete=False) as f:
            json.dump(payload, f, indent=1)
        os.replace(f.name, args.json)


if __name__ == "__main__":
    main()
