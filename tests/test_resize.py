"""mta_clip.resize: the test mapper's resize as tensor ops, against PIL and Detectron2 themselves,
in PyTorch and (exported with dynamic sizes) in ONNX Runtime."""

import numpy as np
import torch
from PIL import Image

from mta_clip.resize import pil_bilinear_resize, shortest_edge_shape

# downscales (anti-aliased, 1.01x to 9x), upscales, one axis only, the same size, tiny images
CASES = [
    ((97, 97), (96, 96)),
    ((200, 130), (148, 96)),
    ((1000, 700), (137, 96)),
    ((50, 70), (96, 134)),
    ((3, 5), (96, 160)),
    ((1, 1), (4, 4)),
    ((30, 300), (30, 224)),
    ((64, 80), (64, 80)),
    ((97, 97), (32, 194)),
]


def _pil(image: np.ndarray, size) -> np.ndarray:
    return np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.BILINEAR))


def test_shortest_edge_shape_is_detectron2s():
    """The integer formula against Detectron2's float ResizeShortestEdge.get_output_shape."""
    from detectron2.data.transforms import ResizeShortestEdge

    rng = np.random.default_rng(0)
    sizes = [(h, w) for h in (1, 2, 31, 64, 97, 480, 512, 513, 1024) for w in (1, 3, 50, 512, 683, 2048, 4000)]
    sizes += [tuple(int(v) for v in rng.integers(1, 5000, 2)) for _ in range(300)]
    for short, longest in [(512, 2048), (96, 224), (1024, 2048), (640, 0)]:
        for h, w in sizes:
            expected = ResizeShortestEdge.get_output_shape(h, w, short, longest if longest > 0 else 10**9)
            assert shortest_edge_shape(h, w, short, longest) == expected, (h, w, short, longest)


def test_pil_bilinear_resize_is_pils_bit_for_bit():
    rng = np.random.default_rng(1)
    for (h, w), size in CASES:
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        out = pil_bilinear_resize(torch.from_numpy(image).permute(2, 0, 1).float(), size)
        assert out.dtype == torch.float32 and tuple(out.shape) == (3, *size)
        np.testing.assert_array_equal(out.permute(1, 2, 0).numpy(), _pil(image, size).astype(np.float32))


def test_float_input_is_rounded_like_a_uint8_image():
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    noisy = torch.from_numpy(image).permute(2, 0, 1).float() + torch.empty(3, 40, 50).uniform_(-0.45, 0.45)
    np.testing.assert_array_equal(
        pil_bilinear_resize(noisy, (20, 25)).permute(1, 2, 0).numpy(), _pil(image, (20, 25)).astype(np.float32)
    )


class _Resize(torch.nn.Module):
    def forward(self, image: torch.Tensor) -> torch.Tensor:  # (B, H, W, 3) uint8
        x = image.permute(0, 3, 1, 2).float()
        return pil_bilinear_resize(x, shortest_edge_shape(x.shape[-2], x.shape[-1], 96, 224))


def test_exported_with_dynamic_sizes_is_pils(tmp_path):
    """One ONNX file with symbolic sizes, run by ONNX Runtime at other sizes: still PIL's pixels."""
    import onnxruntime as ort

    sample = torch.randint(0, 256, (2, 70, 110, 3), dtype=torch.uint8)
    dims = {0: torch.export.Dim("b", max=64), 1: torch.export.Dim("h", max=4096), 2: torch.export.Dim("w", max=4096)}
    path = str(tmp_path / "resize.onnx")
    torch.onnx.export(_Resize(), (sample,), path, dynamo=True, dynamic_shapes={"image": dims}, verbose=False)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(3)
    for h, w in [(200, 130), (50, 70), (97, 97), (30, 300)]:
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        (out,) = session.run(None, {"image": image[None]})
        expected = _pil(image, shortest_edge_shape(h, w, 96, 224))
        np.testing.assert_array_equal(out[0].transpose(1, 2, 0), expected.astype(np.float32))
