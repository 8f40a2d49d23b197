"""Files that appear whole or not at all: every output goes to a temporary sibling first.

A stop in the middle of a write (killed job, full disk, exception) leaves the previous file, if
any, untouched and no temporary file behind. torch is imported only by :func:`save_torch_atomic`,
so the ONNX Runtime demo can load this file on a machine without torch.
"""

import os
import re
from contextlib import contextmanager
from typing import Any, Iterator, List

__all__ = ["atomic_output", "remove_stale_temporary_files", "write_text_atomic", "save_torch_atomic"]


@contextmanager
def atomic_output(path: str) -> Iterator[str]:
    """Yields a temporary path next to ``path`` (same extension, so writers that pick the format
    from the name still work). When the block ends without an error it replaces ``path``; in every
    case the temporary file is gone afterwards."""
    folder, name = os.path.split(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    stem, ext = os.path.splitext(name)
    tmp = os.path.join(folder, f".{stem}.tmp-{os.getpid()}{ext}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text_atomic(path: str, text: str) -> None:
    """Writes ``text`` (UTF-8, newlines as given) to ``path`` atomically."""
    with atomic_output(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(text)


def save_torch_atomic(obj: Any, path: str) -> None:
    """``torch.save(obj, path)`` atomically, flushed to disk before the rename."""
    import torch

    with atomic_output(path) as tmp:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())


_TMP_NAME = re.compile(r"^\..+\.tmp-(\d+)(\.[^.]*)?$")


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_temporary_files(folder: str) -> List[str]:
    """Removes the temporary files of ``atomic_output`` in ``folder`` (not recursive) whose writing
    process is gone (a job killed during a write); returns their paths."""
    removed = []
    for name in sorted(os.listdir(folder)):
        match = _TMP_NAME.match(name)
        path = os.path.join(folder, name)
        if match and os.path.isfile(path) and not _process_alive(int(match.group(1))):
            os.remove(path)
            removed.append(path)
    return removed
