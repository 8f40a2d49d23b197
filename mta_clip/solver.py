"""Optimizer (parameter groups, full-model gradient clipping) and the warm-up + poly schedule."""

import itertools
import logging
from typing import Any, Dict, List, Set, Type

import torch
from detectron2.config import CfgNode
from detectron2.solver import build_lr_scheduler as d2_build_lr_scheduler
from detectron2.solver.lr_scheduler import LRMultiplier
from fvcore.common.param_scheduler import ParamScheduler, PolynomialDecayParamScheduler

from .config import choice

logger = logging.getLogger(__name__)

_NORM_TYPES = (
    torch.nn.BatchNorm1d,
    torch.nn.BatchNorm2d,
    torch.nn.BatchNorm3d,
    torch.nn.SyncBatchNorm,
    torch.nn.GroupNorm,
    torch.nn.InstanceNorm1d,
    torch.nn.InstanceNorm2d,
    torch.nn.InstanceNorm3d,
    torch.nn.LayerNorm,
    torch.nn.LocalResponseNorm,
)


def check_solver_config(cfg: CfgNode) -> None:
    """Impossible ``SOLVER`` values are a ValueError naming the key (before anything is built)."""
    sv = cfg.SOLVER
    checks = [
        ("SOLVER.MAX_ITER", sv.MAX_ITER, sv.MAX_ITER > 0, "must be > 0 (the number of training iterations)"),
        ("SOLVER.IMS_PER_BATCH", sv.IMS_PER_BATCH, sv.IMS_PER_BATCH > 0, "must be > 0"),
        ("SOLVER.BASE_LR", sv.BASE_LR, sv.BASE_LR >= 0, "must be >= 0"),
        ("SOLVER.BACKBONE_MULTIPLIER", sv.BACKBONE_MULTIPLIER, sv.BACKBONE_MULTIPLIER >= 0, "must be >= 0"),
        ("SOLVER.WEIGHT_DECAY", sv.WEIGHT_DECAY, sv.WEIGHT_DECAY >= 0, "must be >= 0"),
        (
            "SOLVER.WARMUP_ITERS",
            sv.WARMUP_ITERS,
            0 <= sv.WARMUP_ITERS <= max(sv.MAX_ITER, 0),
            f"must be in [0, SOLVER.MAX_ITER = {sv.MAX_ITER}] (a warm-up longer than the run)",
        ),
        ("SOLVER.CHECKPOINT_PERIOD", sv.CHECKPOINT_PERIOD, sv.CHECKPOINT_PERIOD > 0, "must be > 0"),
    ]
    for key, value, ok, expected in checks:
        if not ok or value != value:  # value != value: NaN
            raise ValueError(f"{key} = {value} {expected}")


def param_groups(cfg: CfgNode, model: torch.nn.Module) -> List[Dict[str, Any]]:
    """One group per trainable parameter with its lr and weight decay.

    Backbone parameters (name starts with ``backbone.``) get ``BACKBONE_MULTIPLIER``; norm
    parameters get ``WEIGHT_DECAY_NORM``; ``nn.Embedding`` weights get ``WEIGHT_DECAY_EMBED``.
    Norm parameters of the backbone get ``WEIGHT_DECAY`` instead when
    ``SOLVER.BACKBONE_NORM_WEIGHT_DECAY`` is ``"WEIGHT_DECAY"`` (the MTA-CLIP authors: mmengine's
    ``backbone`` custom key takes precedence over their ``norm_decay_mult=0``).
    Frozen parameters (``requires_grad=False``, e.g. the CLIP text encoder) are left out; those a
    module lists in ``zero_lr_parameters()`` (the text tower with
    ``MODEL.CLIP.TEXT.FREEZE_BY_ZERO_LR``) get lr 0 and weight decay 0: never changed, but their
    gradients count in the full-model clipping norm.
    """
    from detectron2.layers import FrozenBatchNorm2d

    norm_types = _NORM_TYPES + (FrozenBatchNorm2d,)
    backbone_norm = choice(
        BACKBONE_NORM_WEIGHT_DECAYS, cfg.SOLVER.BACKBONE_NORM_WEIGHT_DECAY, "SOLVER.BACKBONE_NORM_WEIGHT_DECAY"
    )
    zero_lr = {id(p) for m in model.modules() if hasattr(m, "zero_lr_parameters") for p in m.zero_lr_parameters()}
    groups: List[Dict[str, Any]] = []
    seen: Set[int] = set()
    for module_name, module in model.named_modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            full = f"{module_name}.{name}" if module_name else name
            lr = cfg.SOLVER.BASE_LR
            wd = cfg.SOLVER.WEIGHT_DECAY
            in_backbone = full.startswith("backbone.") or ".backbone." in full
            if in_backbone:
                lr = lr * cfg.SOLVER.BACKBONE_MULTIPLIER
            if isinstance(module, norm_types):
                if not (in_backbone and backbone_norm == "weight_decay"):
                    wd = cfg.SOLVER.WEIGHT_DECAY_NORM
            elif isinstance(module, torch.nn.Embedding):
                wd = cfg.SOLVER.WEIGHT_DECAY_EMBED
            if id(p) in zero_lr:
                lr, wd = 0.0, 0.0
            groups.append({"params": [p], "lr": lr, "weight_decay": wd, "name": full})
    return groups


#: values of ``SOLVER.BACKBONE_NORM_WEIGHT_DECAY``
BACKBONE_NORM_WEIGHT_DECAYS = ("weight_decay_norm", "weight_decay")  # case-insensitive
#: values of ``SOLVER.POLY_LR_AFTER_WARMUP``
POLY_LR_AFTER_WARMUP = ("multiply", "restart")


def _with_full_model_clipping(optim_cls: Type[torch.optim.Optimizer], clip_norm: float):
    """Subclass of ``optim_cls`` whose ``step`` first clips the norm of all gradients together."""

    class FullModelGradClip(optim_cls):
        def step(self, closure=None):
            params = itertools.chain(*[g["params"] for g in self.param_groups])
            torch.nn.utils.clip_grad_norm_(params, clip_norm)
            return super().step(closure=closure)

    FullModelGradClip.__name__ = optim_cls.__name__ + "WithFullModelGradClip"
    return FullModelGradClip


def build_optimizer(cfg: CfgNode, model: torch.nn.Module) -> torch.optim.Optimizer:
    """AdamW / SGD over ``param_groups``; clipping per ``SOLVER.CLIP_GRADIENTS``."""
    groups = param_groups(cfg, model)
    name = cfg.SOLVER.OPTIMIZER.upper()
    clip = cfg.SOLVER.CLIP_GRADIENTS
    full_model_clip = clip.ENABLED and clip.CLIP_TYPE == "full_model" and clip.CLIP_VALUE > 0
    if name == "ADAMW":
        cls, kwargs = torch.optim.AdamW, {"lr": cfg.SOLVER.BASE_LR}
    elif name == "SGD":
        cls, kwargs = torch.optim.SGD, {"lr": cfg.SOLVER.BASE_LR, "momentum": cfg.SOLVER.MOMENTUM}
    else:
        raise ValueError(f"SOLVER.OPTIMIZER must be 'ADAMW' or 'SGD', got {cfg.SOLVER.OPTIMIZER!r}")
    if full_model_clip:
        cls = _with_full_model_clipping(cls, clip.CLIP_VALUE)
    elif clip.ENABLED:
        from detectron2.solver.build import maybe_add_gradient_clipping

        cls = maybe_add_gradient_clipping(cfg, cls)
    n_params = sum(p.numel() for g in groups for p in g["params"])
    logger.info("Optimizer %s over %d tensors (%.2fM trainable parameters)", cls.__name__, len(groups), n_params / 1e6)
    return cls(groups, **kwargs)


class WarmupPoly(ParamScheduler):
    """lr factor = warm-up factor x poly factor (Mask2Former / mmseg convention).

    poly = (1 - where) ** power, held at ``constant_ending`` once it would fall below it (0 = off);
    during the first ``warmup_length`` of training the factor is multiplied by a warm-up factor
    going from ``warmup_factor`` to 1 ("linear") or fixed at ``warmup_factor`` ("constant").
    """

    def __init__(
        self, power: float, constant_ending: float, warmup_factor: float, warmup_length: float, warmup_method: str
    ):
        if warmup_method not in ("linear", "constant"):
            raise ValueError(f"SOLVER.WARMUP_METHOD must be 'linear' or 'constant', got {warmup_method!r}")
        self._poly = PolynomialDecayParamScheduler(base_value=1.0, power=power)
        self._constant_ending = constant_ending
        self._warmup_factor = warmup_factor
        self._warmup_length = warmup_length
        self._warmup_method = warmup_method

    def __call__(self, where: float) -> float:
        value = self._poly(where)
        if self._constant_ending > 0 and value < self._constant_ending:
            value = self._constant_ending
        if where < self._warmup_length:
            if self._warmup_method == "constant":
                value *= self._warmup_factor
            else:
                alpha = where / self._warmup_length
                value *= self._warmup_factor * (1 - alpha) + alpha
        return value


class WarmupThenPoly(ParamScheduler):
    """Warm-up, then poly decay restarted from 1 over the remaining iterations (the MTA-CLIP
    authors' mmengine ``LinearLR(begin=0, end=W)`` followed by ``PolyLR(begin=W, end=max_iter)``).

    At iteration ``i`` (``where = i / max_iter``), with mmengine's step counting:
    ``i < W``: ``f + (1 - f) * i / (W - 1)`` ("linear"; reaches 1 at ``W - 1``) or ``f``
    ("constant"); ``i >= W``: ``(1 - (i - W) / (max_iter - W - 1)) ** power`` (reaches 0 at the last
    iteration), held at ``constant_ending`` once it would fall below it (0 = off).
    """

    def __init__(
        self,
        power: float,
        constant_ending: float,
        warmup_factor: float,
        warmup_iters: int,
        warmup_method: str,
        max_iter: int,
    ):
        if warmup_method not in ("linear", "constant"):
            raise ValueError(f"SOLVER.WARMUP_METHOD must be 'linear' or 'constant', got {warmup_method!r}")
        self._power = power
        self._constant_ending = constant_ending
        self._warmup_factor = warmup_factor
        self._warmup_iters = min(warmup_iters, max_iter)
        self._warmup_method = warmup_method
        self._max_iter = max_iter

    def __call__(self, where: float) -> float:
        it = round(where * self._max_iter)  # Detectron2's LRMultiplier passes iter / max_iter
        if it < self._warmup_iters:
            if self._warmup_method == "constant" or self._warmup_iters == 1:
                return self._warmup_factor
            return self._warmup_factor + (1 - self._warmup_factor) * it / (self._warmup_iters - 1)
        span = max(self._max_iter - self._warmup_iters - 1, 1)
        value = max(1 - (it - self._warmup_iters) / span, 0.0) ** self._power
        if self._constant_ending > 0 and value < self._constant_ending:
            value = self._constant_ending
        return value


def build_lr_scheduler(cfg: CfgNode, optimizer: torch.optim.Optimizer):
    """``WarmupPolyLR``: with ``SOLVER.POLY_LR_AFTER_WARMUP = "multiply"`` (Mask2Former)
    lr * warmup(iter) * (1 - iter / max_iter) ** POLY_LR_POWER (``WarmupPoly``); with ``"restart"``
    (MTA-CLIP authors) warm-up, then poly from 1 over the remaining iterations (``WarmupThenPoly``).

    Other names go to Detectron2's builder.
    """
    check_solver_config(cfg)
    if cfg.SOLVER.LR_SCHEDULER_NAME != "WarmupPolyLR":
        return d2_build_lr_scheduler(cfg, optimizer)
    mode = choice(POLY_LR_AFTER_WARMUP, cfg.SOLVER.POLY_LR_AFTER_WARMUP, "SOLVER.POLY_LR_AFTER_WARMUP")
    if mode == "multiply":
        sched = WarmupPoly(
            cfg.SOLVER.POLY_LR_POWER,
            cfg.SOLVER.POLY_LR_CONSTANT_ENDING,
            cfg.SOLVER.WARMUP_FACTOR,
            min(cfg.SOLVER.WARMUP_ITERS / cfg.SOLVER.MAX_ITER, 1.0),
            cfg.SOLVER.WARMUP_METHOD,
        )
    else:
        sched = WarmupThenPoly(
            cfg.SOLVER.POLY_LR_POWER,
            cfg.SOLVER.POLY_LR_CONSTANT_ENDING,
            cfg.SOLVER.WARMUP_FACTOR,
            cfg.SOLVER.WARMUP_ITERS,
            cfg.SOLVER.WARMUP_METHOD,
            cfg.SOLVER.MAX_ITER,
        )
    return LRMultiplier(optimizer, multiplier=sched, max_iter=cfg.SOLVER.MAX_ITER)
