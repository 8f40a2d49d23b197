"""`python -m mta_clip.collect_env` reports versions and the state of the compiled op."""

import os
import subprocess
import sys

import torch

from mta_clip.collect_env import collect_env_info
from mta_clip.layers import ms_deform_attn as msda


def _rows(text):
    rows = {}
    for line in text.splitlines():
        key, _, value = line.partition("  ")
        rows[key.strip()] = value.strip()
    return rows


def test_collect_env_info_reports_versions_and_op():
    rows = _rows(collect_env_info())
    assert rows["torch"].startswith(torch.__version__)
    assert rows["torch CUDA build"] == str(torch.version.cuda)
    for key in ("Python", "detectron2", "open_clip", "mta_clip", "CUDA available", "nvcc", "CUDA_HOME"):
        assert key in rows, key
    assert "not importable" not in rows["detectron2"] and "not importable" not in rows["open_clip"]
    # The C++ op is part of every install (the CUDA kernels only where built with CUDA).
    assert rows["mta_clip._C built"].startswith("yes")
    assert rows["mta_clip._C loadable"] == "yes"
    assert rows["mta_clip._C CUDA kernels"].startswith("yes" if msda._C.with_cuda() else "no")
    assert rows["deform attn on CPU"] == "C++ kernel"
    cuda_op = msda.ms_deform_attn_op_available("cuda")
    assert rows["deform attn on CUDA"].startswith("CUDA kernel" if cuda_op else "PyTorch path")


def test_collect_env_reports_missing_op(monkeypatch):
    monkeypatch.setattr(msda, "_C", None)
    monkeypatch.setattr(msda, "_C_IMPORT_ERROR", "ImportError: simulated")
    rows = _rows(collect_env_info())
    assert rows["mta_clip._C loadable"] == "no (ImportError: simulated)"
    assert rows["deform attn on CPU"] == "PyTorch path"


def test_collect_env_module_runs_quietly(tmp_path):
    """Runs from any folder; no third-party FutureWarning at import (quiet start); a missing
    detectron2._C is reported as fine (this project does not use it)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(
        [sys.executable, "-W", "default", "-m", "mta_clip.collect_env"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "mta_clip._C loadable" in proc.stdout and torch.__version__ in proc.stdout
    assert "FutureWarning" not in proc.stderr, proc.stderr
    row = _rows(proc.stdout)["detectron2._C"]
    try:
        import detectron2._C  # noqa: F401
    except ImportError:
        assert row.startswith("not built (fine")
    else:
        assert row == "built"
