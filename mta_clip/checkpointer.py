"""Detectron2's checkpointer with atomic saves, so that ``--resume`` always finds a whole file.

``DetectionCheckpointer`` writes ``model_XXXXXXX.pth`` / ``model_final.pth`` and the
``last_checkpoint`` tag in place; a job killed during the save leaves a truncated file that the
next ``--resume`` cannot read. Here both are written through a temporary file and a rename, and
the tag moves to the new file only after that file is complete.

Every file written here also carries the model description of ``mta_clip/model_file.py`` (class
names, palette, config) when the checkpointer is given one. Loading is strict on request
(evaluation, demo, Predictor): weights that do not fit the model are an error listing them.
Temporary files left by a killed save are removed when the next checkpointer starts.
"""

import os
from typing import Any, Dict, Optional

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode

from .atomic_io import remove_stale_temporary_files, save_torch_atomic, write_text_atomic

__all__ = ["AtomicCheckpointer", "check_weights_file"]


class AtomicCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` (same file contents and names, plus the model description) whose
    writes are atomic.

    Args (beyond Detectron2's):
        model_info: ``mta_clip.model_file.model_info(cfg)``, saved as ``"mta_clip"`` in every file.
        strict: loading weights that do not fit the model (missing, unexpected or mis-shaped tensors)
            raises ValueError listing them; otherwise a warning counts what was skipped.
    """

    def __init__(
        self, model, save_dir: str = "", *, model_info: Optional[Dict[str, Any]] = None, strict: bool = False, **kwargs
    ):
        super().__init__(model, save_dir, **kwargs)
        self.model_info = model_info
        self.strict = strict
        if self.save_dir and self.save_to_disk and os.path.isdir(self.save_dir):
            for path in remove_stale_temporary_files(self.save_dir):
                self.logger.warning("Removed %s, left by a checkpoint write that was killed", path)

    def _load_model(self, checkpoint: Any):
        total = len(checkpoint.get("model", {}))
        incompatible = super()._load_model(checkpoint)
        shapes = incompatible.incorrect_shapes
        shape_keys = {k for k, _, _ in shapes}
        missing = [k for k in incompatible.missing_keys if k not in shape_keys]  # (mis-shaped ones are "missing" too)
        unexpected = incompatible.unexpected_keys
        if not (shapes or missing or unexpected):
            return incompatible
        if self.strict:
            lines = [f"  {k}: {tuple(a)} in the file, {tuple(b)} in the model" for k, a, b in shapes]
            lines += [f"  missing from the file: {k}" for k in missing]
            lines += [f"  not in the model: {k}" for k in unexpected]
            raise ValueError(
                f"the weights do not fit the model ({len(shapes)} shape mismatches, {len(missing)} missing, "
                f"{len(unexpected)} unexpected tensors):\n"
                + "\n".join(lines[:40])
                + (f"\n  ... and {len(lines) - 40} more" if len(lines) > 40 else "")
                + "\nCheck that the config is the one the weights were trained with (TEST.STRICT_WEIGHTS False "
                "loads what fits)."
            )
        skipped = len(shapes) + len(unexpected)
        self.logger.warning(
            "Loaded %d of the %d tensors of the weights file: %d skipped (%d with another shape, %d not in the "
            "model); %d tensors of the model keep their initialization.",
            total - skipped,
            total,
            skipped,
            len(shapes),
            len(unexpected),
            len(missing) + len(shapes),
        )
        return incompatible

    def save(self, name: str, **kwargs) -> None:
        """Writes ``<save_dir>/<name>.pth`` with the model, every checkpointable and ``kwargs``."""
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        data.update({key: obj.state_dict() for key, obj in self.checkpointables.items()})
        data.update(kwargs)
        if self.model_info is not None:
            from .model_file import INFO_KEY

            data[INFO_KEY] = self.model_info
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
