"""Optimizer parameter groups, full-model gradient clipping and the warm-up + poly schedule."""

import math

import pytest
import torch
from torch import nn

from mta_clip.solver import build_lr_scheduler, build_optimizer, param_groups
from tests.conftest import toy_cfg


class _Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        self.head = nn.Linear(4, 2)
        self.norm = nn.LayerNorm(2)
        self.embed = nn.Embedding(3, 2)
        self.frozen = nn.Linear(2, 2)
        self.frozen.requires_grad_(False)


def _cfg(*opts):
    cfg = toy_cfg(
        "mask2former_toy.yaml",
        [
            "SOLVER.BASE_LR",
            "0.01",
            "SOLVER.WEIGHT_DECAY",
            "0.05",
            "SOLVER.BACKBONE_MULTIPLIER",
            "0.1",
            "SOLVER.WEIGHT_DECAY_NORM",
            "0.0",
            "SOLVER.WEIGHT_DECAY_EMBED",
            "0.0",
            *opts,
        ],
    )
    return cfg


def test_param_groups_lr_and_weight_decay():
    groups = {g["name"]: g for g in param_groups(_cfg(), _Toy())}
    assert "frozen.weight" not in groups and "frozen.bias" not in groups
    assert groups["backbone.0.weight"]["lr"] == pytest.approx(0.001)
    assert groups["backbone.0.weight"]["weight_decay"] == 0.05
    assert groups["backbone.1.weight"]["weight_decay"] == 0.0  # norm in the backbone
    assert groups["head.weight"]["lr"] == 0.01 and groups["head.weight"]["weight_decay"] == 0.05
    assert groups["norm.weight"]["weight_decay"] == 0.0
    assert groups["embed.weight"]["weight_decay"] == 0.0


def test_full_model_gradient_clipping_clips_the_global_norm():
    model = nn.Linear(3, 2)
    opt = build_optimizer(
        _cfg(
            "SOLVER.CLIP_GRADIENTS.CLIP_VALUE",
            "0.5",
            "SOLVER.OPTIMIZER",
            "SGD",
            "SOLVER.MOMENTUM",
            "0.0",
            "SOLVER.WEIGHT_DECAY",
            "0.0",
        ),
        model,
    )
    model.weight.grad = torch.full_like(model.weight, 3.0)
    model.bias.grad = torch.full_like(model.bias, 4.0)
    norm = math.sqrt(6 * 9 + 2 * 16)
    w0, b0 = model.weight.detach().clone(), model.bias.detach().clone()
    opt.step()
    # SGD without momentum: delta = -lr * grad * (0.5 / norm)
    torch.testing.assert_close(model.weight, w0 - 0.01 * 3.0 * 0.5 / norm)
    torch.testing.assert_close(model.bias, b0 - 0.01 * 4.0 * 0.5 / norm)


def test_unknown_optimizer_is_a_clear_error():
    with pytest.raises(ValueError, match="SOLVER.OPTIMIZER"):
        build_optimizer(_cfg("SOLVER.OPTIMIZER", "LAMB"), nn.Linear(2, 2))


@pytest.mark.parametrize("ending", [0.0, 0.2])
def test_warmup_poly_schedule_matches_formula(ending):
    cfg = _cfg(
        "SOLVER.MAX_ITER",
        "100",
        "SOLVER.WARMUP_ITERS",
        "10",
        "SOLVER.WARMUP_FACTOR",
        "0.1",
        "SOLVER.LR_SCHEDULER_NAME",
        "WarmupPolyLR",
        "SOLVER.POLY_LR_POWER",
        "0.9",
        "SOLVER.POLY_LR_CONSTANT_ENDING",
        str(ending),
    )
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.01)
    sched = build_lr_scheduler(cfg, opt)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    for it in (0, 5, 10, 50, 99):
        poly = max((1 - it / 100) ** 0.9, ending) if ending else (1 - it / 100) ** 0.9
        if it < 10:
            alpha = it / 10
            poly *= 0.1 * (1 - alpha) + alpha
        assert lrs[it] == pytest.approx(0.01 * poly, rel=1e-6), it


def _mmengine_lrs(base_lr, max_iter, warmup_iters, start_factor, power):
    """The MTA-CLIP authors' schedule as mmengine computes it (written from its chained
    ``LinearLR(begin=0, end=W)`` + ``PolyLR(begin=W, end=max_iter, eta_min=0)``): each scheduler
    counts its own steps while ``begin <= global_step < end``, ``total_iters = end - begin - 1``,
    and updates the current lr multiplicatively; the lr of iteration i is the value after i steps."""
    lr = base_lr
    lin_total, poly_total = warmup_iters - 1, max_iter - warmup_iters - 1
    lin_step = poly_step = -1
    lrs = []
    for global_step in range(max_iter):
        if 0 <= global_step < warmup_iters:
            lin_step += 1
            if lin_step == 0:
                lr = lr * start_factor
            else:
                step = 1.0 - start_factor
                lr = lr * (1.0 + step / (lin_total * start_factor + (lin_step - 1) * step))
        if warmup_iters <= global_step < max_iter:
            poly_step += 1
            if poly_step > 0:
                lr = lr * (1 - 1 / (poly_total - poly_step + 1)) ** power
        lrs.append(lr)
    return lrs


def test_restart_schedule_is_the_authors_mmengine_schedule():
    cfg = _cfg(
        "SOLVER.MAX_ITER",
        "60",
        "SOLVER.WARMUP_ITERS",
        "15",
        "SOLVER.WARMUP_FACTOR",
        "0.1",
        "SOLVER.WARMUP_METHOD",
        "linear",
        "SOLVER.LR_SCHEDULER_NAME",
        "WarmupPolyLR",
        "SOLVER.POLY_LR_POWER",
        "0.9",
        "SOLVER.POLY_LR_AFTER_WARMUP",
        "restart",
    )
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.01)
    sched = build_lr_scheduler(cfg, opt)
    lrs = []
    for _ in range(60):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    expected = _mmengine_lrs(0.01, 60, 15, 0.1, 0.9)
    for it in range(60):
        assert lrs[it] == pytest.approx(expected[it], rel=1e-9, abs=1e-15), it
    assert lrs[14] == pytest.approx(0.01) and lrs[15] == pytest.approx(0.01) and lrs[59] == pytest.approx(0.0)
    # the Mask2Former way multiplies: at the end of warm-up it is below 1 and never restarts
    cfg.defrost()
    cfg.SOLVER.POLY_LR_AFTER_WARMUP = "multiply"
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.01)
    sched = build_lr_scheduler(cfg, opt)
    for _ in range(15):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01 * (1 - 15 / 60) ** 0.9)


def test_bad_schedule_mode_is_a_clear_error():
    cfg = _cfg("SOLVER.LR_SCHEDULER_NAME", "WarmupPolyLR", "SOLVER.POLY_LR_AFTER_WARMUP", "cosine")
    with pytest.raises(ValueError, match="POLY_LR_AFTER_WARMUP.*'cosine'"):
        build_lr_scheduler(cfg, torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.01))


def test_backbone_norm_weight_decay_follows_the_authors_custom_key():
    """mmengine's DefaultOptimWrapperConstructor with the authors' paramwise_cfg (custom_keys
    'backbone' lr_mult 0.1 decay_mult 1.0; norm_decay_mult 0; embeddings decay 0): a custom key
    match wins, so backbone norm parameters decay at 0.05 x 1.0; head norms at 0.05 x 0."""
    groups = {g["name"]: g for g in param_groups(_cfg("SOLVER.BACKBONE_NORM_WEIGHT_DECAY", "WEIGHT_DECAY"), _Toy())}
    assert groups["backbone.1.weight"]["weight_decay"] == 0.05 and groups["backbone.1.bias"]["weight_decay"] == 0.05
    assert groups["backbone.1.weight"]["lr"] == pytest.approx(0.001)
    assert groups["norm.weight"]["weight_decay"] == 0.0  # not in the backbone: norm_decay_mult 0
    assert groups["head.weight"]["weight_decay"] == 0.05
    with pytest.raises(ValueError, match="BACKBONE_NORM_WEIGHT_DECAY.*'zero'"):
        param_groups(_cfg("SOLVER.BACKBONE_NORM_WEIGHT_DECAY", "zero"), _Toy())


@pytest.mark.parametrize(
    "key,value,match",
    [
        ("SOLVER.MAX_ITER", "0", "SOLVER.MAX_ITER = 0 must be > 0"),
        ("SOLVER.BASE_LR", "-0.1", "SOLVER.BASE_LR = -0.1 must be >= 0"),
        ("SOLVER.WARMUP_ITERS", "500", r"SOLVER.WARMUP_ITERS = 500 must be in \[0, SOLVER.MAX_ITER = 400\]"),
        ("SOLVER.IMS_PER_BATCH", "0", "SOLVER.IMS_PER_BATCH = 0 must be > 0"),
        ("SOLVER.CHECKPOINT_PERIOD", "0", "SOLVER.CHECKPOINT_PERIOD = 0 must be > 0"),
    ],
)
def test_impossible_solver_values_name_the_key(key, value, match):
    from mta_clip.solver import check_solver_config

    cfg = toy_cfg("mask2former_toy.yaml", [key, value])
    with pytest.raises(ValueError, match=match):
        check_solver_config(cfg)
    with pytest.raises(ValueError, match=match):  # also when a trainer builds its schedule
        build_lr_scheduler(cfg, torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1))
    check_solver_config(toy_cfg("mask2former_toy.yaml"))
