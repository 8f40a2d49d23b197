#!/usr/bin/env python
"""Train / evaluate MTA-CLIP and the Mask2Former baseline with Detectron2.

    python train_net.py --config-file configs/ade20k/mtaclip_R50_bs16_160k.yaml --num-gpus 8
    python train_net.py --config-file ... --eval-only MODEL.WEIGHTS output/model_final.pth

Multi-machine runs use Detectron2's launcher (--num-machines, --machine-rank, --dist-url).
On a machine without CUDA, --num-gpus N runs N CPU processes (gloo).
"""
from detectron2.engine import default_argument_parser, launch
from detectron2.evaluation import verify_results
from detectron2.utils import comm

import mta_clip  # noqa: F401  (registers models and datasets)
from mta_clip.checkpointer import AtomicCheckpointer
from mta_clip.engine import Trainer, check_launch_args, setup


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        AtomicCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        results = Trainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, results)
        return results
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    check_launch_args(args)  # the arguments are logged by default_setup, once the loggers exist
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))
