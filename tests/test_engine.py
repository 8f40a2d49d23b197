"""Trainer: a training step + evaluation of the toy configs, all-ignore labels, 2 CPU processes."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from mta_clip.data.toy import TOY_CLASSES
from mta_clip.engine import Trainer, check_launch_args, setup
from tests.conftest import ROOT, toy_cfg

SMALL = [
    "SOLVER.IMS_PER_BATCH",
    "2",
    "SOLVER.WARMUP_ITERS",
    "1",
    "DATALOADER.NUM_WORKERS",
    "0",
    "TEST.BEST_CHECKPOINT.ENABLED",
    "True",
]


def _train(cfg):
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    return getattr(trainer, "_last_eval_results", None), trainer


def _metrics(out_dir):
    with open(os.path.join(out_dir, "metrics.json")) as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.mark.parametrize("config", ["mask2former_toy.yaml", "mtaclip_toy.yaml"])
def test_train_steps_then_evaluate(tmp_path, tiny_clip_file, config):
    cfg = toy_cfg(
        config, [*SMALL, "SOLVER.MAX_ITER", "2", "OUTPUT_DIR", str(tmp_path), "MODEL.CLIP.WEIGHTS", tiny_clip_file]
    )
    results, _ = _train(cfg)
    assert 0.0 <= results["sem_seg"]["mIoU"] <= 100.0
    assert os.path.isfile(tmp_path / "model_final.pth")
    assert os.path.isfile(tmp_path / "model_best.pth")
    rows = _metrics(tmp_path)
    assert any("total_loss" in r for r in rows) and any("sem_seg/mIoU" in r for r in rows)
    per_class = list((tmp_path / "inference").rglob("*.csv"))
    assert per_class, "per-class table missing"


def test_all_ignore_label_trains(tmp_path):
    img_dir, lbl_dir = tmp_path / "img", tmp_path / "lbl"
    img_dir.mkdir()
    lbl_dir.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (96, 96, 3), dtype=np.uint8)).save(img_dir / f"{i}.png")
        Image.fromarray(np.full((96, 96), 255, np.uint8)).save(lbl_dir / f"{i}.png")
    name = "test_all_ignore_train"
    if name not in DatasetCatalog.list():
        DatasetCatalog.register(
            name,
            lambda: [
                {
                    "file_name": str(img_dir / f"{i}.png"),
                    "sem_seg_file_name": str(lbl_dir / f"{i}.png"),
                    "height": 96,
                    "width": 96,
                }
                for i in range(2)
            ],
        )
        MetadataCatalog.get(name).set(stuff_classes=list(TOY_CLASSES), ignore_label=255, evaluator_type="sem_seg")
    cfg = toy_cfg(
        "mask2former_toy.yaml",
        [
            *SMALL,
            "SOLVER.MAX_ITER",
            "2",
            "OUTPUT_DIR",
            str(tmp_path / "out"),
            "DATASETS.TRAIN",
            f"('{name}',)",
            "DATASETS.TEST",
            "()",
            "DATALOADER.FILTER_EMPTY_ANNOTATIONS",
            "False",
        ],
    )
    _train(cfg)
    rows = _metrics(tmp_path / "out")
    assert all(np.isfinite(r["total_loss"]) for r in rows if "total_loss" in r)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU path; with CUDA --num-gpus uses the GPUs")
def test_two_cpu_processes(tmp_path):
    """`--num-gpus 2` without CUDA runs two gloo processes (DDP without device ids)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        os.path.join(ROOT, "train_net.py"),
        "--num-gpus",
        "2",
        "--dist-url",
        "auto",
        "--config-file",
        os.path.join(ROOT, "configs", "toy", "mask2former_toy.yaml"),
        "SOLVER.MAX_ITER",
        "2",
        "SOLVER.WARMUP_ITERS",
        "1",
        "SOLVER.IMS_PER_BATCH",
        "4",
        "DATALOADER.NUM_WORKERS",
        "0",
        "OUTPUT_DIR",
        str(tmp_path),
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "world_size=2" in proc.stdout + proc.stderr or "World size: 2" in proc.stdout + proc.stderr
    assert os.path.isfile(tmp_path / "model_final.pth")
    assert any("sem_seg/mIoU" in r for r in _metrics(tmp_path))
    assert "broadcast_buffers` is deprecated" not in proc.stderr


def _args(*argv):
    from detectron2.engine import default_argument_parser

    return default_argument_parser().parse_args(list(argv))


def test_eval_only_without_weights_and_missing_config_are_clear_errors(tmp_path):
    toy = os.path.join(ROOT, "configs", "toy", "mtaclip_toy.yaml")
    with pytest.raises(ValueError, match="--eval-only needs weights"):
        setup(_args("--config-file", toy, "--eval-only", "OUTPUT_DIR", str(tmp_path)))
    with pytest.raises(ValueError, match="--eval-only needs weights"):  # --resume with nothing to resume
        setup(_args("--config-file", toy, "--eval-only", "--resume", "OUTPUT_DIR", str(tmp_path)))
    with pytest.raises(ValueError, match="--config-file is required"):
        setup(_args("OUTPUT_DIR", str(tmp_path)))


@pytest.mark.parametrize(
    "argv,match",
    [
        (["--num-machines", "2", "--machine-rank", "5", "--dist-url", "tcp://10.0.0.1:29500"], "--machine-rank 5"),
        (["--num-machines", "2"], "needs --dist-url"),
        (["--num-machines", "2", "--dist-url", "tcp://127.0.0.1:29500"], "needs --dist-url"),
    ],
)
def test_launch_arguments_that_would_hang_are_rejected(argv, match):
    with pytest.raises(ValueError, match=match):
        check_launch_args(_args(*argv))
    check_launch_args(_args("--num-machines", "2", "--machine-rank", "1", "--dist-url", "tcp://10.0.0.1:29500"))
    check_launch_args(_args())


def test_train_net_resume_and_eval_only(tmp_path):
    """train_net.py: train 2 iterations, --resume continues to 3, --eval-only evaluates the weights."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    base = [
        sys.executable,
        os.path.join(ROOT, "train_net.py"),
        "--config-file",
        os.path.join(ROOT, "configs", "toy", "mask2former_toy.yaml"),
    ]
    opts = [
        "SOLVER.IMS_PER_BATCH",
        "2",
        "DATALOADER.NUM_WORKERS",
        "0",
        "OUTPUT_DIR",
        str(tmp_path),
        "SOLVER.CHECKPOINT_PERIOD",
        "1",
        "TEST.EVAL_PERIOD",
        "0",
        "DATASETS.TEST",
        "()",
        "SOLVER.WARMUP_ITERS",
        "1",
    ]

    def run(*args):
        proc = subprocess.run([*base, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc.stdout + proc.stderr

    run(*opts, "SOLVER.MAX_ITER", "2")
    assert (tmp_path / "last_checkpoint").read_text().strip() == "model_final.pth"
    log = run("--resume", *opts, "SOLVER.MAX_ITER", "3")
    assert "Starting training from iteration 2" in log
    log = run(
        "--eval-only",
        "MODEL.WEIGHTS",
        str(tmp_path / "model_final.pth"),
        "OUTPUT_DIR",
        str(tmp_path / "eval"),
        "DATALOADER.NUM_WORKERS",
        "0",
    )
    assert "copypaste: mIoU" in log


def test_port_clash_suggests_dist_url_auto():
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(ValueError, match=f"port {port} cannot be used .* Use --dist-url auto"):
            check_launch_args(_args("--num-gpus", "2", "--dist-url", f"tcp://127.0.0.1:{port}"))
        check_launch_args(_args("--num-gpus", "1", "--dist-url", f"tcp://127.0.0.1:{port}"))  # one process: no port
        check_launch_args(_args("--num-gpus", "2", "--dist-url", "auto"))


def test_trainer_is_detectron2s_with_our_ddp_checkpointer_and_amp_only_on_cuda(tmp_path, monkeypatch):
    import detectron2.engine.defaults as d2
    from detectron2.engine import AMPTrainer, SimpleTrainer, hooks

    import mta_clip.engine as engine
    from mta_clip.checkpoint_retention import PeriodicCheckpointHook
    from mta_clip.checkpointer import AtomicCheckpointer

    original = (d2.create_ddp_model, d2.DetectionCheckpointer)
    calls = []
    monkeypatch.setattr(engine, "create_ddp_model", lambda model, **kw: calls.append(kw) or model)
    cfg = toy_cfg(
        "mask2former_toy.yaml",
        [
            *SMALL,
            "SOLVER.MAX_ITER",
            "1",
            "OUTPUT_DIR",
            str(tmp_path),
            "SOLVER.AMP.ENABLED",
            "True",
            "MODEL.FIND_UNUSED_PARAMETERS",
            "True",
        ],
    )
    made = []

    class Recording(Trainer):
        def build_checkpointer(self, cfg, model, save_dir, **kwargs):
            made.append(save_dir)
            return super().build_checkpointer(cfg, model, save_dir, **kwargs)

    trainer = Recording(cfg)
    assert (d2.create_ddp_model, d2.DetectionCheckpointer) == original  # Detectron2 left as it was
    assert calls == [{"find_unused_parameters": True, **engine._no_forward_buffer_sync()}]
    assert made == [str(tmp_path)] and type(trainer.checkpointer) is AtomicCheckpointer
    periodic = next(h for h in trainer._hooks if isinstance(h, PeriodicCheckpointHook))  # replaces Detectron2's
    assert not any(isinstance(h, hooks.PeriodicCheckpointer) for h in trainer._hooks)
    assert periodic.checkpointer is trainer.checkpointer
    expected = AMPTrainer if torch.cuda.is_available() else SimpleTrainer
    assert type(trainer._trainer) is expected and trainer.cfg.SOLVER.AMP.ENABLED == torch.cuda.is_available()
