#!/usr/bin/env python
"""Train / evaluate MTA-CLIP and the Mask2Former baseline with Detectron2.

    python train_net.py --config-file configs/ade20k/mtaclip_R50_bs16_160k.yaml --num-gpus 8
    python train_net.py --config-file configs/toy/mtaclip_toy.yaml --dataset-file my_data.yaml \\
        DATASETS.TRAIN "('my_data_train',)" DATASETS.TEST "('my_data_val',)"
    python train_net.py --eval-only MODEL.WEIGHTS output/model_final.pth   # config from the model file

Multi-machine runs use Detectron2's launcher (--num-machines, --machine-rank, --dist-url).
On a machine without CUDA, --num-gpus N runs N CPU processes (gloo).
"""

import sys

import mta_clip  # noqa: F401  (first: registers models and datasets, quiets third-party import warnings)

# isort: split
from detectron2.engine import default_argument_parser, launch
from detectron2.evaluation import verify_results
from detectron2.utils import comm

from mta_clip.checkpointer import AtomicCheckpointer
from mta_clip.data.dataset_file import add_dataset_arguments
from mta_clip.engine import Trainer, check_launch_args, save_run_config, setup


def get_parser():
    parser = default_argument_parser()
    add_dataset_arguments(parser)
    return parser


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        AtomicCheckpointer(model, save_dir=cfg.OUTPUT_DIR, strict=cfg.TEST.STRICT_WEIGHTS).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        results = Trainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, results)
        return results
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    save_run_config(cfg)  # only now: a run that fails to start leaves the saved config of the run alone
    return trainer.train()


def cli(argv=None) -> int:
    args = get_parser().parse_args(argv)
    try:
        check_launch_args(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
    return 0


if __name__ == "__main__":
    sys.exit(cli())
