#!/usr/bin/env python
"""Writes a slim inference file from a training checkpoint: the weights and the model description
(class names, palette, config), without optimizer / scheduler / trainer state.

    python tools/slim_checkpoint.py output/run/model_final.pth model.pth

The result works alone: ``mta_clip.Predictor("model.pth")``, ``demo/demo.py --weights model.pth``.
Exit status 0 on success, 2 on a missing or unsuitable input.
"""

import argparse
import os
import sys
from typing import Optional, Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mta_clip.model_file import write_inference_file  # noqa: E402


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="checkpoint written by train_net.py (model_final.pth, model_best.pth, ...)")
    parser.add_argument("output", help="inference file to write")
    args = parser.parse_args(argv)
    if os.path.abspath(args.checkpoint) == os.path.abspath(args.output):
        print("error: the output must be another file than the checkpoint", file=sys.stderr)
        return 2
    try:
        stats = write_inference_file(args.checkpoint, args.output)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(
        f"wrote {args.output}: {stats['tensors']} tensors, {stats['dst_bytes'] / 2**20:.1f} MiB "
        f"({stats['src_bytes'] / 2**20:.1f} MiB checkpoint)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
