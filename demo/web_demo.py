#!/usr/bin/env python
"""Local web demo (Gradio): upload an image or pick a sample, choose a model file, see the overlay.

    python demo/web_demo.py --weights output/a/model_final.pth output/b/model_final.pth [--samples photos/]
    python demo/web_demo.py --config-file configs/ade20k/mtaclip_R50_bs16_160k.yaml --weights W.pth [--port 7860]

Model files written by ``train_net.py`` carry their config and class names (no ``--config-file``);
other weight files (e.g. ``model_best.pth``) need the ``--config-file`` they were trained with.

Opens http://127.0.0.1:7860 (this machine only; ``--host 0.0.0.0`` to serve the local network).
The page shows the overlay with class names and legend (lossless PNG), the share of every class
present, and a download of the label PNG (palette PNG: pixel values = class indices). Nothing is
fetched from the internet; models are loaded on first use and kept. ``--weights ""`` runs a
randomly initialized model of ``--config-file`` (to try the page without a trained model).
"""

import argparse
import logging
import os
import sys
import tempfile
import threading
from typing import Dict, List, Optional, Sequence, Tuple

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no network calls from Gradio

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import mta_clip  # noqa: E402,F401  (first: registers models, quiets third-party import warnings)

# isort: split
from mta_clip.predictor import Predictor, to_bgr_uint8  # noqa: E402
from mta_clip.visualization import legend_entries, save_label_png, short_names  # noqa: E402

logger = logging.getLogger("mta_clip.web_demo")

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
RANDOM_WEIGHTS = "random weights (no file)"


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--config-file",
        default=None,
        metavar="FILE",
        help="model config (not needed for model files written by train_net.py)",
    )
    parser.add_argument(
        "--weights",
        nargs="+",
        default=None,
        metavar="PTH",
        help='model files to choose from in the page ("" = random weights of --config-file)',
    )
    parser.add_argument(
        "--samples",
        nargs="*",
        default=None,
        help="sample images or folders (default: up to 6 toy validation images if present)",
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ...")
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--opts", default=[], nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    return parser


def find_samples(items: Optional[Sequence[str]], limit: int = 12) -> List[str]:
    """Image files of ``items`` (files or folders, sorted); None = the toy validation images."""
    if items is None:
        root = os.path.join(os.getenv("DETECTRON2_DATASETS", "datasets"), "toy_sem_seg", "images", "val")
        items = [root] if os.path.isdir(root) else []
        limit = 6
    found = []
    for item in items:
        if os.path.isdir(item):
            found.extend(os.path.join(item, f) for f in sorted(os.listdir(item)) if f.lower().endswith(IMAGE_EXTS))
        elif os.path.isfile(item):
            found.append(item)
        else:
            logger.warning("Sample %s does not exist", item)
    return found[:limit]


class Segmenter:
    """Predictors per model file, built on first use; the function behind the page's button."""

    def __init__(
        self,
        config_file: Optional[str],
        weights: Sequence[str],
        device: str = "cpu",
        opts: Sequence[str] = (),
        output_dir: Optional[str] = None,
    ):
        self.config_file = config_file
        self.device = device
        self.opts = list(opts)
        self.choices: Dict[str, str] = {}
        for w in weights:
            label = RANDOM_WEIGHTS if not w else w
            if w and not os.path.isfile(w):
                raise FileNotFoundError(f"--weights {w!r}: no such file")
            if not w and not config_file:
                raise FileNotFoundError('--weights "" (random weights) needs --config-file')
            self.choices[label] = w
        self._predictors: Dict[str, Predictor] = {}
        self._lock = threading.Lock()
        self.output_dir = output_dir or tempfile.mkdtemp(prefix="mta_clip_web_demo_")
        self._count = 0

    def predictor(self, choice: str) -> Predictor:
        if choice not in self.choices:
            raise ValueError(f"unknown model {choice!r}; choose one of {list(self.choices)}")
        with self._lock:
            if choice not in self._predictors:
                logger.info("Loading %s", choice)
                if self.config_file:
                    predictor = Predictor(
                        self.config_file, weights=self.choices[choice], device=self.device, opts=self.opts
                    )
                else:  # a model file written by train_net.py: config and class names inside
                    predictor = Predictor(self.choices[choice], device=self.device, opts=self.opts)
                self._predictors[choice] = predictor
            return self._predictors[choice]

    def __call__(
        self, image_rgb: Optional[np.ndarray], choice: str, alpha: float = 0.55
    ) -> Tuple[np.ndarray, List[List], str]:
        """RGB image -> (overlay RGB, [[class, share %]] by class index, path of the label PNG)."""
        if image_rgb is None:
            raise ValueError("upload an image or pick a sample first")
        predictor = self.predictor(choice)
        rgb = np.asarray(image_rgb)
        if rgb.ndim == 3 and rgb.shape[2] >= 3:
            rgb = rgb[:, :, 2::-1]  # RGB(A) -> BGR
        image_bgr = to_bgr_uint8(np.ascontiguousarray(rgb))
        result = predictor(image_bgr, return_probs=False)
        overlay = predictor.visualize(image_bgr, result, alpha=alpha)[:, :, ::-1]
        names = short_names(predictor.metadata.stuff_classes)
        table = [[names[c], round(share, 2)] for c, share in legend_entries(result["labels"], len(names))]
        with self._lock:
            self._count += 1
            path = os.path.join(self.output_dir, f"labels_{self._count:05d}.png")
        save_label_png(path, result["labels"], predictor.metadata.stuff_colors)
        return np.ascontiguousarray(overlay), table, path


def build_app(segmenter: Segmenter, samples: Sequence[str]):
    """The Gradio Blocks page."""
    import gradio as gr

    with gr.Blocks(title="MTA-CLIP segmentation", analytics_enabled=False) as app:
        gr.Markdown(
            "## MTA-CLIP semantic segmentation\nUpload an image (or pick a sample), choose a model "
            "file, press **Segment**."
        )
        with gr.Row():
            with gr.Column():
                image = gr.Image(label="Image", type="numpy", sources=["upload", "clipboard"], elem_id="input_image")
                model = gr.Dropdown(
                    choices=list(segmenter.choices),
                    value=next(iter(segmenter.choices)),
                    label="Model file",
                    elem_id="model_choice",
                )
                alpha = gr.Slider(0.0, 1.0, value=0.55, step=0.05, label="Overlay opacity")
                button = gr.Button("Segment", variant="primary", elem_id="segment_button")
                if samples:
                    gr.Examples(examples=[[s] for s in samples], inputs=[image], label="Samples")
            with gr.Column():
                overlay = gr.Image(
                    label="Overlay", type="numpy", format="png", interactive=False, elem_id="overlay_image"
                )
                shares = gr.Dataframe(
                    headers=["class", "share %"],
                    label="Classes present (by class index)",
                    interactive=False,
                    elem_id="class_shares",
                )
                label_file = gr.File(label="Label PNG (pixel values = class indices)", elem_id="label_png")
        button.click(segmenter, inputs=[image, model, alpha], outputs=[overlay, shares, label_file])
    return app


def launch(app, host: str, port: int, block: bool = True):
    import gradio as gr

    theme = gr.themes.Default(
        font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"]
    )  # no web fonts: works offline
    return app.launch(
        server_name=host,
        server_port=port,
        share=False,
        prevent_thread_lock=not block,
        quiet=True,
        ssr_mode=False,
        theme=theme,
        footer_links=[],
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_parser().parse_args(argv)
    if not args.weights and not args.config_file:
        print("error: give --weights MODEL_FILE ... (and/or --config-file)", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s] %(message)s")
    try:
        segmenter = Segmenter(args.config_file, args.weights or [""], args.device, args.opts)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    app = build_app(segmenter, find_samples(args.samples))
    print(f"Serving on http://{args.host}:{args.port} (Ctrl+C stops)")
    launch(app, args.host, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
