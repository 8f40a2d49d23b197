"""Benchmark: CPU latency of exported models, PyTorch eager vs ONNX Runtime vs TorchScript.

Models: the R50 Mask2Former baseline (``configs/ade20k/maskformer2_R50_bs16_160k.yaml``) and R50
MTA-CLIP (``configs/ade20k/mtaclip_R50_bs16_160k.yaml``), full size with random weights (speed does
not depend on the weight values; nothing is read or downloaded), ADE20k's 150 classes (MTA-CLIP's
prompts use ``mta_clip.data.class_names.ADE20K_PROMPT_CLASSES``).

Each model is wrapped in ``mta_clip.export.SegmentationGraph`` (the test resize to the config's
test size, preprocessing, model, semantic inference: the same work in all three runtimes, as
``tools/export_model.py`` exports it) and run at ``--size`` x ``--size``, batch 1:
ONNX (``torch.onnx.export(dynamo=True)``, dynamic B, H, W unless ``--fixed-onnx``) and TorchScript
(``torch.jit.trace``). PyTorch eager runs the graph module itself (the deformable attention on the
project's usual dispatch: the C++ CPU kernel). One call per runtime per round, the three in turns
(the order rotated every round), ``--repeats`` rounds after one warm-up round; the table gives
the median per runtime and the median over rounds of the time ratio to eager. All runtimes use
``--threads`` threads (``torch.set_num_threads``; ONNX Runtime ``intra_op_num_threads``).

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_export.py --size 512 --repeats 5 --threads 1
"""

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

MODELS = {
    "baseline": ("Mask2Former R50", "configs/ade20k/maskformer2_R50_bs16_160k.yaml"),
    "mtaclip": ("MTA-CLIP R50", "configs/ade20k/mtaclip_R50_bs16_160k.yaml"),
}
DATASET_NAME = "bench_export_ade20k_150"
RUNTIMES = ("eager", "onnxruntime", "torchscript")


def _build(key: str):
    from detectron2.data import MetadataCatalog
    from detectron2.modeling import build_model

    import mta_clip  # noqa: F401  (registers models)
    from mta_clip.config import setup_cfg
    from mta_clip.data.class_names import ADE20K_CLASSES, ADE20K_PROMPT_CLASSES

    meta = MetadataCatalog.get(DATASET_NAME)
    if not hasattr(meta, "stuff_classes"):
        meta.set(stuff_classes=list(ADE20K_CLASSES), prompt_classes=list(ADE20K_PROMPT_CLASSES), ignore_label=255)
    opts = [
        "MODEL.DEVICE",
        "cpu",
        "MODEL.WEIGHTS",
        "",
        "DATASETS.TRAIN",
        f"('{DATASET_NAME}',)",
        "DATASETS.TEST",
        f"('{DATASET_NAME}',)",
    ]
    if key == "mtaclip":
        opts += ["MODEL.CLIP.WEIGHTS", ""]
    cfg = setup_cfg(os.path.join(ROOT, MODELS[key][1]), opts)
    return cfg, build_model(cfg).eval()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=tuple(MODELS), default=list(MODELS))
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--fixed-onnx", action="store_true", help="export ONNX at the fixed size (faster export)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    warnings.simplefilter("ignore")

    import torch
    from tabulate import tabulate

    from mta_clip.export import ExportedModel, SegmentationGraph, export_onnx, export_torchscript, sample_image

    torch.set_num_threads(args.threads)
    rows = []
    for key in args.models:
        torch.manual_seed(0)
        cfg, model = _build(key)
        test_size = (cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
        dynamic = not args.fixed_onnx
        graph = SegmentationGraph(model, cfg.INPUT.FORMAT, test_size, dynamic).eval()
        image = sample_image((args.size, args.size))
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            sample = sample_image((args.size, args.size), batch=2) if dynamic else image
            export_onnx(graph, os.path.join(tmp, "m.onnx"), sample, dynamic=dynamic)
            onnx_export_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            export_torchscript(graph, os.path.join(tmp, "m.ts"), image)
            ts_export_s = time.perf_counter() - t0
            runners = {
                "eager": graph,
                "onnxruntime": ExportedModel(os.path.join(tmp, "m.onnx"), threads=args.threads),
                "torchscript": ExportedModel(os.path.join(tmp, "m.ts")),
            }
            times = {r: [] for r in RUNTIMES}
            with torch.no_grad():
                for rnd in range(args.repeats + 1):
                    order = RUNTIMES[rnd % 3 :] + RUNTIMES[: rnd % 3]
                    for name in order:
                        t0 = time.perf_counter()
                        runners[name](image)
                        if rnd:  # round 0 warms up
                            times[name].append(time.perf_counter() - t0)
                ref = graph(image)[1].numpy()
                agree = {n: float((runners[n](image)[1] == ref).mean()) for n in ("onnxruntime", "torchscript")}
        export_s = {"eager": "", "onnxruntime": f"{onnx_export_s:.0f}", "torchscript": f"{ts_export_s:.0f}"}
        for name in RUNTIMES:
            ratio = statistics.median(t / e for t, e in zip(times[name], times["eager"]))
            rows.append(
                [
                    MODELS[key][0],
                    name,
                    f"{1000 * statistics.median(times[name]):.0f}",
                    f"{1000 * min(times[name]):.0f}",
                    f"{ratio:.2f}",
                    "" if name == "eager" else f"{100 * agree[name]:.3f}",
                    export_s[name],
                ]
            )
        del runners, graph, model
    print(
        f"CPU latency, {args.size}x{args.size}, batch 1, {args.threads} thread(s), {args.repeats} rounds in turns "
        f"(torch {torch.__version__}, ONNX {'fixed' if args.fixed_onnx else 'dynamic'} size)"
    )
    print(
        tabulate(
            rows,
            headers=[
                "model",
                "runtime",
                "median ms",
                "min ms",
                "ratio to eager (median)",
                "labels = eager (%)",
                "export s",
            ],
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
