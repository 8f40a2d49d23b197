"""Freezing of backbone parameters: what Detectron2's ``MODEL.BACKBONE.FREEZE_AT`` means here.

This project's backbones have their own freeze keys (or none); Detectron2's key, whose default
is 2, must not be silently ignored.
"""

import logging

__all__ = ["warn_unused_freeze_at"]

logger = logging.getLogger(__name__)


def warn_unused_freeze_at(cfg, backbone: str, instead: str) -> None:
    """Warns when ``MODEL.BACKBONE.FREEZE_AT`` is non-zero for a ``backbone`` that does not use it:
    a user who sets it to freeze the trunk would otherwise get no freezing and no word about it.
    ``instead`` tells what to do."""
    if cfg.MODEL.BACKBONE.FREEZE_AT != 0:
        logger.warning(
            "MODEL.BACKBONE.FREEZE_AT = %d is not used by %s (nothing is frozen by it): %s",
            cfg.MODEL.BACKBONE.FREEZE_AT,
            backbone,
            instead,
        )
