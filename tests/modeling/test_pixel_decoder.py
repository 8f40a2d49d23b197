"""MSDeformAttn pixel decoder: shapes, float32 under autocast, no host reads, torch.compile(fullgraph=True),
torch.export."""

import pytest
import torch
from detectron2.layers import ShapeSpec
from torch.utils._python_dispatch import TorchDispatchMode

from mta_clip.modeling.pixel_decoder import MSDeformAttnPixelDecoder
from tests.conftest import graph_recording_backend

aten = torch.ops.aten

SHAPES = {
    "res2": ShapeSpec(channels=8, stride=4),
    "res3": ShapeSpec(channels=16, stride=8),
    "res4": ShapeSpec(channels=24, stride=16),
    "res5": ShapeSpec(channels=32, stride=32),
}


def small_decoder(seed=0, layers=2):
    torch.manual_seed(seed)
    return MSDeformAttnPixelDecoder(
        SHAPES,
        transformer_dropout=0.0,
        transformer_nheads=4,
        transformer_dim_feedforward=64,
        transformer_enc_layers=layers,
        transformer_n_points=4,
        conv_dim=32,
        mask_dim=16,
        norm="GN",
        transformer_in_features=["res3", "res4", "res5"],
        common_stride=4,
    )


def features(seed=1, batch=2, height=64, width=96, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    return {
        k: torch.randn(batch, v.channels, height // v.stride, width // v.stride, generator=gen).to(device)
        for k, v in SHAPES.items()
    }


def test_pixel_decoder_shapes_and_fp32_under_autocast():
    pd = small_decoder().eval()
    feats = features()
    mask_features, lowest, multi = pd.forward_features(feats)
    assert lowest is multi[0]  # the middle value (Mask2Former's transformer output) is the first memory
    assert mask_features.shape == (2, 16, 16, 24)
    assert [tuple(m.shape) for m in multi] == [(2, 32, 2, 3), (2, 32, 4, 6), (2, 32, 8, 12)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mf2, _, _ = pd.forward_features(feats)
    assert mf2.dtype == torch.float32
    torch.testing.assert_close(mf2, mask_features)


class HostTraffic(TorchDispatchMode):
    """Records every op that moves data between the host and the device of the tensors: reading a
    scalar (``.item()``, ``bool()``, ``int()``), building a tensor from host data and copies between
    devices. Run on the "meta" device, where ``.tolist()`` / ``.cpu()`` also fail, so nothing reads
    data unnoticed. ``torch.tensor`` / ``torch.as_tensor`` / ``Tensor.new_tensor`` with a device
    argument build meta tensors without a dispatched op, so they are recorded by ``watch``."""

    SCALAR_READS = {aten._local_scalar_dense.default, aten.is_nonzero.default, aten.equal.default, aten.nonzero.default}

    def __init__(self):
        super().__init__()
        self.events = []

    def watch(self, monkeypatch):
        for owner, name in ((torch, "tensor"), (torch, "as_tensor"), (torch.Tensor, "new_tensor")):
            original = getattr(owner, name)

            def recorded(*args, _original=original, _name=name, **kwargs):
                self.events.append(f"torch.{_name} (tensor from host data)")
                return _original(*args, **kwargs)

            monkeypatch.setattr(owner, name, recorded)
        return self

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.SCALAR_READS:
            self.events.append(str(func))
        elif func is aten.lift_fresh.default or func is aten.lift_fresh_copy.default:
            self.events.append(f"{func} (tensor from host data)")
        out = func(*args, **kwargs)
        if func in (aten._to_copy.default, aten.copy_.default):
            devices = {
                t.device
                for t in (args[0], args[1] if func is aten.copy_.default else out)
                if isinstance(t, torch.Tensor)
            }
            if len(devices) > 1:
                self.events.append(f"{func} between {sorted(map(str, devices))}")
        return out


def test_host_traffic_recorder_catches_the_old_level_tensors(monkeypatch):
    """The recorder flags what the decoder used to do: level sizes made into a device tensor and
    read back."""
    with HostTraffic().watch(monkeypatch) as mode:
        shapes = torch.as_tensor([(4, 6), (2, 3)], dtype=torch.long, device="meta")
        starts = torch.tensor([0, 24]).to(shapes.device)
        with pytest.raises(RuntimeError, match="meta"):
            int(shapes.prod(1).sum())
        with pytest.raises(NotImplementedError):
            starts.tolist()
    assert mode.events[0] == "torch.as_tensor (tensor from host data)"
    assert any("between" in e for e in mode.events)
    assert any("_local_scalar_dense" in e for e in mode.events)


@pytest.mark.parametrize("train", [False, True])
def test_pixel_decoder_reads_nothing_from_the_device(train, monkeypatch):
    """Forward (and backward) of the whole pixel decoder on the "meta" device: no scalar read, no
    tensor built from host data, no cross-device copy (on a GPU each would be a sync)."""
    decoder = small_decoder().to("meta").train(train)
    feats = features(device="meta")
    for f in feats.values():
        f.requires_grad_(train)
    with HostTraffic().watch(monkeypatch) as mode:
        mask_features, _, multi = decoder.forward_features(feats)
        if train:
            (mask_features.sum() + sum(m.sum() for m in multi)).backward()
    assert mask_features.shape == (2, 16, 16, 24)
    assert mode.events == []


def _decoder_step(decoder, feats):
    mask_features, _, multi = decoder.forward_features(feats)
    return mask_features, multi


def test_pixel_decoder_compiles_fullgraph_with_the_compiled_op():
    """torch.compile(fullgraph=True) of forward + backward: one graph each, the C++ op and its
    backward op inside, results equal to eager."""
    backend, graphs = graph_recording_backend()
    decoder = small_decoder(layers=1)  # one encoder layer: the graph is the same per layer
    feats = features()
    eager_mf, eager_multi = _decoder_step(decoder, feats)
    eager_grads = torch.autograd.grad(eager_mf.square().sum(), list(decoder.parameters()))
    torch._dynamo.reset()
    step = torch.compile(_decoder_step, fullgraph=True, backend=backend)
    mf, multi = step(decoder, feats)
    compiled_grads = torch.autograd.grad(mf.square().sum(), list(decoder.parameters()))
    assert len(graphs["forward"]) == 1 and len(graphs["backward"]) == 1
    assert graphs["forward"][0].count("mta_clip.ms_deform_attn.default") == 1
    assert graphs["backward"][0].count("mta_clip.ms_deform_attn_backward.default") == 1
    torch.testing.assert_close(mf, eager_mf, rtol=1e-5, atol=1e-5)
    for got, ref in zip(multi, eager_multi):
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    scale = max(g.abs().max().item() for g in eager_grads)
    for got, ref in zip(compiled_grads, eager_grads):  # fp32, summed in another order
        torch.testing.assert_close(got, ref, rtol=1e-3, atol=1e-5 * scale)


def test_pixel_decoder_exports_with_the_compiled_op():
    """torch.export on CPU keeps the C++ op; the exported program reproduces eager on new inputs."""

    class Wrapper(torch.nn.Module):
        def __init__(self, decoder):
            super().__init__()
            self.decoder = decoder

        def forward(self, feats):
            return self.decoder.forward_features(feats)

    decoder = small_decoder().eval()
    program = torch.export.export(Wrapper(decoder), (features(),))
    targets = [
        n.target
        for gm in program.graph_module.modules()
        if isinstance(gm, torch.fx.GraphModule)
        for n in gm.graph.nodes
        if n.op == "call_function"
    ]
    assert targets.count(torch.ops.mta_clip.ms_deform_attn.default) == 2
    other = features(seed=5)
    out = program.module()(other)
    ref = decoder.forward_features(other)
    torch.testing.assert_close(out[0], ref[0], rtol=1e-5, atol=1e-6)
