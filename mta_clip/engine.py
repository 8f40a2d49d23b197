"""Detectron2 trainer for this project (data, optimizer, schedule, evaluation, CPU-safe DDP).

No model logic lives here: the model comes from ``cfg.MODEL.META_ARCHITECTURE``.
"""

import contextlib
import functools
import inspect
import logging
import os
from typing import Optional

import torch
from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog, build_detection_train_loader
from detectron2.engine import DefaultTrainer
from detectron2.engine import defaults as detectron2_defaults
from detectron2.evaluation import DatasetEvaluators
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng
from detectron2.utils.logger import setup_logger
from torch.nn.parallel import DistributedDataParallel

from .checkpointer import AtomicCheckpointer, check_weights_file
from .config import setup_cfg
from .evaluation import PerClassSemSegEvaluator
from .resume import ResumableBatchStream, build_resumable_train_loader
from .solver import build_lr_scheduler, build_optimizer, check_solver_config

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


def _ddp_for_detectron2(model: torch.nn.Module, *, ddp_kwargs: dict, **detectron2_kwargs) -> torch.nn.Module:
    """:func:`create_ddp_model` with ``ddp_kwargs``, called where ``DefaultTrainer`` calls
    Detectron2's; its keywords (``broadcast_buffers=False``) are replaced by ``ddp_kwargs``."""
    return create_ddp_model(model, **ddp_kwargs)


def _no_forward_buffer_sync() -> dict:
    """DDP keyword that stops buffer broadcasts at every forward (as Detectron2's trainer does):
    ``forward_sync_buffers=False`` (torch >= 2.13, buffers still synced once at start), else the
    older ``broadcast_buffers=False``."""
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters:
        return {"forward_sync_buffers": False}
    return {"broadcast_buffers": False}


@contextlib.contextmanager
def _replaced(module, **attributes):
    """Sets ``module``'s attributes for the duration of the block, then restores them."""
    saved = {name: getattr(module, name) for name in attributes}
    for name, value in attributes.items():
        setattr(module, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(module, name, value)


class Trainer(DefaultTrainer):
    """``DefaultTrainer`` with this project's mapper, optimizer, schedule, evaluators and checkpointer."""

    def __init__(self, cfg: CfgNode):
        """Detectron2's own construction; while it runs, its DDP wrapper is :func:`create_ddp_model`
        (CPU processes too, DDP keywords from the config) and its checkpointer comes from
        :meth:`build_checkpointer`. AMP is used where CUDA is."""
        if cfg.SOLVER.AMP.ENABLED and not torch.cuda.is_available():
            logger.warning("SOLVER.AMP.ENABLED but CUDA is not available: training in float32")
            frozen, cfg = cfg.is_frozen(), cfg.clone()
            cfg.defrost()
            cfg.SOLVER.AMP.ENABLED = False
            if frozen:
                cfg.freeze()
        ddp_kwargs = dict(find_unused_parameters=cfg.MODEL.FIND_UNUSED_PARAMETERS, **_no_forward_buffer_sync())
        ddp = functools.partial(_ddp_for_detectron2, ddp_kwargs=ddp_kwargs)
        with _replaced(
            detectron2_defaults,
            create_ddp_model=ddp,
            DetectionCheckpointer=functools.partial(self.build_checkpointer, cfg),
        ):
            super().__init__(cfg)

    def build_checkpointer(self, cfg: CfgNode, model: torch.nn.Module, save_dir: str, **kwargs) -> AtomicCheckpointer:
        """The trainer's checkpointer (``kwargs``: Detectron2's, e.g. ``trainer``): atomic saves, the model
        description in every file (``model_file.py``), the random states and the data stream's seed
        (exact resume, ``resume.py``)."""
        from .model_file import model_info
        from .resume import RNGStates

        kwargs.setdefault("rng", RNGStates())
        stream = getattr(self._trainer.data_loader, "dataset", None)
        if isinstance(stream, ResumableBatchStream):
            kwargs.setdefault("data_stream", stream)
        return AtomicCheckpointer(model, save_dir, model_info=model_info(cfg), **kwargs)

    def resume_or_load(self, resume: bool = True):
        """Detectron2's, then (on resume) the data stream starts at ``start_iter`` and rows of
        ``metrics.json`` past the checkpoint are dropped."""
        from .resume import trim_metrics

        super().resume_or_load(resume=resume)
        stream = getattr(self.data_loader, "dataset", None)
        if isinstance(stream, ResumableBatchStream):
            stream.start_batch = self.start_iter
        if resume and comm.is_main_process():
            dropped = trim_metrics(self.cfg.OUTPUT_DIR, self.start_iter)
            if dropped:
                logger.info("Dropped %d rows of metrics.json written after the checkpoint", dropped)

    def build_hooks(self):
        """Detectron2's hooks, evaluation from ``TEST.EVAL_START`` on, then the best-checkpoint keeper;
        periodic checkpoints with SOLVER.CHECKPOINT_MAX_KEEP; a progress bar on a terminal."""
        from detectron2.engine import hooks

        from .checkpoint_retention import PeriodicCheckpointHook
        from .evaluation import PeriodicEvalHook, build_best_checkpoint_hook
        from .progress import ProgressBarHook, use_progress_bar

        ret = super().build_hooks()
        at = next(i for i, h in enumerate(ret) if isinstance(h, hooks.EvalHook))
        ret[at] = PeriodicEvalHook(self.cfg.TEST.EVAL_PERIOD, ret[at]._func, eval_start=self.cfg.TEST.EVAL_START)
        ret = [
            PeriodicCheckpointHook(
                self.checkpointer, self.cfg.SOLVER.CHECKPOINT_PERIOD, self.cfg.SOLVER.CHECKPOINT_MAX_KEEP
            )
            if isinstance(h, hooks.PeriodicCheckpointer)
            else h
            for h in ret
        ]
        if use_progress_bar():
            ret.append(ProgressBarHook())
        best = build_best_checkpoint_hook(self.cfg, self.checkpointer) if comm.is_main_process() else None
        if best is not None:
            ret.insert(at + 1, best)
        return ret

    def build_writers(self):
        """Detectron2's writers (console, metrics.json, TensorBoard), W&B first when WANDB.ENABLED."""
        writers = super().build_writers()
        if self.cfg.WANDB.ENABLED:
            from .wandb_writer import WandbWriter

            writers.insert(0, WandbWriter(self.cfg))  # before TensorBoard's writer, which clears the images
        return writers

    @classmethod
    def test(cls, cfg: CfgNode, model, evaluators=None):
        """Evaluation through the test-time augmentation wrapper when TEST.AUG / TEST.SLIDE ask for it."""
        import random

        import numpy as np

        from .evaluation import build_test_model

        # Evaluation leaves the training's random streams as it found them (exact resume).
        np_state, py_state = np.random.get_state(), random.getstate()
        devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
        with torch.random.fork_rng(devices=devices):
            try:
                return super().test(cfg, build_test_model(cfg, model), evaluators)
            finally:
                np.random.set_state(np_state)
                random.setstate(py_state)

    @classmethod
    def build_train_loader(cls, cfg: CfgNode):
        from .data import SemanticMaskFormerMapper

        if cfg.INPUT.DATASET_MAPPER_NAME != "mask_former_semantic":
            raise ValueError(
                f"INPUT.DATASET_MAPPER_NAME must be 'mask_former_semantic', got {cfg.INPUT.DATASET_MAPPER_NAME!r}"
            )
        from .data.file_checks import ExplainReadErrors

        mapper = ExplainReadErrors(SemanticMaskFormerMapper(cfg, True))
        if cfg.DATALOADER.EXACT_RESUME:
            if cfg.DATALOADER.SAMPLER_TRAIN != "TrainingSampler":
                raise ValueError(
                    f"DATALOADER.EXACT_RESUME needs DATALOADER.SAMPLER_TRAIN 'TrainingSampler', got "
                    f"{cfg.DATALOADER.SAMPLER_TRAIN!r}; set DATALOADER.EXACT_RESUME False to use it"
                )
            return build_resumable_train_loader(cfg, mapper)
        return build_detection_train_loader(cfg, mapper=mapper)

    @classmethod
    def build_test_loader(cls, cfg: CfgNode, dataset_name: str):
        """Detectron2's test loader; the resize follows ``TEST.AUG.SCALE_REFERENCE``; an unreadable
        image is an error naming it."""
        from detectron2.data import DatasetMapper, build_detection_test_loader

        from .data.file_checks import ExplainReadErrors
        from .evaluation.test_time_augmentation import test_mapper_augmentations

        mapper = DatasetMapper(
            is_train=False, augmentations=test_mapper_augmentations(cfg), image_format=cfg.INPUT.FORMAT
        )
        return build_detection_test_loader(cfg, dataset_name, mapper=ExplainReadErrors(mapper))

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
        from .data.num_classes import check_eval_dataset

        check_eval_dataset(cfg, dataset_name)
        evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", "sem_seg")
        if evaluator_type != "sem_seg":
            raise ValueError(f"dataset {dataset_name!r} has evaluator_type {evaluator_type!r}; expected 'sem_seg'")
        from detectron2.data import DatasetCatalog

        from .data.file_checks import checked_label_loader

        # The label checks of training, plus the label's size against its image.
        records = {r["sem_seg_file_name"]: r for r in DatasetCatalog.get(dataset_name) if "sem_seg_file_name" in r}
        loader = checked_label_loader(records, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE)
        v = cfg.TEST.VISUALIZE
        return DatasetEvaluators(
            [
                PerClassSemSegEvaluator(
                    dataset_name,
                    distributed=True,
                    output_dir=output_folder,
                    sem_seg_loading_fn=loader,
                    num_panels=v.NUM_PANELS,
                    tensorboard_panels=v.NUM_TENSORBOARD,
                    confusion_matrix=v.CONFUSION_MATRIX,
                )
            ]
        )


def check_launch_args(args) -> None:
    """Catches launcher arguments that would otherwise make every process wait forever."""
    if args.num_machines < 1 or not 0 <= args.machine_rank < args.num_machines:
        raise ValueError(f"--machine-rank {args.machine_rank} must be in [0, --num-machines {args.num_machines})")
    if args.num_machines > 1 and (
        not args.dist_url or args.dist_url == "auto" or "127.0.0.1" in args.dist_url or "localhost" in args.dist_url
    ):
        raise ValueError(
            f"--num-machines {args.num_machines} needs --dist-url tcp://<address of machine 0>:<port>, the same "
            f"on every machine; got {args.dist_url!r}"
        )
    _check_local_port(args)


def _check_local_port(args) -> None:
    """A single-machine multi-process job whose rendezvous port is taken (e.g. a second job with
    Detectron2's per-user default port) would fail in every process with a raw error."""
    import socket
    from urllib.parse import urlparse

    if args.num_machines != 1 or args.num_gpus * args.num_machines <= 1 or not args.dist_url:
        return
    if args.dist_url == "auto" or not args.dist_url.startswith("tcp://"):
        return
    url = urlparse(args.dist_url)
    if url.port is None:
        raise ValueError(f"--dist-url {args.dist_url}: no port; give tcp://127.0.0.1:PORT or --dist-url auto")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((url.hostname or "127.0.0.1", url.port))
        except OSError as e:
            raise ValueError(
                f"--dist-url {args.dist_url}: port {url.port} cannot be used ({e.strerror or e}); another "
                "multi-process job on this machine probably holds it. Use --dist-url auto (picks a free port)."
            ) from None


def _opt_value(opts, key: str) -> str:
    opts = list(opts or [])
    for i in range(0, len(opts) - 1, 2):
        if opts[i] == key:
            return opts[i + 1]
    return ""


def _log_setup(cfg: CfgNode, args) -> None:
    """Detectron2's ``default_setup`` minus writing ``config.yaml`` (``save_run_config`` does that
    once the run has started): output folder, loggers, seeds. The environment table is this
    project's (Detectron2's calls the unused ``detectron2._C`` broken)."""
    from .collect_env import collect_env_info

    if comm.is_main_process() and cfg.OUTPUT_DIR:
        os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
    rank = comm.get_rank()
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=rank, name="fvcore")
    d2_logger = setup_logger(cfg.OUTPUT_DIR, distributed_rank=rank)
    d2_logger.info("Rank of current process: %d. World size: %d", rank, comm.get_world_size())
    d2_logger.info("Environment info:\n%s", collect_env_info())
    d2_logger.info("Command line arguments: %s", args)
    d2_logger.info("Running with full config:\n%s", cfg.dump())
    seed_all_rng(None if cfg.SEED < 0 else cfg.SEED + rank)
    if not getattr(args, "eval_only", False):
        torch.backends.cudnn.benchmark = cfg.CUDNN_BENCHMARK


def save_run_config(cfg: CfgNode) -> str:
    """Writes ``OUTPUT_DIR/config.yaml`` (main process, atomically); returns its path."""
    from .atomic_io import write_text_atomic

    path = os.path.join(cfg.OUTPUT_DIR, "config.yaml")
    if comm.is_main_process():
        write_text_atomic(path, cfg.dump())
        logger.info("Full config saved to %s", path)
    return path


def setup(args) -> CfgNode:
    """Config of a ``train_net.py`` run, checked before anything is written.

    ``--config-file`` may be left out with ``--eval-only MODEL.WEIGHTS <model file>``: the config
    stored in the model file is used. ``--dataset-file`` / ``--import`` register datasets first.
    """
    from .model_file import config_from_model_file
    from .resume import check_resume_config

    dataset_files = list(getattr(args, "dataset_file", None) or [])
    imports = list(getattr(args, "imports", None) or [])
    if args.config_file:
        cfg = setup_cfg(args.config_file, args.opts, dataset_files, imports)
    else:
        weights = _opt_value(args.opts, "MODEL.WEIGHTS")
        if not (args.eval_only and weights):
            raise ValueError(
                "--config-file is required (e.g. configs/toy/mtaclip_toy.yaml), except with --eval-only MODEL.WEIGHTS "
                "<model file written by train_net.py>, which carries its config"
            )
        cfg = config_from_model_file(weights, args.opts, dataset_files, imports, for_prediction=False)
    if not args.eval_only:
        check_solver_config(cfg)
        if args.resume:
            check_resume_config(cfg)
    cfg.freeze()
    if not args.resume:
        check_weights_file(cfg)
    if (
        args.eval_only
        and not cfg.MODEL.WEIGHTS
        and not (args.resume and os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "last_checkpoint")))
    ):
        raise ValueError(
            "--eval-only needs weights to evaluate: set MODEL.WEIGHTS to a checkpoint (e.g. "
            f"{os.path.join(cfg.OUTPUT_DIR, 'model_final.pth')}), or add --resume to use the last checkpoint in "
            f"OUTPUT_DIR {cfg.OUTPUT_DIR}"
        )
    if cfg.WANDB.ENABLED:
        from .wandb_writer import import_wandb

        import_wandb()  # a missing package is an error now, not after the model is built
    _log_setup(cfg, args)
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="mta_clip")
    return cfg
