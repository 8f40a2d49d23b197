"""Export of semantic models (baseline and MTA-CLIP) to ONNX and TorchScript, and the check.

The exported graph (:class:`SegmentationGraph`) holds everything between an image and its labels:

    image (B, H, W, 3) uint8 or float32, BGR (``cv2.imread`` order), values 0..255
      -> :class:`ShortestEdgeResize`: channel order of INPUT.FORMAT; with ``test_size``, the test
         mapper's resize (PIL's bilinear, bit for bit: ``mta_clip.resize``)
      -> :class:`SegmentationNetwork`: normalization (MODEL.PIXEL_MEAN / PIXEL_STD), zero padding
         to the size divisibility, backbone, pixel decoder, transformer decoder, masks at the
         (resized) image size
      -> :class:`SemanticInference`: sum_q softmax(class)[c] * sigmoid(mask), no-object dropped,
         resized back to (H, W) as ``sem_seg_postprocess`` does
    outputs: ``probs`` (B, C, H, W) float32, the scores divided by their per-pixel sum, and
             ``labels`` (B, H, W) int64 (argmax of the scores): what ``Predictor`` returns.

Without ``test_size`` the graph runs at the size it is given (resize images to the test size
first). MTA-CLIP's text features depend on no image: they are computed once at export and stored
as a constant (the text encoder is not in the file). The deformable attention runs its PyTorch
path inside the graph (see ``mta_clip.layers.ms_deform_attn``: the compiled op is never traced).

    from mta_clip.export import export_model
    report = export_model(model, "model.onnx", "onnx", cfg.INPUT.FORMAT, metadata=meta,
                          test_size=(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST))

ONNX: ``torch.onnx.export(dynamo=True)`` (torch.export + onnxscript) with B, H and W
dynamic. TorchScript: ``torch.jit.trace``, which records sizes as constants: the file serves
the traced size only, and a scripted wrapper refuses other sizes with a clear error.
"""

import json
import logging
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .resize import pil_bilinear_resize, shortest_edge_shape

logger = logging.getLogger(__name__)

__all__ = [
    "SegmentationGraph",
    "SegmentationNetwork",
    "SemanticInference",
    "ShortestEdgeResize",
    "ExportedModel",
    "ExportCheckError",
    "FORMATS",
    "check_export",
    "compare_outputs",
    "detect_format",
    "export_metadata",
    "export_model",
    "export_onnx",
    "export_torchscript",
    "min_image_size",
    "network_min_side",
    "read_metadata",
    "sample_image",
]

FORMATS = ("onnx", "torchscript")
METADATA_KEY = "mta_clip"  # ONNX metadata_props key / TorchScript extra file name of the JSON metadata
INPUT_NAME = "image"
OUTPUT_NAMES = ("probs", "labels")
MAX_LABEL_MISMATCH = 1e-3  # fraction of pixels whose label may differ from PyTorch's in the check


class ExportCheckError(RuntimeError):
    """The exported model's predictions differ from PyTorch's by more than the check allows."""


class ShortestEdgeResize(nn.Module):
    """The image as the model sees it: (B, H, W, 3) BGR, values 0..255 -> (B, 3, h, w) float32 in
    INPUT.FORMAT's channel order. ``test_size`` (INPUT.MIN_SIZE_TEST, MAX_SIZE_TEST): resized like
    the test mapper (:func:`~mta_clip.resize.shortest_edge_shape`, PIL's bilinear resampling of the
    uint8 image, bit for bit: :func:`~mta_clip.resize.pil_bilinear_resize`), each side at least
    ``min_side``; None: the size is kept."""

    def __init__(self, input_format: str = "BGR", test_size: Optional[Sequence[int]] = None, min_side: int = 1):
        super().__init__()
        if input_format not in ("BGR", "RGB"):
            raise ValueError(f"INPUT.FORMAT must be 'BGR' or 'RGB', got {input_format!r}")
        if test_size is not None and (len(test_size) != 2 or int(test_size[0]) <= 0):
            raise ValueError(
                f"test_size must be (INPUT.MIN_SIZE_TEST > 0, INPUT.MAX_SIZE_TEST), got {tuple(test_size)}; "
                f"None runs the model at the size of the given image"
            )
        self.rgb = input_format == "RGB"
        self.test_size = None if test_size is None else (int(test_size[0]), int(test_size[1]))
        self.min_side = int(min_side)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = image.permute(0, 3, 1, 2).float()
        if self.rgb:
            x = x.flip(1)
        if self.test_size is None:
            return x
        height, width = x.shape[-2], x.shape[-1]
        if torch.jit.is_tracing():  # sizes are traced as tensors; a trace serves one size anyway
            height, width = int(height), int(width)
        h, w = shortest_edge_shape(height, width, *self.test_size)
        h, w = torch.sym_max(h, self.min_side), torch.sym_max(w, self.min_side)
        return pil_bilinear_resize(x, (h, w))


class SegmentationNetwork(nn.Module):
    """Normalization, zero padding to the size divisibility, backbone, pixel decoder, transformer
    decoder: (B, 3, h, w) image in the model's channel order, values 0..255 ->
    ``(classes (B, Q, C) softmax without no-object, masks (B, Q, h, w) logits at the image size)``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        for part in ("backbone", "sem_seg_head", "pixel_mean", "pixel_std", "size_divisibility"):
            if not hasattr(model, part):
                raise ValueError(
                    f"{type(model).__name__} is not a semantic meta-architecture of mta_clip "
                    f"(SemanticMask2Former / MTACLIP): it has no {part!r}"
                )
        model = model.eval()
        self.backbone = model.backbone
        self.sem_seg_head = model.sem_seg_head
        self.size_divisibility = int(model.size_divisibility)
        self.register_buffer("pixel_mean", model.pixel_mean.detach().clone().float().view(1, -1, 1, 1))
        self.register_buffer("pixel_std", model.pixel_std.detach().clone().float().view(1, -1, 1, 1))
        # the transformer decoder's extra inputs depend on no image (MTA-CLIP: the text features
        # (K, C', D)): computed once here, they become constants of the exported graph
        with torch.no_grad():
            extra = model.transformer_decoder_inputs() if hasattr(model, "transformer_decoder_inputs") else {}
        self._decoder_input_names = []
        for name, value in extra.items():
            if not isinstance(value, torch.Tensor):
                raise ValueError(
                    f"{type(model).__name__}.transformer_decoder_inputs()[{name!r}] is a {type(value).__name__}; "
                    f"only tensors can be stored in the exported graph"
                )
            self.register_buffer(name, value.detach().clone())
            self._decoder_input_names.append(name)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        x = (x - self.pixel_mean) / self.pixel_std
        h, w = x.shape[-2], x.shape[-1]
        d = self.size_divisibility
        if d > 1:  # written as d * ceil(size / d) - size so that torch.export sees a multiple of d
            x = F.pad(x, (0, d * ((w + d - 1) // d) - w, 0, d * ((h + d - 1) // d) - h))
        features = self.backbone(x)
        inputs = {name: getattr(self, name) for name in self._decoder_input_names}
        outputs = self.sem_seg_head(features, **inputs)
        masks = F.interpolate(outputs["pred_masks"], size=x.shape[-2:], mode="bilinear", align_corners=False)
        # crop the padding; index_select, not slicing: a slice's contiguity depends on whether
        # padding was added, which makes torch.export fix the image size
        masks = masks.index_select(2, torch.arange(h, device=x.device))
        masks = masks.index_select(3, torch.arange(w, device=x.device))
        return F.softmax(outputs["pred_logits"], dim=-1)[..., :-1], masks


class SemanticInference(nn.Module):
    """sum_q softmax(class)[c] * sigmoid(mask), at the size of ``image`` when ``resize`` (as
    ``sem_seg_postprocess``, bilinear: the masks before the sum when ``before_inference``
    (MASK_FORMER.TEST.SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE), else the scores after it), else at
    the masks' size. Returns ``(probs, labels)``: the scores divided by their per-pixel sum
    (B, C, H, W) and their argmax (B, H, W) int64."""

    def __init__(self, resize: bool = False, before_inference: bool = False):
        super().__init__()
        self.resize = bool(resize)
        self.before_inference = bool(before_inference)

    def forward(
        self, classes: torch.Tensor, masks: torch.Tensor, image: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        size = (image.shape[1], image.shape[2])
        if self.resize and self.before_inference:
            masks = F.interpolate(masks, size=size, mode="bilinear", align_corners=False)
        scores = torch.einsum("bqc,bqhw->bchw", classes, masks.sigmoid())
        if self.resize and not self.before_inference:
            scores = F.interpolate(scores, size=size, mode="bilinear", align_corners=False)
        probs = scores / scores.sum(dim=1, keepdim=True).clamp_min(torch.finfo(scores.dtype).tiny)
        return probs, scores.argmax(dim=1)


class SegmentationGraph(nn.Module):
    """What an exported file computes: :class:`ShortestEdgeResize` -> :class:`SegmentationNetwork` ->
    :class:`SemanticInference`.

    Takes the image as (B, H, W, 3) BGR, uint8 or float32 with values 0..255; returns
    ``(probs (B, C, H, W) float32, labels (B, H, W) int64)`` at the input size. With ``test_size``
    (INPUT.MIN_SIZE_TEST, MAX_SIZE_TEST) the graph resizes the image like the test mapper and the
    result back, so the file gives what ``Predictor`` gives for the original image; None: the model
    runs at the size of the given image (resize it to the test size yourself). ``dynamic``: for a
    dynamic-size export, whose network serves sides >= :func:`network_min_side` only: the test
    resize makes each side at least that.
    """

    def __init__(
        self,
        model: nn.Module,
        input_format: str = "BGR",
        test_size: Optional[Sequence[int]] = None,
        dynamic: bool = False,
    ):
        super().__init__()
        self.network = SegmentationNetwork(model)
        self.dynamic = bool(dynamic)
        min_side = network_min_side(self.network.size_divisibility) if dynamic else 1
        self.preprocess = ShortestEdgeResize(input_format, test_size, min_side)
        self.postprocess = SemanticInference(
            test_size is not None, getattr(model, "sem_seg_postprocess_before_inference", False)
        )

    @property
    def backbone(self) -> nn.Module:
        return self.network.backbone

    @property
    def size_divisibility(self) -> int:
        return self.network.size_divisibility

    @property
    def test_size(self) -> Optional[Tuple[int, int]]:
        return self.preprocess.test_size

    def forward(self, image: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        classes, masks = self.network(self.preprocess(image))
        return self.postprocess(classes, masks, image)


# --------------------------------------------------------------------------- exporters
def _check_size(size: Sequence[int], min_size: int) -> Tuple[int, int]:
    if len(size) != 2 or any(int(v) != v for v in size):
        raise ValueError(f"size must be (H, W) integers, got {tuple(size)}")
    h, w = int(size[0]), int(size[1])
    if h < min_size or w < min_size:
        raise ValueError(
            f"image size ({h}, {w}) is below the smallest size the exported graph serves: both sides "
            f"must be >= {min_size} (dynamic sizes: twice the largest backbone stride)"
        )
    return h, w


def network_min_side(size_divisibility: int) -> int:
    """Smallest side the network of a dynamic-size file serves: twice the largest stride (64), so
    that the stride-32 level has at least 2 rows and columns (a level of size 1 broadcasts
    differently, which one graph cannot cover) and torch.export can prove it through the CLIP
    ResNet's stride-2 stages."""
    return 2 * max(32, int(size_divisibility))


def min_image_size(graph: SegmentationGraph, dynamic: bool = True) -> int:
    """Smallest side of the images a file serves. Fixed size: 1 (the padding to the size
    divisibility makes any size work). Dynamic: :func:`network_min_side` without the test resize
    in the graph; with it 1 (the graph resizes the image, each side to at least that)."""
    if not dynamic or graph.test_size is not None:
        return 1
    return network_min_side(graph.size_divisibility)


def sample_image(size: Sequence[int], batch: int = 1, dtype: str = "uint8", seed: int = 0) -> torch.Tensor:
    """A random (B, H, W, 3) image with values 0..255 in ``dtype`` ("uint8" / "float32")."""
    if dtype not in ("uint8", "float32"):
        raise ValueError(f"input dtype must be 'uint8' or 'float32', got {dtype!r}")
    g = torch.Generator().manual_seed(seed)
    img = torch.randint(0, 256, (batch, int(size[0]), int(size[1]), 3), generator=g, dtype=torch.uint8)
    return img if dtype == "uint8" else img.float()


def _onnx_program(module: nn.Module, args: Tuple, input_names, output_names, dynamic_shapes, opset: int):
    """ONNX ModelProto of ``module`` via ``torch.onnx.export(dynamo=True)``; raises when the
    exporter fixed a dimension that ``dynamic_shapes`` declared dynamic."""
    with torch.no_grad():
        program = torch.onnx.export(
            module,
            args,
            None,
            dynamo=True,
            input_names=list(input_names),
            output_names=list(output_names),
            dynamic_shapes=dynamic_shapes,
            opset_version=opset,
            external_data=False,
            verbose=False,
        )
    proto = program.model_proto
    for value, spec in zip(proto.graph.input, (dynamic_shapes or {}).values()):
        dims = value.type.tensor_type.shape.dim
        fixed = [axis for axis in spec if not dims[axis].dim_param]
        if fixed:
            raise RuntimeError(
                f"the ONNX exporter fixed axes {fixed} of {type(module).__name__}'s input {value.name!r} although "
                f"they were asked to be dynamic (shape {[d.dim_param or d.dim_value for d in dims]}): some code of "
                f"the model turns sizes into constants under torch.export; export a fixed size instead (--size H W)"
            )
    return proto


def _chain(parts: Sequence[Tuple[str, object]], links: Sequence[Tuple[str, str]], inputs, outputs):
    """One ONNX model from several: each part's names get the prefix ``name/``; ``links`` are
    (source, target) value names joined by Identity nodes ("image" and the final outputs are the
    chained model's own input / outputs)."""
    import onnx
    from onnx import compose, helper

    def link(src: str, dst: str):
        return helper.make_node("Identity", [src], [dst], name=f"link:{src}->{dst}")

    prefixed = [compose.add_prefix(proto, f"{name}/") for name, proto in parts]
    nodes, initializers, value_info, functions = [], [], [], []
    for (name, _), proto in zip(parts, prefixed):  # in order: a part's links, then its nodes
        nodes.extend(link(src, dst) for src, dst in links if dst.startswith(f"{name}/"))
        nodes.extend(proto.graph.node)
        initializers.extend(proto.graph.initializer)
        value_info.extend(proto.graph.value_info)
        functions.extend(proto.functions)
    nodes.extend(link(src, dst) for src, dst in links if "/" not in dst)
    graph = helper.make_graph(nodes, "mta_clip", list(inputs), list(outputs), initializers, value_info=value_info)
    opsets = {}
    for proto in prefixed:
        for entry in proto.opset_import:
            opsets[entry.domain] = max(opsets.get(entry.domain, 0), entry.version)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()], functions=functions
    )
    model.ir_version = max(proto.ir_version for _, proto in parts)
    onnx.checker.check_model(model)
    return model


def export_onnx(
    graph: SegmentationGraph,
    path: str,
    sample: torch.Tensor,
    dynamic: bool = True,
    metadata: Optional[Dict] = None,
    opset: int = 18,
) -> None:
    """Writes ``graph`` as an ONNX file (atomically) with ``metadata`` as JSON in ``metadata_props``.

    ``dynamic``: B, H and W are dynamic axes (H, W >= :func:`min_image_size`; export with a batch
    of 2 or more, torch.export fixes an axis of size 1); else the file serves ``sample``'s shape only.
    Exporter: ``torch.onnx.export(dynamo=True)``; the TorchScript-based exporter (``dynamo=False``)
    records the level sizes of the deformable attention as constants and emits ``Where`` on
    booleans, which ONNX Runtime's CPU provider does not implement.

    A dynamic graph with the test resize is exported in three parts joined in one file
    (:func:`_chain`): torch.export's symbolic shapes cannot follow the resized size (an expression
    of ``Min`` / ``Max`` / floor divisions) through the backbone, so the network gets sizes of its own.
    """
    import onnx

    from .atomic_io import atomic_output

    graph = graph.eval()
    lo = min_image_size(graph, dynamic)
    _check_size(sample.shape[1:3], lo)
    if dynamic and graph.test_size is not None and not graph.dynamic:
        raise ValueError(
            "a dynamic-size export with the test resize needs SegmentationGraph(..., dynamic=True) (its resize "
            f"keeps each side >= {network_min_side(graph.size_divisibility)}, the smallest the network serves)"
        )
    if not dynamic:
        proto = _onnx_program(graph, (sample,), [INPUT_NAME], OUTPUT_NAMES, None, opset)
    else:
        if sample.shape[0] < 2:
            raise ValueError(f"a dynamic-size export needs a sample batch of 2 or more, got {tuple(sample.shape)}")
        batch = torch.export.Dim("batch", min=1, max=1024)
        height = torch.export.Dim("height", min=lo, max=16384)
        width = torch.export.Dim("width", min=lo, max=16384)
        image_dims = {0: batch, 1: height, 2: width}
        if graph.test_size is None:
            proto = _onnx_program(graph, (sample,), [INPUT_NAME], OUTPUT_NAMES, {"image": image_dims}, opset)
        else:
            proto = _export_chained(graph, sample, image_dims, opset)
    _set_onnx_metadata(proto, metadata or {})
    with atomic_output(path) as tmp:
        onnx.save_model(proto, tmp)
    logger.info("wrote %s (ONNX, opset %d, %s)", path, opset, "dynamic B, H, W" if dynamic else "fixed size")


def _export_chained(graph: SegmentationGraph, sample: torch.Tensor, image_dims: Dict, opset: int):
    """Test resize, network and semantic inference exported apart (each with its own symbolic sizes)
    and chained: image -> preprocess -> network -> postprocess (which also reads the image's size)."""
    from onnx import helper

    Dim = torch.export.Dim
    lo = network_min_side(graph.size_divisibility)
    with torch.no_grad():
        resized = graph.preprocess(sample)
        classes, masks = graph.network(resized)
    batch = image_dims[0]
    net_dims = {0: batch, 2: Dim("net_height", min=lo, max=16384), 3: Dim("net_width", min=lo, max=16384)}
    mask_dims = {0: batch, 2: Dim("mask_height", min=lo, max=16384), 3: Dim("mask_width", min=lo, max=16384)}
    parts = [
        ("pre", _onnx_program(graph.preprocess, (sample,), ["image"], ["x"], {"image": image_dims}, opset)),
        ("net", _onnx_program(graph.network, (resized,), ["x"], ["classes", "masks"], {"x": net_dims}, opset)),
        (
            "post",
            _onnx_program(
                graph.postprocess,
                (classes, masks, sample),
                ["classes", "masks", "image"],
                list(OUTPUT_NAMES),
                {"classes": {0: batch}, "masks": mask_dims, "image": image_dims},
                opset,
            ),
        ),
    ]
    links = [
        (INPUT_NAME, "pre/image"),
        ("pre/x", "net/x"),
        ("net/classes", "post/classes"),
        ("net/masks", "post/masks"),
        (INPUT_NAME, "post/image"),
    ] + [(f"post/{name}", name) for name in OUTPUT_NAMES]
    first, last = parts[0][1].graph, parts[-1][1].graph
    inputs = [helper.make_value_info(INPUT_NAME, first.input[0].type)]
    outputs = [helper.make_value_info(out.name, out.type) for out in last.output]
    return _chain(parts, links, inputs, outputs)


def _set_onnx_metadata(proto, metadata: Dict) -> None:
    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key = METADATA_KEY
    entry.value = json.dumps(metadata, sort_keys=True)


class _FixedSizeModule(nn.Module):
    """Scripted guard around a traced graph: refuses images of another size than the traced one."""

    def __init__(self, traced: nn.Module, height: int, width: int):
        super().__init__()
        self.traced = traced
        self.height = height
        self.width = width

    def forward(self, image: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        if image.dim() != 4 or image.shape[3] != 3:
            raise ValueError("expected a (B, H, W, 3) BGR image")
        if image.shape[1] != self.height or image.shape[2] != self.width:
            raise ValueError(
                "this TorchScript file was traced at a fixed size (H, W) = ("
                + str(self.height)
                + ", "
                + str(self.width)
                + "); got ("
                + str(image.shape[1])
                + ", "
                + str(image.shape[2])
                + "): resize the image or export again with --size H W"
            )
        return self.traced(image)


def export_torchscript(
    graph: SegmentationGraph, path: str, sample: torch.Tensor, metadata: Optional[Dict] = None
) -> None:
    """Writes ``graph`` traced at ``sample``'s size as TorchScript (atomically), with ``metadata``
    as JSON in the extra file ``mta_clip``. The file refuses other image sizes with a clear error."""
    from .atomic_io import atomic_output

    graph = graph.eval()
    _check_size(sample.shape[1:3], min_image_size(graph, dynamic=False))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(graph, (sample,), check_trace=False)
        scripted = torch.jit.script(_FixedSizeModule(traced, int(sample.shape[1]), int(sample.shape[2])))
    extra = {METADATA_KEY: json.dumps(metadata or {}, sort_keys=True)}
    with atomic_output(path) as tmp:
        torch.jit.save(scripted, tmp, _extra_files=extra)
    logger.info("wrote %s (TorchScript, traced at %s)", path, tuple(sample.shape))


def read_metadata(path: str) -> Dict:
    """The JSON metadata of an exported ``.onnx`` / TorchScript file (class names, palette, ...)."""
    fmt = detect_format(path)
    if fmt == "onnx":
        import onnx

        proto = onnx.load(path, load_external_data=False)
        props = {p.key: p.value for p in proto.metadata_props}
        if METADATA_KEY not in props:
            raise ValueError(
                f"{path} has no '{METADATA_KEY}' entry in its ONNX metadata_props (not exported by mta_clip?)"
            )
        return json.loads(props[METADATA_KEY])
    extra = {METADATA_KEY: ""}
    torch.jit.load(path, map_location="cpu", _extra_files=extra)
    if not extra[METADATA_KEY]:
        raise ValueError(f"{path} has no '{METADATA_KEY}' extra file (not exported by mta_clip?)")
    return json.loads(extra[METADATA_KEY])


def detect_format(path: str) -> str:
    """ "onnx" or "torchscript" from the file's first bytes (TorchScript files are zip archives)."""
    with open(path, "rb") as f:
        head = f.read(4)
    return "torchscript" if head[:2] == b"PK" else "onnx"


# --------------------------------------------------------------------------- running and checking
class ExportedModel:
    """Runs an exported file: ONNX through ONNX Runtime (CPU), TorchScript through ``torch.jit``.

    ``model(image)`` with a (B, H, W, 3) numpy or torch image -> ``(probs, labels)`` numpy arrays.
    """

    def __init__(self, path: str, threads: int = 0):
        self.path = path
        self.format = detect_format(path)
        self.metadata = read_metadata(path)
        if self.format == "onnx":
            import onnxruntime as ort

            opts = ort.SessionOptions()
            if threads:
                opts.intra_op_num_threads = threads
                opts.inter_op_num_threads = 1
            self.session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        else:
            self.module = torch.jit.load(path, map_location="cpu").eval()

    def __call__(self, image) -> Tuple[np.ndarray, np.ndarray]:
        if self.format == "onnx":
            arr = image.numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
            probs, labels = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: arr})
            return probs, labels
        tensor = image if isinstance(image, torch.Tensor) else torch.from_numpy(np.asarray(image))
        with torch.no_grad():
            probs, labels = self.module(tensor)
        return probs.numpy(), labels.numpy()


def compare_outputs(graph: SegmentationGraph, exported: ExportedModel, image: torch.Tensor) -> Dict[str, float]:
    """PyTorch (eager, the project's usual op dispatch) vs the exported file on one image:
    ``max_abs_prob_diff`` and ``label_mismatch`` (fraction of pixels with another label)."""
    with torch.no_grad():
        ref_probs, ref_labels = graph(image)
    probs, labels = exported(image)
    if probs.shape != tuple(ref_probs.shape) or labels.shape != tuple(ref_labels.shape):
        raise ExportCheckError(
            f"exported outputs have shapes {probs.shape}, {labels.shape}; PyTorch gives "
            f"{tuple(ref_probs.shape)}, {tuple(ref_labels.shape)}"
        )
    return {
        "max_abs_prob_diff": float(np.abs(probs - ref_probs.numpy()).max()),
        "label_mismatch": float((labels != ref_labels.numpy()).mean()),
    }


def check_export(
    graph: SegmentationGraph, path: str, images: Sequence[torch.Tensor], max_label_mismatch: float = MAX_LABEL_MISMATCH
) -> List[Dict]:
    """Runs the exported file on ``images`` and compares with PyTorch; raises ExportCheckError when
    the labels differ on more than ``max_label_mismatch`` of the pixels of any image."""
    exported = ExportedModel(path)
    results = []
    for img in images:
        r = compare_outputs(graph, exported, img)
        r["size"] = [int(img.shape[1]), int(img.shape[2])]
        results.append(r)
        logger.info(
            "check %s at %s: max |probs diff| %.3g, labels differ on %.4f%% of pixels",
            path,
            tuple(img.shape[1:3]),
            r["max_abs_prob_diff"],
            100 * r["label_mismatch"],
        )
        if r["label_mismatch"] > max_label_mismatch:
            raise ExportCheckError(
                f"{path}: labels differ from PyTorch's on {100 * r['label_mismatch']:.3f}% of the pixels of a "
                f"{tuple(img.shape[1:3])} image (allowed: {100 * max_label_mismatch:.3f}%); "
                f"max |probs diff| {r['max_abs_prob_diff']:.3g}"
            )
    return results


def _check_image(image: np.ndarray, index: int, size: Optional[Tuple[int, int]], lo: int, dtype: str) -> torch.Tensor:
    """A user's (H, W, 3) BGR uint8 image as a (1, H, W, 3) check input (resized to ``size``)."""
    import cv2

    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(
            f"check image {index}: expected an (H, W, 3) BGR uint8 array, got {image.dtype} {tuple(image.shape)}"
        )
    if size is not None and image.shape[:2] != tuple(size):
        image = cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    try:
        _check_size(image.shape[:2], lo)
    except ValueError as exc:
        raise ValueError(f"check image {index}: {exc}") from None
    tensor = torch.from_numpy(np.ascontiguousarray(image))[None]
    return tensor if dtype == "uint8" else tensor.float()


# --------------------------------------------------------------------------- one call
def export_metadata(
    cfg, class_names: Sequence[str], palette: Sequence[Sequence[int]], ignore_label: int = 255, **extra
) -> Dict:
    """The self-description stored in the exported file (JSON-serializable dict)."""
    names = [str(n) for n in class_names]
    colors = [[int(c) for c in rgb] for rgb in palette]
    num_classes = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    if len(names) != num_classes or len(colors) != num_classes:
        raise ValueError(
            f"{len(names)} class names and {len(colors)} palette colors for a model of "
            f"MODEL.SEM_SEG_HEAD.NUM_CLASSES = {num_classes}"
        )
    meta = {
        "format_version": 1,
        "class_names": names,
        "palette": colors,
        "ignore_label": int(ignore_label),
        "meta_architecture": cfg.MODEL.META_ARCHITECTURE,
        "backbone": cfg.MODEL.BACKBONE.NAME,
        "input": {
            "name": INPUT_NAME,
            "layout": "BHWC",
            "channel_order": "BGR",
            "value_range": [0, 255],
            "min_size_test": int(cfg.INPUT.MIN_SIZE_TEST),
            "max_size_test": int(cfg.INPUT.MAX_SIZE_TEST),
        },
        "outputs": {"probs": "(B, C, H, W) float32, per-pixel class distribution", "labels": "(B, H, W) int64"},
        "torch_version": torch.__version__,
    }
    meta.update(extra)
    return meta


def export_model(
    model: nn.Module,
    output: str,
    fmt: str = "onnx",
    input_format: str = "BGR",
    size: Sequence[int] = (512, 512),
    dynamic: bool = True,
    metadata: Optional[Dict] = None,
    input_dtype: str = "uint8",
    check: bool = True,
    check_size: Optional[Sequence[int]] = None,
    max_label_mismatch: float = MAX_LABEL_MISMATCH,
    test_size: Optional[Sequence[int]] = None,
    check_images: Optional[Sequence[np.ndarray]] = None,
) -> Dict:
    """Exports a semantic meta-architecture (eval mode) to ``output`` and checks it against PyTorch.

    Args:
        model: ``SemanticMask2Former`` / ``MTACLIP`` (not a test-time-augmentation wrapper).
        fmt: "onnx" or "torchscript".
        input_format: the model's INPUT.FORMAT (the file always takes BGR).
        size: (H, W) of the export sample; the only size served unless ``dynamic``.
        dynamic: ONNX only: B, H and W dynamic (TorchScript traces one size: True raises ValueError).
        metadata: stored in the file (see :func:`export_metadata`); "image_size" / "dynamic" /
            "input.dtype" are filled in here.
        input_dtype: "uint8" or "float32" (values 0..255 either way).
        check: run the written file (ONNX Runtime / torch.jit) against PyTorch at ``size`` and, when
            dynamic, at ``check_size`` (default: ``size`` minus 7 on both sides, which is not a
            multiple of 32) with a batch of 3; the file is written only if the labels agree (see
            ``check_export``).
        check_images: (H, W, 3) BGR uint8 images (your own data) checked instead of the random ones:
            each at its size in a dynamic file (sides >= :func:`min_image_size`), resized to ``size``
            (bilinear) for a fixed-size file.
        test_size: (INPUT.MIN_SIZE_TEST, MAX_SIZE_TEST): the file resizes the image like the test
            mapper and returns results at the image's size, as ``Predictor`` does; None: the file
            runs the model at the size it is given (metadata "test_resize" says which).
    Returns:
        {"output", "format", "dynamic", "checks": [per image: size, max_abs_prob_diff, label_mismatch]}.
    """
    from .atomic_io import atomic_output

    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    if fmt == "torchscript" and dynamic:
        raise ValueError(
            "TorchScript export serves one image size (torch.jit.trace records the deformable attention's "
            "level sizes as constants): pass a fixed size (--size H W, dynamic=False), or export ONNX for "
            "dynamic sizes"
        )
    if type(model).__name__ == "SemSegTTA" or not hasattr(model, "sem_seg_head"):
        raise ValueError(
            f"cannot export {type(model).__name__}: only the single-scale semantic models (SemanticMask2Former, "
            f"MTACLIP) export; test-time augmentation (TEST.AUG / TEST.SLIDE) is not part of the graph"
        )
    graph = SegmentationGraph(model, input_format, test_size, dynamic).eval()
    lo = min_image_size(graph, dynamic)
    h, w = _check_size(size, lo)
    sample = sample_image((h, w), batch=2 if dynamic else 1, dtype=input_dtype)
    meta = dict(metadata or {})
    meta["dynamic"] = bool(dynamic)
    meta["image_size"] = None if dynamic else [h, w]
    meta["min_image_size"] = lo
    meta["test_resize"] = graph.test_size is not None
    meta.setdefault("input", {})["dtype"] = input_dtype
    report = {"output": output, "format": fmt, "dynamic": bool(dynamic), "checks": []}
    with atomic_output(output) as tmp:
        if fmt == "onnx":
            export_onnx(graph, tmp, sample, dynamic=dynamic, metadata=meta)
        else:
            export_torchscript(graph, tmp, sample, metadata=meta)
        if check and check_images:
            images = [
                _check_image(img, i, None if dynamic else (h, w), lo, input_dtype) for i, img in enumerate(check_images)
            ]
            report["checks"] = check_export(graph, tmp, images, max_label_mismatch)
        elif check:
            images = [sample_image((h, w), dtype=input_dtype, seed=1)]
            if dynamic:
                ch, cw = check_size if check_size is not None else (max(h - 7, lo), max(w - 7, lo))
                images.append(sample_image(_check_size((ch, cw), lo), batch=3, dtype=input_dtype, seed=2))
            report["checks"] = check_export(graph, tmp, images, max_label_mismatch)
    return report
