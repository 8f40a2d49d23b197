"""atomic_io: a failed write keeps the previous file and leaves no temporary file."""

import os

import pytest
import torch

from mta_clip.atomic_io import atomic_output, save_torch_atomic, write_text_atomic


def _entries(folder):
    return sorted(os.listdir(folder))


def test_text_and_tensor_round_trip(tmp_path):
    write_text_atomic(str(tmp_path / "sub" / "a.json"), "{}\n")
    assert (tmp_path / "sub" / "a.json").read_text() == "{}\n"
    save_torch_atomic({"x": torch.arange(3)}, str(tmp_path / "m.pth"))
    assert torch.equal(torch.load(tmp_path / "m.pth")["x"], torch.arange(3))
    assert _entries(tmp_path) == ["m.pth", "sub"]


def test_failure_mid_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "m.pth"
    save_torch_atomic({"v": 1}, str(path))
    before = path.read_bytes()
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_output(str(path)) as tmp:
            with open(tmp, "wb") as f:
                f.write(before[: len(before) // 2])  # half a file, then the writer dies
            raise RuntimeError("disk full")
    assert path.read_bytes() == before
    assert _entries(tmp_path) == ["m.pth"]


def test_temporary_file_keeps_the_extension(tmp_path):
    with atomic_output(str(tmp_path / "img.png")) as tmp:
        assert tmp.endswith(".png") and os.path.dirname(tmp) == str(tmp_path)
        open(tmp, "wb").close()
    assert _entries(tmp_path) == ["img.png"]


def test_temporary_files_of_killed_writers_are_removed(tmp_path):
    from mta_clip.atomic_io import remove_stale_temporary_files
    from mta_clip.checkpointer import AtomicCheckpointer

    dead = 2**22 + 12345  # above the largest pid Linux hands out
    (tmp_path / f".model_final.tmp-{dead}.pth").write_bytes(b"half")
    (tmp_path / f".last_checkpoint.tmp-{dead}").write_text("x")
    (tmp_path / f".model_0000009.tmp-{os.getpid()}.pth").write_bytes(b"being written")  # a live writer
    (tmp_path / "model_final.pth").write_bytes(b"whole")
    AtomicCheckpointer(torch.nn.Linear(2, 2), str(tmp_path))  # what a start or resume does
    assert _entries(tmp_path) == [f".model_0000009.tmp-{os.getpid()}.pth", "model_final.pth"]
    assert remove_stale_temporary_files(str(tmp_path)) == []
