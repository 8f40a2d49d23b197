"""Detectron2's checkpointer with atomic saves, so that ``--resume`` always finds a whole file.

``DetectionCheckpointer`` writes ``model_XXXXXXX.pth`` / ``model_final.pth`` and the
``last_checkpoint`` tag in place; a job killed during the save leaves a truncated file that the
next ``--resume`` cannot read. Here both are written through a temporary file and a rename, and
the tag moves to the new file only after that file is complete.
"""
import os

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode

from .atomic_io import save_torch_atomic, write_text_atomic

__all__ = ["AtomicCheckpointer", "check_weights_file"]


class AtomicCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` (same file contents and names) whose writes are atomic."""

    def save(self, name: str, **kwargs) -> None:
        """Writes ``<save_dir>/<name>.pth`` with the model, every checkpointable and ``kwargs``."""
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        data.update({key: obj.state_dict() for key, obj in self.checkpointables.items()})
        data.update(kwargs)
        basename = f"{name}.pth"
        path = os.path.join(self.save_dir, basename)
        self.logger.info("Saving checkpoint to %s", path)
        save_torch_atomic(data, path)
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        write_text_atomic(os.path.join(self.save_dir, "last_checkpoint"), last_filename_basename)


def check_weights_file(cfg: CfgNode) -> None:
    """A ``MODEL.WEIGHTS`` that is set must be a readable local file (nothing is downloaded)."""
    path = cfg.MODEL.WEIGHTS
    if not path:
        return
    if "://" in path:
        raise ValueError(
            f"MODEL.WEIGHTS = {path!r} is a URL; this project never downloads at run time. Download the file "
            "yourself and set MODEL.WEIGHTS to its local path."
        )
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"MODEL.WEIGHTS file {path!r} ({os.path.abspath(path)}) does not exist. For the ImageNet "
            "Mask2Former recipes it is Detectron2's R-50.pkl "
            "(https://dl.fbaipublicfiles.com/detectron2/ImageNetPretrained/torchvision/R-50.pkl); for "
            "evaluation it is a checkpoint written by train_net.py (e.g. output/.../model_final.pth)."
        )
