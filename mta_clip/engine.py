"""Detectron2 trainer for this project (data, optimizer, schedule, evaluation, CPU-safe DDP).

No model logic lives here: the model comes from ``cfg.MODEL.META_ARCHITECTURE``.
"""
import logging
import os
import weakref
from typing import Optional

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode, get_cfg
from detectron2.data import MetadataCatalog, build_detection_train_loader
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, default_setup
from detectron2.engine.train_loop import TrainerBase
from detectron2.evaluation import DatasetEvaluators, SemSegEvaluator
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from torch.nn.parallel import DistributedDataParallel

from .config import add_mtaclip_config
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
        model = create_ddp_model(model, broadcast_buffers=False, find_unused_parameters=cfg.MODEL.FIND_UNUSED_PARAMETERS)
        use_amp = cfg.SOLVER.AMP.ENABLED and torch.cuda.is_available()
        self._trainer = (AMPTrainer if use_amp else SimpleTrainer)(model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = DetectionCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

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
        try:
            from .evaluation import PerClassSemSegEvaluator as Evaluator
        except ImportError:
            Evaluator = SemSegEvaluator
        return DatasetEvaluators([Evaluator(dataset_name, distributed=True, output_dir=output_folder)])


def setup_cfg(config_file: str, opts=None) -> CfgNode:
    """Detectron2 defaults + this project's keys, then the YAML, then ``opts`` overrides."""
    cfg = get_cfg()
    add_mtaclip_config(cfg)
    if config_file:
        cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts or []))
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logger.warning("MODEL.DEVICE=%s but CUDA is not available: using the CPU", cfg.MODEL.DEVICE)
        cfg.MODEL.DEVICE = "cpu"
    return cfg


def setup(args) -> CfgNode:
    cfg = setup_cfg(args.config_file, args.opts)
    cfg.freeze()
    default_setup(cfg, args)
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="mta_clip")
    return cfg
