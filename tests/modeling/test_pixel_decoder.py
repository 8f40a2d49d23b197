"""MSDeformAttn pixel decoder: shapes, float32 under autocast."""
import torch
from detectron2.layers import ShapeSpec

from mta_clip.modeling.pixel_decoder import MSDeformAttnPixelDecoder


def test_pixel_decoder_shapes_and_fp32_under_autocast():
    shapes = {"res2": ShapeSpec(channels=8, stride=4), "res3": ShapeSpec(channels=16, stride=8),
              "res4": ShapeSpec(channels=24, stride=16), "res5": ShapeSpec(channels=32, stride=32)}
    torch.manual_seed(0)
    pd = MSDeformAttnPixelDecoder(
        shapes, transformer_dropout=0.0, transformer_nheads=4, transformer_dim_feedforward=64,
        transformer_enc_layers=2, transformer_n_points=4, conv_dim=32, mask_dim=16, norm="GN",
        transformer_in_features=["res3", "res4", "res5"], common_stride=4).eval()
    feats = {k: torch.randn(2, v.channels, 64 // v.stride, 96 // v.stride) for k, v in shapes.items()}
    mask_features, lowest, multi = pd.forward_features(feats)
    assert lowest is multi[0]  # the middle value (Mask2Former's transformer output) is the first memory
    assert mask_features.shape == (2, 16, 16, 24)
    assert [tuple(m.shape) for m in multi] == [(2, 32, 2, 3), (2, 32, 4, 6), (2, 32, 8, 12)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mf2, _, _ = pd.forward_features(feats)
    assert mf2.dtype == torch.float32
    torch.testing.assert_close(mf2, mask_features)
