"""Detectron2 trainer for this project (data, optimizer, schedule, evaluation, CPU-safe DDP).

No model logic lives here: the model comes from ``cfg.MODEL.META_ARCHITECTURE``.
"""
import inspect
import logging
import os
import weakref
from typing import Optional

import torch
from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog, build_detection_train_loader
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, default_setup
from detectron2.engine.train_loop import TrainerBase
from detectron2.evaluation import DatasetEvaluators
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from torch.nn.parallel import DistributedDataParallel

from .checkpointer import AtomicCheckpointer, check_weights_file
from .config import setup_cfg
from .evaluation import PerClassSemSegEvaluator
from .solver import build_lr_scheduler, build_optimizer

logger = logging.getLogger(__name__)


def create_ddp_model(model: torch.nn.Module, **kwargs) -> torch.nn.Module:
    """DDP wrapper that also works for CPU processes (gloo): device ids only on CUDA."""
    if comm.get_world_size() == 1:
        return model
    device = next(model.parameters()).device
    if device.type == "cuda":
        kwargs.setdefault("device_ids", [comm.get_local_rank()])
    else:
        kwargs["device_ids"] = None
    return DistributedDataParallel(model, **kwargs)


def _no_forward_buffer_sync() -> dict:
    """DDP keyword that stops buffer broadcasts at every forward (as Detectron2's trainer does):
    ``forward_sync_buffers=False`` (torch >= 2.13, buffers still synced once at start), else the
    older ``broadcast_buffers=False``."""
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters:
        return {"forward_sync_buffers": False}
    return {"broadcast_buffers": False}


class Trainer(DefaultTrainer):
    """``DefaultTrainer`` with this project's mapper, optimizer, schedule and evaluators."""

    def __init__(self, cfg: CfgNode):
        # Same construction order as DefaultTrainer, with a DDP wrapper that handles CPU.
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        model = create_ddp_model(model, find_unused_parameters=cfg.MODEL.FIND_UNUSED_PARAMETERS,
                                 **_no_forward_buffer_sync())
        use_amp = cfg.SOLVER.AMP.ENABLED and torch.cuda.is_available()
        self._trainer = (AMPTrainer if use_amp else SimpleTrainer)(model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = AtomicCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    def build_hooks(self):
        """Detectron2's hooks plus, right after evaluation, the best-checkpoint keeper."""
        from detectron2.engine import hooks

        from .evaluation import build_best_checkpoint_hook

        ret = super().build_hooks()
        best = build_best_checkpoint_hook(self.cfg, self.checkpointer) if comm.is_main_process() else None
        if best is not None:
            at = next(i for i, h in enumerate(ret) if isinstance(h, hooks.EvalHook))
            ret.insert(at + 1, best)
        return ret

    @classmethod
    def test(cls, cfg: CfgNode, model, evaluators=None):
        """Evaluation through the test-time augmentation wrapper when TEST.AUG / TEST.SLIDE ask for it."""
        from .evaluation import build_test_model

        return super().test(cfg, build_test_model(cfg, model), evaluators)

    @classmethod
    def build_train_loader(cls, cfg: CfgNode):
        from .data import SemanticMaskFormerMapper

        if cfg.INPUT.DATASET_MAPPER_NAME != "mask_former_semantic":
            raise ValueError(
                f"INPUT.DATASET_MAPPER_NAME must be 'mask_former_semantic', got {cfg.INPUT.DATASET_MAPPER_NAME!r}"
            )
        return build_detection_train_loader(cfg, mapper=SemanticMaskFormerMapper(cfg, True))

    @classmethod
    def build_optimizer(cls, cfg: CfgNode, model: torch.nn.Module):
        return build_optimizer(cfg, model)

    @classmethod
    def build_lr_scheduler(cls, cfg: CfgNode, optimizer):
        return build_lr_scheduler(cfg, optimizer)

    @classmethod
    def build_evaluator(cls, cfg: CfgNode, dataset_name: str, output_folder: Optional[str] = None):
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", "sem_seg")
        if evaluator_type != "sem_seg":
            raise ValueError(f"dataset {dataset_name!r} has evaluator_type {evaluator_type!r}; expected 'sem_seg'")
        return DatasetEvaluators([PerClassSemSegEvaluator(dataset_name, distributed=True, output_dir=output_folder)])


def check_launch_args(args) -> None:
    """Catches launcher arguments that would otherwise make every process wait forever."""
    if args.num_machines < 1 or not 0 <= args.machine_rank < args.num_machines:
        raise ValueError(
            f"--machine-rank {args.machine_rank} must be in [0, --num-machines {args.num_machines})"
        )
    if args.num_machines > 1 and (not args.dist_url or args.dist_url == "auto"
                                  or "127.0.0.1" in args.dist_url or "localhost" in args.dist_url):
        raise ValueError(
            f"--num-machines {args.num_machines} needs --dist-url tcp://<address of machine 0>:<port>, the same "
            f"on every machine; got {args.dist_url!r}"
        )


def setup(args) -> CfgNode:
    if not args.config_file:
        raise ValueError("--config-file is required (e.g. configs/toy/mtaclip_toy.yaml)")
    cfg = setup_cfg(args.config_file, args.opts)
    cfg.freeze()
    if not args.resume:
        check_weights_file(cfg)
    if args.eval_only and not cfg.MODEL.WEIGHTS and not (
        args.resume and os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "last_checkpoint"))
    ):
        raise ValueError(
            "--eval-only needs weights to evaluate: set MODEL.WEIGHTS to a checkpoint (e.g. "
            f"{os.path.join(cfg.OUTPUT_DIR, 'model_final.pth')}), or add --resume to use the last checkpoint in "
            f"OUTPUT_DIR {cfg.OUTPUT_DIR}"
        )
    default_setup(cfg, args)
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="mta_clip")
    return cfg
