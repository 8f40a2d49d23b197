"""Exact resume: kill -9 a CPU run, --resume, and the losses of the resumed iterations equal the
uninterrupted run's; the batch stream itself; metrics.json without stale rows; changed configs."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from detectron2.engine import HookBase
from torch.utils.data import DataLoader

from mta_clip.engine import Trainer, setup
from mta_clip.resume import ResumableBatchStream, _identity
from tests.conftest import ROOT, TOY_BASELINE_CONFIG
from tests.test_own_data_end_to_end import DATASET_FILE, train_net

MAX_ITER = 8


def _fake_mapper(record):
    return {"name": record["name"], "noise": float(np.random.rand()), "t": float(torch.rand(()))}


def test_batch_stream_is_a_function_of_seed_and_position():
    data = [{"name": i} for i in range(5)]
    fresh = ResumableBatchStream(data, _fake_mapper, batch_size=2, seed=3)
    first = [b for _, b in zip(range(7), iter(fresh))]
    stream = [r["name"] for b in first for r in b]
    assert sorted(stream[:5]) == sorted(stream[5:10]) == [0, 1, 2, 3, 4]  # one permutation per epoch
    state = np.random.get_state()[1].copy()
    resumed = ResumableBatchStream(data, _fake_mapper, batch_size=2, seed=3)
    resumed.start_batch = 4
    assert np.array_equal(np.random.get_state()[1], state)  # the global generators are left alone
    loader = DataLoader(
        resumed, batch_size=None, num_workers=2, collate_fn=_identity, generator=torch.Generator().manual_seed(0)
    )
    assert [b for _, b in zip(range(3), iter(loader))] == first[4:7]  # also with 2 workers
    rank1 = ResumableBatchStream(data, _fake_mapper, batch_size=2, seed=3, rank=1, world_size=2)
    assert rank1.batch(0) == fresh.batch(1)  # ranks take consecutive slices of one stream


class _Losses(HookBase):
    def __init__(self):
        self.values = {}

    def after_step(self):
        self.values[self.trainer.iter] = self.trainer.storage.history("total_loss").latest()


def _args(out, *extra):
    return train_net.get_parser().parse_args(_argv(out, *extra))


def _argv(out, *extra):
    """Command line of the test runs: flags of ``extra`` (``--resume``) first, its KEY VALUE pairs last."""
    flags = [e for e in extra if e.startswith("--")]
    return [
        "--config-file",
        TOY_BASELINE_CONFIG,
        "--dataset-file",
        DATASET_FILE,
        *flags,
        "DATASETS.TRAIN",
        "('example_own_data_train',)",
        "DATASETS.TEST",
        "()",
        "INPUT.MIN_SIZE_TRAIN",
        "(56, 64, 72)",
        "INPUT.CROP.SIZE",
        "(56, 56)",
        "SOLVER.IMS_PER_BATCH",
        "2",
        "SOLVER.MAX_ITER",
        str(MAX_ITER),
        "SOLVER.WARMUP_ITERS",
        "2",
        "SOLVER.CHECKPOINT_PERIOD",
        "2",
        "SEED",
        "7",
        "MODEL.DEVICE",
        "cpu",
        "MODEL.MASK_FORMER.DEC_LAYERS",
        "2",
        "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS",
        "1",
        "MODEL.MASK_FORMER.TRAIN_NUM_POINTS",
        "256",
        "DATALOADER.NUM_WORKERS",
        "0",
        "OUTPUT_DIR",
        str(out),
        *[e for e in extra if not e.startswith("--")],
    ]


def _run(args):
    cfg = setup(args)
    trainer = Trainer(cfg)
    hook = _Losses()
    trainer.register_hooks([hook])
    trainer.resume_or_load(resume=args.resume)
    start = trainer.start_iter
    trainer.train()
    return start, hook.values


def test_kill_9_then_resume_continues_the_same_run(tmp_path, restore_loggers):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the killed process runs with one thread too: same float sums
    try:
        killed = tmp_path / "killed"
        cmd = [sys.executable, os.path.join(ROOT, "train_net.py"), *_argv(killed, "DATALOADER.NUM_WORKERS", "1")]
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=dict(os.environ, OMP_NUM_THREADS="1"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.time() + 300
        # Wait for the tag, not the file: the file is renamed into place before last_checkpoint moves.
        while _tagged(killed) < "model_0000003.pth":
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            assert time.time() < deadline
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
        assert not (killed / "model_final.pth").exists(), "the run ended before it was killed"
        with open(killed / "metrics.json", "a") as f:  # rows the killed run wrote after its checkpoint
            f.write(json.dumps({"iteration": MAX_ITER - 1, "total_loss": -1.0}) + "\n" + '{"iteration": 9, "tot')
        # A kill between writing model_0000003.pth and moving the tag: resume from the previous one.
        between = tmp_path / "between"
        shutil.copytree(killed, between)
        (between / "config.yaml").write_text((killed / "config.yaml").read_text().replace(str(killed), str(between)))
        (between / "last_checkpoint").write_text("model_0000001.pth")
        start, resumed = _run(_args(killed, "--resume"))
        start_between, resumed_between = _run(_args(between, "--resume"))
        _, full = _run(_args(tmp_path / "full"))
    finally:
        torch.set_num_threads(threads)
    assert 4 <= start < MAX_ITER and sorted(resumed) == list(range(start, MAX_ITER))
    assert start_between == 2 and sorted(resumed_between) == list(range(2, MAX_ITER))
    for it in range(start, MAX_ITER):
        assert resumed[it] == pytest.approx(full[it], rel=1e-6, abs=1e-7), (it, resumed, full)
    for it in range(2, MAX_ITER):
        assert resumed_between[it] == pytest.approx(full[it], rel=1e-6, abs=1e-7), (it, resumed_between, full)
    for out in (killed, between):
        rows = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
        iterations = [r["iteration"] for r in rows if "iteration" in r]
        assert iterations == sorted(set(iterations)) and all(r.get("total_loss") != -1.0 for r in rows), out


def _tagged(out):
    """The checkpoint ``out/last_checkpoint`` names ('' while there is none); it is written atomically."""
    try:
        return (out / "last_checkpoint").read_text().strip()
    except FileNotFoundError:
        return ""


def test_resume_with_another_config_is_refused_before_anything_is_written(tmp_path, restore_loggers):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text(setup(_args(tmp_path / "first")).dump().replace(str(tmp_path / "first"), str(out)))
    (out / "last_checkpoint").write_text("model_0000001.pth")
    before = sorted(os.listdir(out))
    saved = (out / "config.yaml").read_text()
    with pytest.raises(
        ValueError,
        match=r"(?s)differs from the run's .*config.yaml in 2 key\(s\).*"
        r"MODEL.MASK_FORMER.NUM_OBJECT_QUERIES: 20 in the run, 10 now.*"
        r"SOLVER.BASE_LR: 0.0005 in the run, 0.001 now",
    ):
        setup(_args(out, "--resume", "SOLVER.BASE_LR", "0.001", "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES", "10"))
    assert sorted(os.listdir(out)) == before and (out / "config.yaml").read_text() == saved
    # MAX_ITER may change (to extend a run); a run that fails to start keeps the saved config.
    setup(_args(out, "--resume", "SOLVER.MAX_ITER", "20"))
    with pytest.raises(ValueError, match="SOLVER.MAX_ITER = 0 must be > 0"):
        train_net.main(_args(out, "SOLVER.MAX_ITER", "0"))
    assert (out / "config.yaml").read_text() == saved
    # A run that fails while its trainer is built (here: the image folder is gone) keeps it too.
    gone = tmp_path / "gone.yaml"
    gone.write_text("name: gone_test\nclasses: [a, b, c]\nimages: nowhere/images\nlabels: nowhere/labels\n")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        train_net.main(
            train_net.get_parser().parse_args(
                [
                    "--config-file",
                    TOY_BASELINE_CONFIG,
                    "--dataset-file",
                    str(gone),
                    "DATASETS.TRAIN",
                    "('gone_test',)",
                    "DATASETS.TEST",
                    "()",
                    "SOLVER.WARMUP_ITERS",
                    "0",
                    "OUTPUT_DIR",
                    str(out),
                ]
            )
        )
    assert (out / "config.yaml").read_text() == saved


def test_keys_added_by_a_later_version_do_not_block_a_resume():
    from mta_clip.config import setup_cfg
    from mta_clip.resume import config_differences

    cfg = setup_cfg(TOY_BASELINE_CONFIG)
    saved = cfg.dump().replace("  EXACT_RESUME: true\n", "")  # a run started before the key existed
    assert "EXACT_RESUME" not in saved and config_differences(saved, cfg) == {}
    assert config_differences(saved.replace("BASE_LR: 0.0005", "BASE_LR: 0.001"), cfg) == {
        "SOLVER.BASE_LR": (0.001, 0.0005)
    }
