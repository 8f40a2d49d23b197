#!/usr/bin/env python
"""The GPU check's steps; `scripts/gpu_check.sh OUT_DIR` sets up the environment and runs this.

Standard library only (it runs every step as a subprocess of ``--python``, the project's venv),
so a report is written even when the environment is broken. Steps, each with a time limit, in a
total budget (``--budget-s``; a step that no longer fits is reported as not run):

1. environment: GPU, driver, torch, CUDA, numpy, whether ``mta_clip._C`` has CUDA kernels;
2. the op's tests (``tests/layers``), pass / fail / skip counts from pytest's JUnit XML;
3. MTA-CLIP R50 vs Mask2Former* R50 (``benchmarks/bench_mtaclip.py``, random CLIP weights of the
   real RN50 shapes): train step (finite loss and gradients), peak memory, inference, at fp32,
   AMP bf16 and AMP fp16, and the MTA-CLIP / baseline ratios against the targets;
4. the op benchmark (``benchmarks/bench_ms_deform_attn.py``): compiled op vs PyTorch path;
5. a short training run on the generated toy data (``train_net.py``) that must learn: the loss
   drops and the validation mIoU reaches a threshold.

Writes ``OUT_DIR/gpu_check.md`` and ``OUT_DIR/gpu_check.json``, and ``OUT_DIR/logs.tar.gz`` (every
step's log and JSON). ``--cpu-rehearsal`` runs the same steps on the CPU at tiny sizes; the CUDA
parts are reported as "skipped: no CUDA". Exit status 1 when a step failed (targets missed are
reported, not failures).
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ET

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGETS = {"train_step": 1.25, "peak_memory": 1.30, "inference": 1.10}
OP_SPEEDUP_TARGET = 5.0
NO_CUDA = "skipped: no CUDA"

# Sizes: (GPU, CPU rehearsal). The rehearsal only proves every step runs end to end.
BENCH_FULL = [
    "--size",
    "512",
    "--batch",
    "8",
    "--iters",
    "10",
    "--warmup",
    "3",
    "--infer-iters",
    "30",
    "--no-breakdown",
]
BENCH_AMP = ["--size", "512", "--batch", "8", "--iters", "5", "--warmup", "3", "--infer-iters", "15", "--no-breakdown"]
BENCH_CPU = [
    "--size",
    "64",
    "--batch",
    "1",
    "--iters",
    "1",
    "--warmup",
    "0",
    "--infer-iters",
    "2",
    "--no-breakdown",
    "--opts",
    "MODEL.CLIP.TEXT.NUM_PROMPTS",
    "1",
]
OP_BENCH = {True: ["--batch", "8", "--repeats", "20"], False: ["--batch", "1", "--repeats", "2", "--warmup", "1"]}
# Toy training: iterations, mIoU threshold, relative loss drop required (last / first window mean).
# Detectron2 logs the loss every 20 iterations (a median over those 20), so >= 80 iterations give
# >= 4 rows. CPU rehearsal, measured: 49.7 -> 34.6 and mIoU 46 after 60 iterations.
TRAIN = {True: {"iters": 300, "miou": 60.0, "drop": 0.5}, False: {"iters": 100, "miou": 30.0, "drop": 0.85}}


class Check:
    def __init__(self, args):
        self.args = args
        self.out = os.path.abspath(args.out_dir)
        self.logs = os.path.join(self.out, "logs")
        os.makedirs(self.logs, exist_ok=True)
        self.start = time.monotonic() - args.elapsed_s
        self.steps = []
        self.cuda = False

    def remaining(self) -> float:
        return self.args.budget_s - (time.monotonic() - self.start)

    def run(self, name: str, cmd, limit_s: float, env=None):
        """Runs ``cmd`` (logged to logs/<name>.log) within ``limit_s`` and the budget.
        Returns (returncode or None when not run / timed out, output text, seconds)."""
        # the rehearsal runs on CPUs that may be shared: 3x the limits, inside its larger budget
        limit = min(limit_s * (3 if self.args.cpu_rehearsal else 1), self.remaining() - 5)
        log = os.path.join(self.logs, f"{name}.log")
        if limit < 10:
            return None, "not run: time budget used up", 0.0
        full_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
        t0 = time.monotonic()
        with open(log, "w") as f:
            f.write("$ " + " ".join(cmd) + "\n")
            f.flush()
            try:
                proc = subprocess.run(
                    cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=full_env, timeout=limit, check=False
                )
                code = proc.returncode
            except subprocess.TimeoutExpired:
                code = None
                f.write(f"\n[gpu_check] timed out after {limit:.0f} s\n")
        with open(log) as f:
            text = f.read()
        return code, text, time.monotonic() - t0

    def record(self, name: str, status: str, seconds: float, **details):
        entry = {"step": name, "status": status, "seconds": round(seconds, 1), **details}
        self.steps.append(entry)
        print(f"[gpu_check] {name}: {status} ({seconds:.0f} s)", flush=True)
        return entry


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


ENV_SNIPPET = r"""
import json, os, platform, sys
info = {"python": platform.python_version(), "executable": sys.executable}
import numpy, torch
info.update(torch=torch.__version__, torch_cuda=torch.version.cuda, numpy=numpy.__version__,
            cuda_available=torch.cuda.is_available(), cpu_count=os.cpu_count())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    info.update(gpu=p.name, capability=f"{p.major}.{p.minor}", gpu_memory_gib=round(p.total_memory / 2**30, 1),
                cudnn=torch.backends.cudnn.version(), bf16=torch.cuda.is_bf16_supported())
import detectron2, open_clip
info.update(detectron2=detectron2.__version__, open_clip=open_clip.__version__)
import mta_clip
info["mta_clip"] = mta_clip.__path__[0]
try:
    from mta_clip import _C
    info.update(op_built=True, op_with_cuda=bool(_C.with_cuda()),
                op_cuda_version=str(_C.cuda_version()) if _C.with_cuda() else None)
except ImportError as exc:
    info.update(op_built=False, op_with_cuda=False, op_error=str(exc))
print("GPU_CHECK_ENV " + json.dumps(info))
"""


def step_environment(c: Check):
    code, text, secs = c.run("environment", [c.args.python, "-c", ENV_SNIPPET], 120)
    match = re.search(r"^GPU_CHECK_ENV (.*)$", text, re.M)
    if code != 0 or not match:
        c.record("environment", "FAIL", secs, error=_tail(text))
        return None
    info = json.loads(match.group(1))
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run(
                [smi, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            ).stdout.strip()
            info["nvidia_smi"] = out
        except (OSError, subprocess.TimeoutExpired) as exc:
            info["nvidia_smi"] = f"error: {exc}"
    info["setup_seconds"] = c.args.setup_s
    c.cuda = bool(info["cuda_available"])
    if c.cuda and not info.get("op_with_cuda"):
        c.record(
            "environment",
            "FAIL",
            secs,
            info=info,
            error="CUDA is available but mta_clip._C has no CUDA kernels (see logs/setup.log)",
        )
    else:
        c.record("environment", "PASS", secs, info=info)
    return info


def step_op_tests(c: Check):
    xml = os.path.join(c.logs, "op_tests.xml")
    code, text, secs = c.run(
        "op_tests",
        [c.args.python, "-m", "pytest", "tests/layers", "-q", "-rs", "-p", "no:cacheprovider", f"--junitxml={xml}"],
        240,
    )
    if code is None or not os.path.exists(xml):
        c.record("op_tests", "FAIL" if code is not None else "NOT RUN", secs, error=_tail(text))
        return
    cases = []
    for case in ET.parse(xml).getroot().iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name')}"
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = "skipped" if child.tag == "skipped" else "failed"
                message = (child.get("message") or "").strip()
        cases.append({"name": name, "outcome": outcome, "message": message, "seconds": float(case.get("time", 0))})
    counts = {k: sum(1 for x in cases if x["outcome"] == k) for k in ("passed", "failed", "skipped")}
    cuda_cases = [x for x in cases if "cuda" in x["name"].lower()]
    cuda_counts = {k: sum(1 for x in cuda_cases if x["outcome"] == k) for k in ("passed", "failed", "skipped")}
    bad_skips = [x for x in cases if x["outcome"] == "skipped" and (c.cuda or "cuda" not in x["message"].lower())]
    status = "PASS" if code == 0 and counts["failed"] == 0 and not bad_skips else "FAIL"
    c.record(
        "op_tests",
        status,
        secs,
        counts=counts,
        cuda_counts=cuda_counts,
        cuda_tests=NO_CUDA if not c.cuda else "run",
        failed=[x["name"] + ": " + x["message"][:300] for x in cases if x["outcome"] == "failed"],
        unexpected_skips=[x["name"] + ": " + x["message"] for x in bad_skips],
    )


def _ratios(bench: dict) -> dict:
    res = bench["results"]
    out = {}
    paired = res.get("paired", {})
    if "train_step" in paired:
        out["train_step"] = paired["train_step"]["ratio"]
    if "inference" in paired:
        out["inference"] = paired["inference"]["ratio"]
    base, mta = res.get("baseline", {}), res.get("mtaclip", {})
    if base.get("peak_mib") and mta.get("peak_mib"):
        out["peak_memory"] = mta["peak_mib"] / base["peak_mib"]
    return out


def step_model_bench(c: Check):
    precisions = ["fp32", "bf16", "fp16"]
    for precision in precisions:
        name = f"bench_mtaclip_{precision}"
        if not c.cuda and precision != "fp32":
            c.record(name, NO_CUDA, 0.0)
            continue
        out_json = os.path.join(c.logs, f"{name}.json")
        if c.cuda:
            sizes = BENCH_FULL if precision == "fp32" else BENCH_AMP
            cmd = ["--device", "cuda", "--amp", "off" if precision == "fp32" else precision, *sizes]
            limit = 180 if precision == "fp32" else 120
        else:
            cmd, limit = ["--device", "cpu", *BENCH_CPU], 420
        # --opts (REMAINDER) must come last
        opts_at = cmd.index("--opts") if "--opts" in cmd else len(cmd)
        cmd = cmd[:opts_at] + ["--json", out_json] + cmd[opts_at:]
        code, text, secs = c.run(name, [c.args.python, "benchmarks/bench_mtaclip.py", *cmd], limit)
        if code != 0 or not os.path.exists(out_json):
            c.record(name, "FAIL" if code is not None else "NOT RUN", secs, error=_tail(text))
            continue
        with open(out_json) as f:
            bench = json.load(f)
        models = {}
        for key in ("baseline", "mtaclip"):
            r = bench["results"][key]
            models[key] = {
                k: r.get(k)
                for k in (
                    "model",
                    "train_step_ms",
                    "peak_mib",
                    "inference_ms",
                    "loss_last",
                    "grads_finite",
                    "inference_finite",
                    "amp",
                    "ms_deform_attn",
                )
            }
        ratios = _ratios(bench)
        targets = {k: {"ratio": round(v, 3), "target": TARGETS[k], "met": v <= TARGETS[k]} for k, v in ratios.items()}
        finite = all(m["grads_finite"] and m["inference_finite"] for m in models.values())
        c.record(
            name,
            "PASS" if finite else "FAIL",
            secs,
            size=bench["args"]["size"],
            batch=bench["args"]["batch"],
            machine=bench["machine"],
            models=models,
            targets=targets,
        )


def step_op_bench(c: Check):
    out_json = os.path.join(c.logs, "bench_ms_deform_attn.json")
    device = "cuda" if c.cuda else "cpu"
    code, text, secs = c.run(
        "bench_ms_deform_attn",
        [
            c.args.python,
            "benchmarks/bench_ms_deform_attn.py",
            "--device",
            device,
            *OP_BENCH[c.cuda],
            "--json",
            out_json,
        ],
        150,
    )
    if code != 0 or not os.path.exists(out_json):
        c.record("bench_ms_deform_attn", "FAIL" if code is not None else "NOT RUN", secs, error=_tail(text))
        return
    with open(out_json) as f:
        bench = json.load(f)
    rows = {r["impl"]: r for r in bench["rows"]}
    errors = [f"{k}: {r['error']}" for k, r in rows.items() if "error" in r]
    speedup = None
    if not errors and "pytorch" in rows and "compiled" in rows:
        speedup = rows["pytorch"]["total_ms"] / rows["compiled"]["total_ms"]
    target = (
        {"speedup": round(speedup, 2), "target": OP_SPEEDUP_TARGET, "met": speedup >= OP_SPEEDUP_TARGET}
        if c.cuda and speedup is not None
        else NO_CUDA
    )
    c.record(
        "bench_ms_deform_attn",
        "FAIL" if errors else "PASS",
        secs,
        device=device,
        batch=bench["args"]["batch"],
        machine=bench["machine"],
        rows=bench["rows"],
        speedup=speedup,
        target=target,
        errors=errors,
    )


def step_training(c: Check):
    spec = TRAIN[c.cuda]
    work = os.path.join(ROOT, "output", "gpu_check")
    out_dir = os.path.join(work, "toy_train")
    shutil.rmtree(out_dir, ignore_errors=True)
    os.makedirs(work, exist_ok=True)
    clip = os.path.join(work, "tiny_clip_RN50.pt")
    env = {"DETECTRON2_DATASETS": os.path.join(work, "datasets")}
    code, text, secs0 = c.run(
        "training_setup", [c.args.python, "tools/make_tiny_clip.py", "--arch", "RN50", "--output", clip], 120, env
    )
    if code != 0:
        c.record("training", "FAIL" if code is not None else "NOT RUN", secs0, error=_tail(text))
        return
    cmd = [
        c.args.python,
        "train_net.py",
        "--config-file",
        "configs/toy/mtaclip_toy.yaml",
        "--num-gpus",
        "1",
        "MODEL.DEVICE",
        "cuda" if c.cuda else "cpu",
        "MODEL.CLIP.WEIGHTS",
        clip,
        "SOLVER.MAX_ITER",
        str(spec["iters"]),
        "OUTPUT_DIR",
        out_dir,
    ]
    code, text, secs = c.run("training", cmd, 240 if c.cuda else 420, env)
    secs += secs0
    metrics_path = os.path.join(out_dir, "metrics.json")
    if code != 0 or not os.path.exists(metrics_path):
        c.record("training", "FAIL" if code is not None else "NOT RUN", secs, error=_tail(text))
        return
    with open(metrics_path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    losses = [(r["iteration"], r["total_loss"]) for r in rows if "total_loss" in r]
    mious = [r["sem_seg/mIoU"] for r in rows if "sem_seg/mIoU" in r]
    if len(losses) < 4 or not mious:
        c.record("training", "FAIL", secs, error=f"metrics.json has {len(losses)} loss rows and {len(mious)} mIoU rows")
        return
    window = max(1, len(losses) // 4)
    first = sum(v for _, v in losses[:window]) / window
    last = sum(v for _, v in losses[-window:]) / window
    learned = last <= spec["drop"] * first and mious[-1] >= spec["miou"]
    c.record(
        "training",
        "PASS" if learned else "FAIL",
        secs,
        device="cuda" if c.cuda else "cpu",
        iterations=spec["iters"],
        loss_first=round(first, 3),
        loss_last=round(last, 3),
        loss_rows=len(losses),
        miou=round(mious[-1], 2),
        miou_threshold=spec["miou"],
        required_loss_ratio=spec["drop"],
        seconds_per_iter=_seconds_per_iter(rows),
    )


def _seconds_per_iter(rows):
    times = [r["time"] for r in rows if "time" in r]
    return round(sorted(times)[len(times) // 2], 4) if times else None


# --------------------------------------------------------------------------- report
def _fmt(x, digits=1):
    return "n/a" if x is None else f"{x:,.{digits}f}"


def markdown(c: Check, env) -> str:
    lines = ["# GPU check", ""]
    mode = "CPU rehearsal (tiny sizes)" if c.args.cpu_rehearsal else ("CUDA" if c.cuda else "no CUDA")
    lines.append(
        f"Mode: {mode}. Date (UTC): {time.strftime('%Y-%m-%d %H:%M', time.gmtime())}. "
        f"Total: {time.monotonic() - c.start:.0f} s (setup {c.args.setup_s:.0f} s) "
        f"of a {c.args.budget_s:.0f} s budget."
    )
    lines.append("")
    lines += ["| step | status | seconds |", "|---|---|---|"]
    setup = "PASS" if c.args.setup_ok else "FAIL"
    lines.append(f"| setup (offline install, op build) | {setup} | {c.args.setup_s:.0f} |")
    for s in c.steps:
        lines.append(f"| {s['step']} | {s['status']} | {s['seconds']:.0f} |")
    if env:
        lines += ["", "## Environment", ""]
        for key in (
            "gpu",
            "nvidia_smi",
            "capability",
            "gpu_memory_gib",
            "python",
            "torch",
            "torch_cuda",
            "cudnn",
            "numpy",
            "detectron2",
            "open_clip",
            "op_built",
            "op_with_cuda",
            "op_cuda_version",
            "cpu_count",
        ):
            if key in env:
                lines.append(f"- {key}: {env[key]}")
    for s in c.steps:
        if s["step"] == "op_tests" and "counts" in s:
            lines += [
                "",
                "## Op tests (tests/layers)",
                "",
                f"passed {s['counts']['passed']}, failed {s['counts']['failed']}, "
                f"skipped {s['counts']['skipped']}; "
                f"CUDA tests: "
                + (
                    NO_CUDA + f" ({s['cuda_counts']['skipped']})"
                    if not c.cuda
                    else f"passed {s['cuda_counts']['passed']}, failed {s['cuda_counts']['failed']}, "
                    f"skipped {s['cuda_counts']['skipped']}"
                ),
            ]
            lines += [f"- failed: {x}" for x in s["failed"]]
            lines += [f"- unexpected skip: {x}" for x in s["unexpected_skips"]]
    bench = [s for s in c.steps if s["step"].startswith("bench_mtaclip")]
    if bench:
        lines += ["", "## MTA-CLIP R50 vs Mask2Former* R50 (random CLIP weights, RN50 shapes)", ""]
        lines += [
            "| precision | model | train step ms | peak MiB | inference ms | loss | grads finite |",
            "|---|---|---|---|---|---|---|",
        ]
        for s in bench:
            precision = s["step"].rsplit("_", 1)[1]
            if "models" not in s:
                lines.append(f"| {precision} | {s['status']} | | | | | |")
                continue
            for m in s["models"].values():
                lines.append(
                    f"| {precision} ({s['size']}x{s['size']}, batch {s['batch']}) | {m['model']} | "
                    f"{_fmt(m['train_step_ms'])} | {_fmt(m['peak_mib'])} | {_fmt(m['inference_ms'])} | "
                    f"{_fmt(m['loss_last'], 3)} | {m['grads_finite']} |"
                )
        lines += ["", "| precision | ratio | MTA-CLIP / Mask2Former* | target | met |", "|---|---|---|---|---|"]
        for s in bench:
            for key, t in s.get("targets", {}).items():
                lines.append(
                    f"| {s['step'].rsplit('_', 1)[1]} | {key} | {t['ratio']:.2f}x | <= {t['target']:.2f}x | "
                    f"{'yes' if t['met'] else 'NO'} |"
                )
        if c.args.cpu_rehearsal:
            lines.append("\n(CPU rehearsal at a tiny shape: the targets apply to the GPU run at 512x512, batch 8.)")
        machine = next((s["machine"] for s in bench if "machine" in s), None)
        if machine:
            lines.append(
                f"\nmachine: {machine}; train-step and inference ratios from both models timed in turns "
                f"in one process, peak memory from one process per model"
            )
    for s in c.steps:
        if s["step"] == "bench_ms_deform_attn" and "rows" in s:
            lines += [
                "",
                f"## Multi-scale deformable attention op ({s['device']}, batch {s['batch']}, ADE20k R50 512 shapes)",
                "",
                "| impl | fwd ms | bwd ms | fwd+bwd ms | peak MiB |",
                "|---|---|---|---|---|",
            ]
            for r in s["rows"]:
                if "error" in r:
                    lines.append(f"| {r['impl']} | error: {r['error']} | | | |")
                else:
                    lines.append(
                        f"| {r['impl']} | {r['fwd_ms']:.2f} | {r['bwd_ms']:.2f} | {r['total_ms']:.2f} | "
                        f"{_fmt(r['peak_mib'])} |"
                    )
            target = s["target"]
            met = target if isinstance(target, str) else ("met" if target["met"] else "NOT met")
            lines.append(
                f"\nspeed-up (PyTorch path / compiled op, fwd+bwd): {_fmt(s['speedup'], 2)}x; target >= 5x: {met}"
            )
        if s["step"] == "training" and "miou" in s:
            lines += [
                "",
                "## Short training run (toy data, MTA-CLIP toy config)",
                "",
                f"{s['iterations']} iterations on {s['device']}: total loss {s['loss_first']} "
                f"(first quarter of the logged rows) -> {s['loss_last']} "
                f"(last quarter; required <= {s['required_loss_ratio']}x), "
                f"val mIoU {s['miou']} (required >= {s['miou_threshold']}), "
                f"{_fmt(s['seconds_per_iter'], 3)} s / iteration",
            ]
    errors = [s for s in c.steps if "error" in s]
    if errors:
        lines += ["", "## Errors (last lines of each failed step's log; all logs in logs.tar.gz)", ""]
        for s in errors:
            lines += [f"### {s['step']}", "", "```", s["error"], "```"]
    return "\n".join(lines) + "\n"


def _write_atomic(path: str, text: str):
    with tempfile.NamedTemporaryFile("w", dir=os.path.dirname(path), suffix=".tmp", delete=False) as f:
        f.write(text)
    os.chmod(f.name, 0o644)
    os.replace(f.name, path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir")
    parser.add_argument("--python", default=sys.executable, help="the project's Python (its venv)")
    parser.add_argument("--cpu-rehearsal", action="store_true", help="run every step on the CPU at tiny sizes")
    parser.add_argument("--budget-s", type=float, default=480.0, help="total seconds, setup included")
    parser.add_argument("--elapsed-s", type=float, default=0.0, help="seconds already spent (setup)")
    parser.add_argument("--setup-s", type=float, default=0.0, help="seconds the setup took (reported)")
    parser.add_argument(
        "--setup-status",
        choices=("ok", "failed", "unusable"),
        default="ok",
        help="failed: report it, run the steps anyway; unusable: report it, run nothing",
    )
    parser.add_argument("--setup-log", default="", help="log of the setup, copied into the logs")
    args = parser.parse_args(argv)
    args.setup_ok = args.setup_status == "ok"
    c = Check(args)
    if args.setup_log and os.path.exists(args.setup_log):
        shutil.copy(args.setup_log, os.path.join(c.logs, "setup.log"))
    env = None
    if args.setup_status != "unusable":
        env = step_environment(c)
        if env is not None:
            if args.cpu_rehearsal and c.cuda:
                print("[gpu_check] --cpu-rehearsal: CUDA is present but not used", flush=True)
                c.cuda = False
            if not args.cpu_rehearsal and not c.cuda:
                c.record(
                    "cuda",
                    "FAIL",
                    0.0,
                    error="no CUDA device (torch.cuda.is_available() is False); "
                    "use --cpu-rehearsal to rehearse on the CPU",
                )
            else:
                step_op_tests(c)
                step_model_bench(c)
                step_op_bench(c)
                step_training(c)
    report = {
        "mode": "cpu-rehearsal" if args.cpu_rehearsal else "cuda",
        "setup": args.setup_status,
        "setup_seconds": args.setup_s,
        "total_seconds": round(time.monotonic() - c.start, 1),
        "budget_seconds": args.budget_s,
        "environment": env,
        "steps": c.steps,
    }
    ok = args.setup_ok and bool(c.steps) and all(s["status"] in ("PASS", NO_CUDA) for s in c.steps)
    report["ok"] = ok
    _write_atomic(os.path.join(c.out, "gpu_check.json"), json.dumps(report, indent=1) + "\n")
    _write_atomic(os.path.join(c.out, "gpu_check.md"), markdown(c, env))
    with tarfile.open(os.path.join(c.out, "logs.tar.gz.tmp"), "w:gz") as tar:
        tar.add(c.logs, arcname="logs")
    os.replace(os.path.join(c.out, "logs.tar.gz.tmp"), os.path.join(c.out, "logs.tar.gz"))
    shutil.rmtree(c.logs)
    print(f"[gpu_check] {'OK' if ok else 'FAILED'}: {os.path.join(c.out, 'gpu_check.md')}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
