"""Benchmark: MTA-CLIP vs Mask2Former* (the same model without the text branch, same CLIP backbone).

Shape of ADE20k-150: C = 150 classes, K = 3 prompts, C' = 151 class texts ("none" included), so
MTA-CLIP's decoder runs 3 * 151 = 453 text queries + 100 mask queries = 553 queries; the baseline
runs 100. Both models are built with ``build_model(cfg)`` from ``configs/ade20k/`` (the
``mtaclip_<backbone>`` and ``maskformer2_clip_<backbone>`` recipes; for the ImageNet backbones
ViT-S-16 and MiT-B4 of Table 3 left, ``maskformer2_<backbone>``) at full size with random
weights (``MODEL.CLIP.WEIGHTS ""``: nothing is read or downloaded; speed and memory do not
depend on the weight values). The class names are ADE20k's prompt names
(``mta_clip.data.class_names.ADE20K_PROMPT_CLASSES``), registered in ``MetadataCatalog`` under a
benchmark dataset name used as ``DATASETS.TRAIN``.

Inputs: random uint8 images (size x size) and, per image, ``--classes-per-image`` random classes
whose masks tile the image in blocks (detectron2 ``Instances`` with ``gt_classes`` (M,) int64 and
``gt_masks`` (M, H, W) bool, as the semantic dataset mapper gives).

Measured, each model in a fresh process (one after the other, never at the same time):

- train step: forward + loss + backward + optimizer step (the recipe's AdamW with full-model
  gradient clipping, ``mta_clip.solver.build_optimizer``); median over ``--iters`` steps after
  ``--warmup`` steps. AMP (CUDA only): ``--amp bf16`` / ``fp16`` (autocast; fp16 with a gradient
  scaler), ``off``, or ``config`` (default: fp16 where the config's ``SOLVER.AMP.ENABLED`` is on,
  as Detectron2's AMP trainer does; off in both recipes). After the timed steps the loss and
  every gradient of the last step must be finite (with fp16, the gradients once unscaled).
- peak memory of a train step:
  CUDA: ``torch.cuda.max_memory_allocated`` over the timed steps (weights, gradients, optimizer
  state and activations: everything the process allocated through PyTorch).
  CPU: peak resident set size (``VmHWM``) during one train step minus the resident set size of
  the same process right after its imports, before the model is built. So it counts the same
  things as on CUDA, plus the allocator's slack. To make the resident set follow the live
  allocations, before that step the script returns freed heap memory to the system
  (``malloc_trim``), makes glibc serve every allocation above 64 KiB with its own mapping
  (``mallopt(M_MMAP_THRESHOLD)``, so freed tensors leave the resident set at once), and resets
  ``VmHWM`` through ``/proc/self/clear_refs``. That step is not one of the timed ones. Where one
  of these is not possible (not Linux / glibc) the peak is reported as "n/a".
- inference latency: eval mode under ``torch.no_grad``, ``--infer-batch`` images of size x size
  per call, median over ``--iters`` calls after ``--warmup`` calls (MTA-CLIP's text features are
  computed in the first call and cached, as at test time).
- train-step and inference ratios (the ones compared with the targets): both models built in
  one more fresh process and run in turns, the order swapped every round: ``--iters`` rounds of
  one train step each (after ``--warmup``), then ``--infer-iters`` rounds of one inference call
  each; a ratio is the median over rounds of MTA-CLIP's time / the baseline's time in that round.
  On a shared 2-core VM separate processes measured the same model up to 30% apart; turns in
  one process expose both models to the same machine state. Peak memory needs a process per
  model, so its ratio comes from the per-model processes.
- breakdown of the train step: wall time inside the backbone, the pixel decoder, the text
  encoder, the transformer decoder (and in it the prediction heads ``_predict``: class / mask
  heads, attention masks, Eq. 5-6 similarity; and ``_similarity`` alone), the criterion (and in it
  the Hungarian matcher and ``loss_sim``), backward and the optimizer step, from timers wrapped
  around these modules and methods. On CPU the timed steps carry the timers (their cost is a few
  ``perf_counter`` calls); on CUDA a separate set of ``--iters`` steps does, with a
  ``torch.cuda.synchronize`` at every timer (so those steps are not the headline ones).
  The text encoder's backward cannot be separated inside ``loss.backward()``; it is measured
  alone: ``t = text_encoder(); t.backward(g)`` (the same graph as in the step). The cost of the
  text queries' attention masks is measured by running the decoder alone on the inputs captured
  from a step, once as configured and once with ``text_attention_mask = "none"``.

``--flops-only`` measures no time: it counts the FLOPs (``torch.utils.flop_counter``) of one train
step, of the text encoder's forward + backward (the batch-independent part) and of one inference
call, and prints them with the train-step totals at batches 2 and 8 derived from them.

On CPU, wall times include the kernel's cost of handing fresh memory to the process (page faults);
it grows with the resident set, so it weighs more on MTA-CLIP (its text encoder keeps ~2.7 GiB of
activations alive during the step). The CUDA caching allocator has no such cost.

Usage::

    # GPU, the reference shape (512 x 512, batch 8)
    .venv/bin/python benchmarks/bench_mtaclip.py --device cuda --json output/bench_mtaclip_cuda.json
    # CPU, reduced shape
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_mtaclip.py --device cpu --size 128 --batch 2 --iters 3
    # FLOP counts at the reference image size (CPU is enough; batch 1 keeps it short)
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_mtaclip.py --device cpu --size 512 --batch 1 --flops-only
    # the tables of an earlier run
    .venv/bin/python benchmarks/bench_mtaclip.py --from-json output/bench_mtaclip_cuda.json

Targets (MTA-CLIP / baseline): train step <= 1.25x, peak memory <= 1.3x, inference <= 1.10x.
The text encoder's cost does not depend on the batch or the image size, so at a reduced shape
the train-step ratio is larger than at the reference shape.
"""

import argparse
import ctypes
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

BACKBONES = {"RN50": "R50", "RN101": "R101", "ViT-B-16": "ViTB16", "ViT-S-16": "ViTS16", "MiT-B4": "MiTB4"}
IMAGENET_BACKBONES = ("ViT-S-16", "MiT-B4")  # baseline config maskformer2_<name> (no CLIP image tower)


def _backbone_title(name: str) -> str:
    return f"ImageNet {name}" if name in IMAGENET_BACKBONES else f"CLIP {name}"


MODELS = {
    # key: (display name, config file pattern)
    "baseline": ("Mask2Former*", "maskformer2_clip_{}_bs16_160k.yaml"),
    "mtaclip": ("MTA-CLIP", "mtaclip_{}_bs16_160k.yaml"),
}
TARGETS = {"train_step": 1.25, "peak_memory": 1.30, "inference": 1.10}
DATASET_NAME = "bench_ade20k_150_prompt_names"
M_MMAP_THRESHOLD = -3  # glibc mallopt parameter
PAIRED = "paired"  # worker that times both models' inference in turns


def _parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    parser.add_argument("--size", type=int, default=None, help="image side (default: 512 on cuda, 128 on cpu)")
    parser.add_argument("--batch", type=int, default=None, help="train batch (default: 8 on cuda, 2 on cpu)")
    parser.add_argument("--infer-batch", type=int, default=1, help="images per inference call (default 1)")
    parser.add_argument("--iters", type=int, default=None, help="timed steps (default: 10 on cuda, 3 on cpu)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: 3 cuda, 1 cpu)")
    parser.add_argument(
        "--infer-iters",
        type=int,
        default=None,
        help="rounds of the interleaved inference comparison (default: 50 cuda, 15 cpu)",
    )
    parser.add_argument("--backbone", choices=tuple(BACKBONES), default="RN50")
    parser.add_argument("--classes-per-image", type=int, default=8, help="target classes (masks) per image")
    parser.add_argument("--models", choices=("both",) + tuple(MODELS), default="both")
    parser.add_argument(
        "--flops-only",
        action="store_true",
        help="count FLOPs (torch.utils.flop_counter) of a train step, the text encoder and an "
        "inference call instead of timing",
    )
    parser.add_argument("--json", default="", help="also write all measurements to this JSON file")
    parser.add_argument("--from-json", default="", help="print the tables of a file written by --json, measure nothing")
    parser.add_argument(
        "--amp",
        choices=("config", "off", "bf16", "fp16"),
        default="config",
        help="mixed precision on CUDA (default: fp16 if the config's SOLVER.AMP.ENABLED)",
    )
    parser.add_argument(
        "--no-breakdown",
        action="store_true",
        help="skip the per-component breakdown, the text encoder alone and the text-mask ablation",
    )
    parser.add_argument(
        "--opts",
        nargs=argparse.REMAINDER,
        default=[],
        help="config overrides for both models (KEY VALUE ...), last on the command line",
    )
    parser.add_argument("--worker", choices=tuple(MODELS) + (PAIRED,), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    cuda = args.device == "cuda"
    if args.size is None:
        args.size = 512 if cuda else 128
    if args.batch is None:
        args.batch = 8 if cuda else 2
    if args.iters is None:
        args.iters = 10 if cuda else 3
    if args.warmup is None:
        args.warmup = 3 if cuda else 1
    if args.infer_iters is None:
        args.infer_iters = 50 if cuda else 15
    for name in ("size", "batch", "infer_batch", "iters", "infer_iters", "classes_per_image"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.warmup < 0:
        parser.error(f"--warmup must be >= 0, got {args.warmup}")
    if not 1 <= args.classes_per_image <= 64:
        parser.error(f"--classes-per-image must be in 1..64 (masks are 8x8 blocks), got {args.classes_per_image}")
    return args


# --------------------------------------------------------------------------- CPU memory
def _rss_kib(field: str):
    """``VmRSS`` / ``VmHWM`` of this process in KiB, or None where /proc is missing."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _libc():
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim, libc.mallopt  # noqa: B018 (glibc only)
        return libc
    except (OSError, AttributeError):
        return None


def _prepare_cpu_peak() -> bool:
    """Returns freed memory to the system, maps large blocks separately, resets ``VmHWM``."""
    gc.collect()
    libc = _libc()
    if libc is None or _rss_kib("VmRSS") is None:
        return False
    libc.malloc_trim(0)
    if libc.mallopt(M_MMAP_THRESHOLD, 64 * 1024) != 1:
        return False
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


# --------------------------------------------------------------------------- timers
class Timers:
    """Accumulated wall time per key; re-entrant; optional CUDA synchronization at every mark."""

    def __init__(self, sync_cuda: bool):
        self.sync_cuda = sync_cuda
        self.total = defaultdict(float)
        self.calls = defaultdict(int)
        self._open = defaultdict(list)
        self._patched = []

    def now(self) -> float:
        if self.sync_cuda:
            import torch

            torch.cuda.synchronize()
        return time.perf_counter()

    def start(self, key: str) -> None:
        self._open[key].append(self.now())

    def stop(self, key: str) -> None:
        self.total[key] += self.now() - self._open[key].pop()
        self.calls[key] += 1

    def wrap(self, obj, attr: str, key: str) -> None:
        """Times every call of ``obj.attr`` (a module's ``forward`` or a bound method) under ``key``."""
        original = getattr(obj, attr)

        def timed(*args, **kwargs):
            self.start(key)
            try:
                return original(*args, **kwargs)
            finally:
                self.stop(key)

        setattr(obj, attr, timed)
        self._patched.append((obj, attr))

    def unwrap_all(self) -> None:
        for obj, attr in reversed(self._patched):
            delattr(obj, attr)
        self._patched.clear()

    def reset(self) -> None:
        self.total.clear()
        self.calls.clear()


# Breakdown rows: key -> (label, attribute path from the model, method name)
COMPONENTS = [
    ("backbone", "backbone fwd", "backbone", "forward"),
    ("pixel_decoder", "pixel decoder fwd", "sem_seg_head.pixel_decoder", "forward_features"),
    ("text_encoder", "text encoder fwd", "text_encoder", "forward"),
    ("decoder", "transformer decoder fwd", "sem_seg_head.predictor", "forward"),
    ("heads", "  - heads + attention masks (_predict)", "sem_seg_head.predictor", "_predict"),
    ("similarity", "  - Eq. 5-6 similarity (_similarity)", "sem_seg_head.predictor", "_similarity"),
    ("criterion", "criterion (losses + matching)", "criterion", "forward"),
    ("matcher", "  - Hungarian matcher", "criterion.matcher", "forward"),
    ("loss_sim", "  - L_sim (loss_sim)", "criterion", "loss_sim"),
]


def _resolve(model, path: str):
    obj = model
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


# --------------------------------------------------------------------------- worker
def _build(args, key: str):
    import torch
    from detectron2.data import MetadataCatalog
    from detectron2.modeling import build_model

    from mta_clip.config import setup_cfg
    from mta_clip.data.class_names import ADE20K_CLASSES, ADE20K_PROMPT_CLASSES

    meta = MetadataCatalog.get(DATASET_NAME)
    if not hasattr(meta, "prompt_classes"):
        meta.set(
            stuff_classes=list(ADE20K_CLASSES),
            prompt_classes=list(ADE20K_PROMPT_CLASSES),
            ignore_label=255,
            evaluator_type="sem_seg",
        )
    pattern = MODELS[key][1]
    if args.backbone in IMAGENET_BACKBONES:
        pattern = pattern.replace("maskformer2_clip_", "maskformer2_")
    config = os.path.join(ROOT, "configs", "ade20k", pattern.format(BACKBONES[args.backbone]))
    opts = [
        "MODEL.DEVICE",
        args.device,
        "MODEL.WEIGHTS",
        "",
        "MODEL.CLIP.WEIGHTS",
        "",
        "MODEL.CLIP.DOWNLOAD",
        "False",
        "MODEL.CLIP.IMAGE_SIZE",
        f"[{args.size}, {args.size}]",
        "MODEL.VIT.WEIGHTS",
        "",
        "MODEL.VIT.IMAGE_SIZE",
        f"[{args.size}, {args.size}]",
        "MODEL.MIT.WEIGHTS",
        "",
        "DATASETS.TRAIN",
        f"('{DATASET_NAME}',)",
        "DATASETS.TEST",
        f"('{DATASET_NAME}',)",
        *args.opts,
    ]
    cfg = setup_cfg(config, opts)
    if cfg.MODEL.DEVICE != args.device:
        raise RuntimeError(f"--device {args.device} requested but the config resolved to {cfg.MODEL.DEVICE}")
    torch.manual_seed(0)
    model = build_model(cfg)
    return cfg, model


def _make_batch(size: int, batch: int, classes_per_image: int, num_classes: int, seed: int = 0):
    """Random images and per-class block masks (``classes_per_image`` classes per image)."""
    import torch
    import torch.nn.functional as F
    from detectron2.structures import Instances

    gen = torch.Generator().manual_seed(seed)
    grid = 8
    items = []
    for _ in range(batch):
        image = torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=gen)
        classes = torch.randperm(num_classes, generator=gen)[:classes_per_image].to(torch.int64)
        cells = (torch.arange(grid * grid) % classes_per_image)[torch.randperm(grid * grid, generator=gen)]
        label = F.interpolate(cells.view(1, 1, grid, grid).float(), size=(size, size), mode="nearest")[0, 0].long()
        inst = Instances((size, size))
        inst.gt_classes = classes
        inst.gt_masks = label[None] == torch.arange(classes_per_image)[:, None, None]
        items.append({"image": image, "height": size, "width": size, "instances": inst})
    return items


def _deform_attn_path(device) -> str:
    """Which multi-scale deformable attention the pixel decoder runs on ``device``."""
    from mta_clip.layers import ms_deform_attn, ms_deform_attn_op_available

    if ms_deform_attn_op_available(device) and (device.type != "cpu" or ms_deform_attn.USE_COMPILED_ON_CPU):
        return "compiled op"
    return "PyTorch path"


def _amp_dtype(args, cfg):
    """The autocast dtype of ``--amp`` (None: no autocast). CUDA only."""
    import torch

    if args.device != "cuda":
        return None
    choice = args.amp
    if choice == "config":
        choice = "fp16" if cfg.SOLVER.AMP.ENABLED else "off"
    return {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[choice]


def _amp_name(amp) -> str:
    import torch

    return {None: "off", torch.bfloat16: "bf16", torch.float16: "fp16"}[amp]


def _autocast(device, amp):
    import contextlib

    import torch

    return contextlib.nullcontext() if amp is None else torch.autocast(device_type=device.type, dtype=amp)


def _grads_finite(model) -> bool:
    import torch

    grads = [p.grad for p in model.parameters() if p.grad is not None]
    return bool(grads) and all(bool(torch.isfinite(g).all()) for g in grads)


def _make_train_step(model, optimizer, batch, device, amp):
    """``train_step(timers) -> loss``: forward, losses, backward, optimizer step (``amp``: autocast
    dtype or None; a gradient scaler with float16)."""
    import torch

    scaler = torch.amp.GradScaler("cuda") if amp == torch.float16 else None

    def train_step(timers: Timers):
        timers.start("step")
        timers.start("forward")
        with _autocast(device, amp):
            losses = model(batch)
        total = sum(losses.values())
        timers.stop("forward")
        optimizer.zero_grad(set_to_none=True)
        timers.start("backward")
        (scaler.scale(total) if scaler else total).backward()
        timers.stop("backward")
        timers.start("optimizer")
        if scaler:
            scaler.unscale_(optimizer)
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        timers.stop("optimizer")
        timers.stop("step")
        return total

    return train_step


def _worker(args) -> dict:
    import open_clip  # noqa: F401 (imported before the memory floor is read, as MTA-CLIP needs it)
    import torch

    from mta_clip.solver import build_optimizer

    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        raise RuntimeError("--device cuda but torch.cuda.is_available() is False")
    device = torch.device(args.device)
    gc.collect()
    lib = _libc()
    if lib is not None:
        lib.malloc_trim(0)
    floor_kib = _rss_kib("VmRSS")

    t0 = time.perf_counter()
    cfg, model = _build(args, args.worker)
    build_s = time.perf_counter() - t0
    model.train()
    optimizer = build_optimizer(cfg, model)
    use_amp = _amp_dtype(args, cfg)
    batch = _make_batch(args.size, args.batch, args.classes_per_image, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES)
    predictor = model.sem_seg_head.predictor
    num_queries = predictor.num_queries + getattr(predictor, "num_text_queries", 0)

    def sync():
        if cuda:
            torch.cuda.synchronize(device)

    train_step = _make_train_step(model, optimizer, batch, device, use_amp)

    def install(timers: Timers):
        for key, _, path, method in COMPONENTS:
            obj = _resolve(model, path)
            if obj is not None and hasattr(obj, method):
                timers.wrap(obj, method, key)

    result = {
        "model": MODELS[args.worker][0],
        "queries": num_queries,
        "params_total": sum(p.numel() for p in model.parameters()),
        "params_trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "build_s": build_s,
        "amp": _amp_name(use_amp),
        "ms_deform_attn": _deform_attn_path(device),
    }
    if args.flops_only:
        result.update(_count_flops(model, batch, args, use_amp, device))
        return result

    # ---- warm-up and timed train steps (CPU: with the breakdown timers, see the docstring)
    timers = Timers(sync_cuda=cuda)
    if not cuda:
        install(timers)
    for _ in range(args.warmup):
        train_step(timers)
    timers.reset()
    if cuda:
        sync()
        torch.cuda.reset_peak_memory_stats(device)
    step_times = []
    for _ in range(args.iters):
        sync()
        start = time.perf_counter()
        loss = train_step(timers)
        sync()
        step_times.append(time.perf_counter() - start)
    if not torch.isfinite(loss):
        raise FloatingPointError(f"{result['model']}: non-finite training loss {float(loss)}")
    if not _grads_finite(model):
        raise FloatingPointError(f"{result['model']}: non-finite gradients after the last timed step")
    result["loss_last"] = float(loss)
    result["grads_finite"] = True
    result["train_step_ms"] = statistics.median(step_times) * 1e3
    result["train_step_all_ms"] = [t * 1e3 for t in step_times]
    if cuda:
        result["peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
        result["peak_method"] = "torch.cuda.max_memory_allocated over the timed steps"
        timers = Timers(sync_cuda=True)
        install(timers)
        for _ in range(0 if args.no_breakdown else args.iters):
            train_step(timers)
    timers.unwrap_all()
    result["breakdown_ms"] = {k: v * 1e3 / args.iters for k, v in timers.total.items()}

    # ---- text encoder alone (forward, then backward to the learned contexts), decoder ablation
    text_encoder = None if args.no_breakdown else getattr(model, "text_encoder", None)
    if text_encoder is not None:
        fwd, bwd = [], []
        for _ in range(args.iters):
            sync()
            a = time.perf_counter()
            t = text_encoder()
            sync()
            b = time.perf_counter()
            t.backward(torch.ones_like(t))
            sync()
            fwd.append(b - a)
            bwd.append(time.perf_counter() - b)
        result["text_encoder_alone_fwd_ms"] = statistics.median(fwd) * 1e3
        result["text_encoder_alone_bwd_ms"] = statistics.median(bwd) * 1e3
        result["text_queries"] = predictor.num_text_queries
        optimizer.zero_grad(set_to_none=True)
        result.update(_text_mask_ablation(model, batch, args.iters, sync, use_amp, device))

    # ---- peak memory on CPU: one more train step with the resident set following live memory
    if not cuda:
        optimizer.zero_grad(set_to_none=True)
        if floor_kib is not None and _prepare_cpu_peak():
            before = _rss_kib("VmRSS")
            train_step(Timers(sync_cuda=False))
            result["peak_mib"] = (_rss_kib("VmHWM") - floor_kib) / 1024
            result["resident_before_step_mib"] = (before - floor_kib) / 1024
            result["peak_method"] = "VmHWM during one train step - VmRSS after imports (fresh process)"
        else:
            result["peak_mib"] = None
            result["peak_method"] = "n/a (needs Linux /proc and glibc)"
    optimizer.zero_grad(set_to_none=True)

    # ---- memory of the text encoder's forward + backward alone, above what is resident before it
    if text_encoder is not None:
        before = None
        if cuda:
            sync()
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
        elif result["peak_mib"] is not None and _prepare_cpu_peak():
            before = _rss_kib("VmRSS")
        if before is not None:
            t = text_encoder()
            t.backward(torch.ones_like(t))
            del t
            sync()
            peak = torch.cuda.max_memory_allocated(device) if cuda else _rss_kib("VmHWM")
            result["text_encoder_alone_peak_mib"] = (peak - before) / (2**20 if cuda else 1024)
        optimizer.zero_grad(set_to_none=True)

    # ---- inference latency (CPU: timers on the timed calls; CUDA: separate calls with syncs)
    model.eval()
    inputs = [
        {"image": x["image"], "height": x["height"], "width": x["width"]}
        for x in _make_batch(args.size, args.infer_batch, 1, 1, seed=1)
    ]

    def infer_once():
        with _autocast(device, use_amp):
            return model(inputs)

    timers = Timers(sync_cuda=cuda)
    infer = []
    with torch.no_grad():
        for _ in range(max(1, args.warmup)):  # the first call fills MTA-CLIP's text cache
            outputs = infer_once()
        if not all(bool(torch.isfinite(o["sem_seg"]).all()) for o in outputs):
            raise FloatingPointError(f"{result['model']}: non-finite inference scores")
        result["inference_finite"] = True
        if not cuda:
            install(timers)
        for _ in range(args.iters):
            sync()
            start = time.perf_counter()
            timers.start("step")
            infer_once()
            timers.stop("step")
            sync()
            infer.append(time.perf_counter() - start)
        if cuda and not args.no_breakdown:
            install(timers)
            timers.reset()
            for _ in range(args.iters):
                timers.start("step")
                infer_once()
                timers.stop("step")
    timers.unwrap_all()
    result["inference_ms"] = statistics.median(infer) * 1e3
    result["inference_breakdown_ms"] = {k: v * 1e3 / args.iters for k, v in timers.total.items()}
    return result


def _paired(args) -> dict:
    """Both models in this process; train steps, then inference calls, in turns (order swapped
    every round). Ratios are medians over rounds of MTA-CLIP's time / the baseline's."""
    import torch

    from mta_clip.solver import build_optimizer

    cuda = args.device == "cuda"
    device = torch.device(args.device)
    no_timers = Timers(sync_cuda=False)
    models, steps = {}, {}
    for key in MODELS:
        cfg, model = _build(args, key)
        use_amp = _amp_dtype(args, cfg)
        batch = _make_batch(args.size, args.batch, args.classes_per_image, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES)
        models[key] = (model, use_amp)
        steps[key] = _make_train_step(model.train(), build_optimizer(cfg, model), batch, device, use_amp)
    inputs = [
        {"image": x["image"], "height": x["height"], "width": x["width"]}
        for x in _make_batch(args.size, args.infer_batch, 1, 1, seed=1)
    ]

    def infer(key):
        model, use_amp = models[key]
        with torch.no_grad(), _autocast(device, use_amp):
            model(inputs)

    def timed(fn, key) -> float:
        if cuda:
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn(key)
        if cuda:
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    def rounds(fn, warmup: int, count: int) -> dict:
        for _ in range(warmup):
            for key in MODELS:
                fn(key)
        times, ratios, order = defaultdict(list), [], list(MODELS)
        for _ in range(count):
            this_round = {key: timed(fn, key) for key in order}
            for key, seconds in this_round.items():
                times[key].append(seconds)
            ratios.append(this_round["mtaclip"] / this_round["baseline"])
            order.reverse()
        quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
        out = {f"{key}_ms": statistics.median(v) * 1e3 for key, v in times.items()}
        out.update(ratio=statistics.median(ratios), rounds=count, ratio_q1=quartiles[0], ratio_q3=quartiles[2])
        return out

    train = rounds(lambda key: steps[key](no_timers), args.warmup, args.iters)
    for model, _ in models.values():
        model.eval()
    # at least one warm-up call: the first fills MTA-CLIP's text cache
    return {"train_step": train, "inference": rounds(infer, max(1, args.warmup), args.infer_iters)}


def _grouped_conv_backward_flop(
    grad_out_shape,
    x_shape,
    w_shape,
    bias,
    stride,
    padding,
    dilation,
    transposed,
    output_padding,
    groups,
    output_mask,
    out_shape=None,
    **kwargs,
) -> int:
    """torch's count of ``convolution_backward`` with the weight-gradient term of a grouped conv divided
    by ``groups``: torch 2.14 counts that term as a dense conv (MiT's 3x3 depth-wise convs: 4C x too many)."""
    from torch.utils.flop_counter import conv_backward_flop

    conv_backward_flop = getattr(conv_backward_flop, "__wrapped__", conv_backward_flop)  # the formula on shapes
    args = (grad_out_shape, x_shape, w_shape, bias, stride, padding, dilation, transposed, output_padding, groups)
    flops = conv_backward_flop(*args, [output_mask[0], False, False], out_shape=out_shape)
    if output_mask[1]:
        flops += conv_backward_flop(*args, [False, True, False], out_shape=out_shape) // groups
    return flops


def _count_flops(model, batch, args, use_amp, device) -> dict:
    """FLOPs counted by ``torch.utils.flop_counter.FlopCounterMode`` (matmuls, convolutions,
    attention; not elementwise ops, not the optimizer): one train step (forward + backward), the
    text encoder alone (forward + backward, the batch-independent part) and one inference call
    with the text features cached. Grouped-conv backward: see ``_grouped_conv_backward_flop``."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    def count(fn) -> int:
        counter = FlopCounterMode(
            display=False, custom_mapping={torch.ops.aten.convolution_backward: _grouped_conv_backward_flop}
        )
        with counter:
            fn()
        return counter.get_total_flops()

    def step():
        with _autocast(device, use_amp):
            losses = model(batch)
        sum(losses.values()).backward()

    model.train()
    out = {"flops_train_step": count(step), "flops_text_encoder": 0}
    model.zero_grad(set_to_none=True)
    text_encoder = getattr(model, "text_encoder", None)
    if text_encoder is not None:

        def text():
            t = text_encoder()
            t.backward(torch.ones_like(t))

        out["flops_text_encoder"] = count(text)
        model.zero_grad(set_to_none=True)
    model.eval()
    inputs = [
        {"image": x["image"], "height": x["height"], "width": x["width"]}
        for x in _make_batch(args.size, args.infer_batch, 1, 1, seed=1)
    ]
    with torch.no_grad(), _autocast(device, use_amp):
        model(inputs)  # fills the text cache

        def infer():
            model(inputs)

        out["flops_inference"] = count(infer)
    return out


def _text_mask_ablation(model, batch, iters, sync, use_amp, device) -> dict:
    """Decoder forward (train mode, autograd on) on inputs captured from a step: as configured and
    with the text queries' attention masks off. Returns medians in ms."""
    import torch

    predictor = model.sem_seg_head.predictor
    captured = {}

    def grab(module, args, kwargs):
        captured["args"] = ([x.detach() for x in args[0]], args[1].detach())
        captured["kwargs"] = {k: v.detach() for k, v in kwargs.items()}

    handle = predictor.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad(), _autocast(device, use_amp):
            model(batch)
    finally:
        handle.remove()
    configured = predictor.text_attention_mask
    out = {"text_attention_mask": configured}
    for mode in (configured, "none"):
        predictor.text_attention_mask = mode
        times = []
        for _ in range(iters):
            sync()
            start = time.perf_counter()
            with _autocast(device, use_amp):
                pred = predictor(*captured["args"], **captured["kwargs"])
            sync()
            times.append(time.perf_counter() - start)
            del pred
        out[f"decoder_alone_textmask_{mode}_ms"] = statistics.median(times) * 1e3
    predictor.text_attention_mask = configured
    return out


# --------------------------------------------------------------------------- parent: tables
def _machine(device: str) -> str:
    import torch

    if device == "cuda":
        name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
        return f"{name}, torch {torch.__version__}, CUDA {torch.version.cuda}"
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    threads = os.environ.get("OMP_NUM_THREADS", str(torch.get_num_threads()))
    return f"{cpu}, {os.cpu_count()} logical CPUs, no GPU used, torch {torch.__version__}, {threads} threads"


def _run_worker(key: str, argv) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", key, *argv]
    what = "both models in turns" if key == PAIRED else MODELS[key][0]
    print(f"[bench_mtaclip] measuring {what} in a fresh process ...", file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise RuntimeError(f"worker for {what} failed (exit {proc.returncode}):\n{tail}")
    return json.loads(lines[-1])


def _fmt(x, digits=1):
    return "n/a" if x is None else f"{x:,.{digits}f}"


def _breakdown_table(bb: dict, bm: dict, train: bool, text_bwd_alone=None) -> str:
    """Rows per component: baseline ms, MTA-CLIP ms, extra ms, share of MTA-CLIP's extra time."""
    import tabulate as tabulate_module

    preserve = tabulate_module.PRESERVE_WHITESPACE
    tabulate_module.PRESERVE_WHITESPACE = True  # indented sub-rows
    extra_total = bm.get("step", 0.0) - bb.get("step", 0.0)
    rows = []

    def row(label, vb, vm, share=True):
        extra = None if vb is None or vm is None else vm - vb
        pct = "" if not share or extra is None or extra_total <= 0 else f"{100 * extra / extra_total:.0f}%"
        rows.append([label, _fmt(vb), _fmt(vm), _fmt(extra), pct])

    def get(d, *keys):
        return sum(d.get(k, 0.0) for k in keys)

    labels = {key: label for key, label, _, _ in COMPONENTS}
    for key in ("backbone", "pixel_decoder", "text_encoder", "decoder"):
        if key == "text_encoder" and not train:
            continue
        row(labels[key], get(bb, key), get(bm, key))
    for sub in ("heads", "similarity"):
        row(labels[sub], get(bb, sub), get(bm, sub))
    top = ["backbone", "pixel_decoder", "text_encoder", "decoder"]
    if train:
        top += ["criterion", "backward", "optimizer"]
        row(labels["criterion"], get(bb, "criterion"), get(bm, "criterion"))
        for sub in ("matcher", "loss_sim"):
            row(labels[sub], get(bb, sub), get(bm, sub))
        row(
            "  - CE, mask BCE + dice",
            get(bb, "criterion") - get(bb, "matcher", "loss_sim"),
            get(bm, "criterion") - get(bm, "matcher", "loss_sim"),
        )
        row("backward (loss.backward())", get(bb, "backward"), get(bm, "backward"))
        if text_bwd_alone is not None:
            row("  - text encoder bwd (measured alone, not in the sum)", 0.0, text_bwd_alone, share=False)
        row("optimizer step (grad clip + AdamW)", get(bb, "optimizer"), get(bm, "optimizer"))
        other = "other (preprocess, targets, loss sum)"
    else:
        other = "other (preprocess, semantic inference, resize)"
    row(other, get(bb, "step") - get(bb, *top), get(bm, "step") - get(bm, *top))
    row("total" if train else "total per call", get(bb, "step"), get(bm, "step"))
    try:
        return tabulate_module.tabulate(
            rows,
            headers=["component", "Mask2Former*", "MTA-CLIP", "extra", "share of extra"],
            tablefmt="github",
            disable_numparse=True,
        )
    finally:
        tabulate_module.PRESERVE_WHITESPACE = preserve


def _flops_table(args, results: dict) -> str:
    """GFLOP per train step split into the batch-independent text encoder and a per-image part;
    totals at the measured batch and at batches 2 and 8; per inference call."""
    from tabulate import tabulate

    rows, totals = [], {}
    for key in MODELS:
        r = results.get(key)
        if r is None:
            continue
        const = r["flops_text_encoder"]
        per_image = (r["flops_train_step"] - const) / args.batch
        totals[key] = {b: const + b * per_image for b in (2, 8)}
        totals[key]["inference"] = r["flops_inference"] / args.infer_batch
        rows.append(
            [
                r["model"],
                f"{r['flops_train_step'] / 1e9:,.1f}",
                f"{const / 1e9:,.1f}",
                f"{per_image / 1e9:,.1f}",
                f"{totals[key][2] / 1e9:,.1f}",
                f"{totals[key][8] / 1e9:,.1f}",
                f"{totals[key]['inference'] / 1e9:,.1f}",
            ]
        )
    if len(totals) == 2:
        ratio = {k: totals["mtaclip"][k] / totals["baseline"][k] for k in (2, 8, "inference")}
        rows.append(["ratio", "", "", "", f"{ratio[2]:.2f}x", f"{ratio[8]:.2f}x", f"{ratio['inference']:.2f}x"])
    head = (
        f"GFLOP (torch.utils.flop_counter: matmul / conv / attention FLOPs, no elementwise ops, no optimizer), "
        f"image {args.size}x{args.size}; batch-2 and batch-8 columns = text encoder + batch x per-image part"
    )
    return (
        head
        + "\n"
        + tabulate(
            rows,
            headers=[
                "model",
                f"train step, batch {args.batch}",
                "text encoder fwd+bwd (any batch)",
                "per image",
                "train step, batch 2",
                "train step, batch 8",
                "inference per image",
            ],
            tablefmt="github",
            disable_numparse=True,
        )
    )


def _amp_label(amp) -> str:
    """``amp`` of a result: "off" / "bf16" / "fp16" (older files: True = fp16, False = off)."""
    if isinstance(amp, bool) or amp is None:
        return "fp16" if amp else "off"
    return amp


def _tables(args, results: dict, machine: str) -> str:
    from tabulate import tabulate

    lines = []
    base, mta = results.get("baseline"), results.get("mtaclip")
    lines.append(
        f"MTA-CLIP vs Mask2Former*, {_backbone_title(args.backbone)}, ADE20k shape (C=150, K=3), device {args.device}, "
        f"image {args.size}x{args.size}, train batch {args.batch}, inference batch {args.infer_batch}, "
        f"{args.classes_per_image} target classes per image"
        + ("" if getattr(args, "flops_only", False) else f"; median of {args.iters} after {args.warmup} warm-up")
    )
    lines.append(f"machine: {machine}")
    measured = [results[key] for key in MODELS if key in results]
    paths = sorted({r.get("ms_deform_attn", "?") for r in measured})
    lines.append(
        f"multi-scale deformable attention: {', '.join(paths)}; "
        f"AMP: {', '.join(sorted({_amp_label(r.get('amp')) for r in measured}))}"
    )
    if args.opts:
        lines.append(f"config overrides: {' '.join(args.opts)}")
    lines.append("")
    if getattr(args, "flops_only", False):
        lines.append(_flops_table(args, results))
        return "\n".join(lines)
    rows = []
    for r in (base, mta):
        if r is None:
            continue
        rows.append(
            [
                r["model"],
                r["queries"],
                f"{r['params_trainable'] / 1e6:.1f} / {r['params_total'] / 1e6:.1f}",
                _fmt(r["train_step_ms"]),
                _fmt(r.get("peak_mib")),
                _fmt(r["inference_ms"]),
            ]
        )
    lines.append(
        tabulate(
            rows,
            headers=["model", "queries", "params M (train / all)", "train step ms", "peak memory MiB", "inference ms"],
            tablefmt="github",
        )
    )
    peak_method = (mta or base)["peak_method"]
    lines.append(f"peak memory: {peak_method}")
    if all(r is not None and "resident_before_step_mib" in r for r in (base, mta)):
        lines.append(
            f"resident before the step (weights, optimizer state, caches): Mask2Former* "
            f"{base['resident_before_step_mib']:,.1f} MiB, "
            f"MTA-CLIP {mta['resident_before_step_mib']:,.1f} MiB"
        )
    if base is None or mta is None:
        return "\n".join(lines)

    lines.append("")
    ratio_rows = []
    for key, metric, label in (
        ("train_step", "train_step_ms", "train step"),
        ("peak_memory", "peak_mib", "peak memory"),
        ("inference", "inference_ms", "inference"),
    ):
        a, b = mta.get(metric), base.get(metric)
        if PAIRED in results and key in results[PAIRED]:
            a, b = results[PAIRED][key]["ratio"], 1.0
        if a is None or b is None:
            ratio_rows.append([label, "n/a", f"<= {TARGETS[key]:.2f}x", "n/a"])
            continue
        ratio = a / b
        ratio_rows.append(
            [label, f"{ratio:.2f}x", f"<= {TARGETS[key]:.2f}x", "PASS" if ratio <= TARGETS[key] else "FAIL"]
        )
    lines.append(
        tabulate(ratio_rows, headers=["MTA-CLIP / Mask2Former*", "ratio", "target", "result"], tablefmt="github")
    )
    if PAIRED in results:
        for key, what in (("train_step", "train steps"), ("inference", "inference calls")):
            p = results[PAIRED][key]
            lines.append(
                f"{what} ratio: {p['rounds']} rounds of one {what[:-1]} per model, in turns in one process "
                f"(quartiles of the per-round ratio {p['ratio_q1']:.2f}x-{p['ratio_q3']:.2f}x; medians there: "
                f"Mask2Former* {p['baseline_ms']:,.1f} ms, MTA-CLIP {p['mtaclip_ms']:,.1f} ms)"
            )
    if base["breakdown_ms"] and mta["breakdown_ms"]:  # empty with --no-breakdown on CUDA
        lines.append("")
        where = (
            "the timed steps" if args.device == "cpu" else f"{args.iters} extra steps with CUDA syncs at every timer"
        )
        lines.append(f"train-step breakdown, ms per step (mean over {where}):")
        lines.append(
            _breakdown_table(
                base["breakdown_ms"],
                mta["breakdown_ms"],
                train=True,
                text_bwd_alone=mta.get("text_encoder_alone_bwd_ms"),
            )
        )
    if base["inference_breakdown_ms"] and mta["inference_breakdown_ms"]:
        lines.append("")
        where = (
            "the timed calls" if args.device == "cpu" else f"{args.iters} extra calls with CUDA syncs at every timer"
        )
        lines.append(f"inference breakdown, ms per call (mean over {where}; text features cached):")
        lines.append(_breakdown_table(base["inference_breakdown_ms"], mta["inference_breakdown_ms"], train=False))
    if "decoder_alone_textmask_none_ms" in mta:
        conf = mta["text_attention_mask"]
        with_masks = mta[f"decoder_alone_textmask_{conf}_ms"]
        without = mta["decoder_alone_textmask_none_ms"]
        lines.append("")
        lines.append(
            f"MTA-CLIP text branch measured alone: text encoder fwd {mta['text_encoder_alone_fwd_ms']:,.1f} ms, "
            f"bwd {mta['text_encoder_alone_bwd_ms']:,.1f} ms, memory of fwd + bwd "
            f"{_fmt(mta.get('text_encoder_alone_peak_mib'))} MiB (all three independent of batch and image size); "
            f"decoder fwd (autograd on) {with_masks:,.1f} ms with text attention masks '{conf}' vs "
            f"{without:,.1f} ms with 'none': the text masks cost {with_masks - without:,.1f} ms."
        )
    return "\n".join(lines)


def main(argv=None):
    args = _parse_args(argv)
    if args.worker:
        result = _paired(args) if args.worker == PAIRED else _worker(args)
        print(json.dumps(result))
        return
    forwarded = [
        "--device",
        args.device,
        "--size",
        str(args.size),
        "--batch",
        str(args.batch),
        "--infer-batch",
        str(args.infer_batch),
        "--iters",
        str(args.iters),
        "--warmup",
        str(args.warmup),
        "--infer-iters",
        str(args.infer_iters),
        "--backbone",
        args.backbone,
        "--classes-per-image",
        str(args.classes_per_image),
        "--amp",
        args.amp,
    ]
    if args.no_breakdown:
        forwarded.append("--no-breakdown")
    if args.flops_only:
        forwarded.append("--flops-only")
    if args.opts:
        forwarded += ["--opts", *args.opts]
    if args.from_json:
        with open(args.from_json) as f:
            saved = json.load(f)
        print(_tables(argparse.Namespace(**saved["args"]), saved["results"], saved["machine"]))
        return
    keys = tuple(MODELS) if args.models == "both" else (args.models,)
    results = {key: _run_worker(key, forwarded) for key in keys}
    if len(keys) == len(MODELS) and not args.flops_only:
        results[PAIRED] = _run_worker(PAIRED, forwarded)
    machine = _machine(args.device)
    if args.json:
        folder = os.path.dirname(os.path.abspath(args.json))
        os.makedirs(folder, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=folder, suffix=".tmp", delete=False) as f:
            json.dump({"args": vars(args), "machine": machine, "results": results}, f, indent=1)
        os.replace(f.name, args.json)
    print(_tables(args, results, machine))


if __name__ == "__main__":
    main()
