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
    cfg = toy_cfg("mask2former_toy.yaml", ["SOLVER.BASE_LR", "0.01", "SOLVER.WEIGHT_DECAY", "0.05",
                                           "SOLVER.BACKBONE_MULTIPLIER", "0.1", "SOLVER.WEIGHT_DECAY_NORM", "0.0",
                                           "SOLVER.WEIGHT_DECAY_EMBED", "0.0", *opts])
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
    opt = build_optimizer(_cfg("SOLVER.CLIP_GRADIENTS.CLIP_VALUE", "0.5", "SOLVER.OPTIMIZER", "SGD",
                               "SOLVER.MOMENTUM", "0.0", "SOLVER.WEIGHT_DECAY", "0.0"), model)
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
    cfg = _cfg("SOLVER.MAX_ITER", "100", "SOLVER.WARMUP_ITERS", "10", "SOLVER.WARMUP_FACTOR", "0.1",
               "SOLVER.LR_SCHEDULER_NAME", "WarmupPolyLR", "SOLVER.POLY_LR_POWER", "0.9",
               "SOLVER.POLY_LR_CONSTANT_ENDING", str(ending))
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


@pytest.mark.parametrize("key,value,match", [
    ("SOLVER.MAX_ITER", "0", "SOLVER.MAX_ITER = 0 must be > 0"),
    ("SOLVER.BASE_LR", "-0.1", "SOLVER.BASE_LR = -0.1 must be >= 0"),
    ("SOLVER.WARMUP_ITERS", "500", r"SOLVER.WARMUP_ITERS = 500 must be in \[0, SOLVER.MAX_ITER = 400\]"),
    ("SOLVER.IMS_PER_BATCH", "0", "SOLVER.IMS_PER_BATCH = 0 must be > 0"),
    ("SOLVER.CHECKPOINT_PERIOD", "0", "SOLVER.CHECKPOINT_PERIOD = 0 must be > 0"),
])
def test_impossible_solver_values_name_the_key(key, value, match):
    from mta_clip.solver import check_solver_config

    cfg = toy_cfg("mask2former_toy.yaml", [key, value])
    with pytest.raises(ValueError, match=match):
        check_solver_config(cfg)
    with pytest.raises(ValueError, match=match):  # also when a trainer builds its schedule
        build_lr_scheduler(cfg, torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1))
    check_solver_config(toy_cfg("mask2former_toy.yaml"))
