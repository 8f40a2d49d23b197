"""tools/onnx_demo.py: ONNX Runtime only (torch and detectron2 cannot be imported in its process),
the same labels as the PyTorch Predictor, the same files as demo/demo.py for the same labels, the
run size chosen from the file's metadata."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import cv2
import numpy as np
import onnx
import pytest
from detectron2.data.catalog import Metadata
from detectron2.data.transforms import ResizeShortestEdge
from onnx import TensorProto, helper
from PIL import Image

from mta_clip.export import read_metadata
from mta_clip.predictor import Predictor
from tests.conftest import ROOT, TOY_BASELINE_CONFIG, load_tool, save_random_toy_weights

DEMO = os.path.join(ROOT, "tools", "onnx_demo.py")
# runs the demo with torch and detectron2 made unimportable (a None entry in sys.modules)
RUNNER = (
    "import runpy, sys; sys.modules['torch'] = None; sys.modules['detectron2'] = None; "
    "sys.argv = ['onnx_demo.py'] + sys.argv[1:]; "
    "runpy.run_path(sys.argv.pop(1), run_name='__main__')"
)

onnx_demo = load_tool("onnx_demo")
_spec = importlib.util.spec_from_file_location("mta_clip_demo_for_onnx", os.path.join(ROOT, "demo", "demo.py"))
torch_demo = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(torch_demo)

# the hand-made files' classes: class c wins where channel c (B, G, R) is the largest
NAMES = ["sky, heaven", "grass", "road, route"]
PALETTE = [[135, 195, 240], [70, 165, 45], [105, 105, 110]]


def run_without_torch(*args, demo=DEMO):
    return subprocess.run(
        [sys.executable, "-c", RUNNER, demo, *args], capture_output=True, text=True, timeout=120, check=False
    )


def argmax_model(path, meta, size=None, batch="batch"):
    """An ONNX file with metadata ``meta`` that computes probs = (image + 1) / sum over channels and
    labels = their argmax (the largest of B, G, R): easy to predict at any size."""
    h, w = size or ("height", "width")
    image = helper.make_tensor_value_info("image", TensorProto.UINT8, [batch, h, w, 3])
    probs = helper.make_tensor_value_info("probs", TensorProto.FLOAT, [batch, 3, h, w])
    labels = helper.make_tensor_value_info("labels", TensorProto.INT64, [batch, h, w])
    nodes = [
        helper.make_node("Cast", ["image"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("Transpose", ["f"], ["chw"], perm=[0, 3, 1, 2]),
        helper.make_node("Add", ["chw", "one"], ["pos"]),
        helper.make_node("ReduceSum", ["pos", "axis"], ["total"], keepdims=1),
        helper.make_node("Div", ["pos", "total"], ["probs"]),
        helper.make_node("ArgMax", ["probs"], ["labels"], axis=1, keepdims=0),
    ]
    consts = [
        helper.make_tensor("one", TensorProto.FLOAT, [], [1.0]),
        helper.make_tensor("axis", TensorProto.INT64, [1], [1]),
    ]
    graph = helper.make_graph(nodes, "argmax", [image], [probs, labels], initializer=consts)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    entry = model.metadata_props.add()
    entry.key, entry.value = "mta_clip", json.dumps(meta)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return str(path)


def handmade_meta(**extra):
    meta = {
        "class_names": NAMES,
        "palette": PALETTE,
        "input": {"layout": "BHWC", "channels": "BGR", "dtype": "uint8", "min_size_test": 40, "max_size_test": 56},
    }
    meta.update(extra)
    return meta


def expected_labels(image, size):
    """argmax of (image + 1) / sum computed at ``size`` and resized back (bilinear), as the demo
    does for files that do not resize themselves; ``size`` None: at the image's size."""
    x = image.astype(np.float32) + 1
    if size is None:
        return (x / x.sum(2, keepdims=True)).argmax(2)
    small = cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_LINEAR).astype(np.float32) + 1
    probs = small / small.sum(2, keepdims=True)
    back = cv2.resize(probs, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_LINEAR)
    return back.argmax(2)


def demo_py_outputs(class_names, palette, items, labels, out_dir):
    """What demo/demo.py writes for ``items`` [(path, key)] when its model gives ``labels``: its own
    run_images with a model that replays the given label maps."""

    class Replay:
        def __init__(self):
            self.queue = list(labels)

        def predict_batch(self, images, return_probs=True):
            return [{"labels": self.queue.pop(0)} for _ in images]

    meta = torch_demo.display_metadata(Metadata(name="onnx_file", stuff_classes=class_names, stuff_colors=palette))
    args = torch_demo.get_parser().parse_args(["--input", "x", "--output", str(out_dir)])  # its defaults
    written, failed = torch_demo.run_images(Replay(), items, str(out_dir), meta, args)
    assert written == len(items) and failed == []


def files_below(folder):
    return sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, files in os.walk(folder) for f in files)


def read_label_png(path):
    with Image.open(path) as png:
        return np.array(png)


def assert_same_files(a, b):
    assert files_below(a) == files_below(b)
    for name in files_below(a):
        with open(os.path.join(a, name), "rb") as fa, open(os.path.join(b, name), "rb") as fb:
            assert fa.read() == fb.read(), name


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("onnx_demo")
    weights = save_random_toy_weights(folder, seed=4)
    path = str(folder / "toy.onnx")
    tool = load_tool("export_model")
    assert (
        tool.main(
            [
                "--config-file",
                TOY_BASELINE_CONFIG,
                "--weights",
                weights,
                "--format",
                "onnx",
                "--dynamic",
                "--sample-size",
                "96",
                "128",
                "--output",
                path,
            ]
        )
        == 0
    )
    return weights, path


def test_demo_without_torch_writes_what_demo_py_writes(exported, tmp_path):
    weights, model_path = exported
    rng = np.random.default_rng(5)
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    same_size = rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)
    cv2.imwrite(str(src / "a.png"), same_size)
    cv2.imwrite(str(src / "sub" / "b.png"), rng.integers(0, 256, (50, 70, 3), dtype=np.uint8))
    cv2.imwrite(str(src / "gray16.png"), rng.integers(0, 65536, (40, 30), dtype=np.uint16))
    (src / "broken.png").write_bytes(b"not an image")
    ok, buf = cv2.imencode(".jpg", rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    (src / "cut.jpg").write_bytes(buf.tobytes()[: len(buf) // 2])
    out = tmp_path / "out"
    proc = run_without_torch("--model", model_path, "--input", str(src), "--output", str(out))
    assert proc.returncode == 1, proc.stderr  # two unreadable inputs were skipped, the run went on
    assert "Skipping" in proc.stderr and "broken.png" in proc.stderr and "cut.jpg" in proc.stderr
    keys = ["a", "gray16", os.path.join("sub", "b")]
    assert files_below(out) == sorted(os.path.join(d, k + ".png") for d in ("labels", "overlays") for k in keys)
    labels = [read_label_png(out / "labels" / (k + ".png")) for k in keys]
    # the tool's default file (dynamic sizes, the test resize inside) answers as Predictor does
    predictor = Predictor(TOY_BASELINE_CONFIG, weights=weights)
    for k, lab in zip(keys, labels):
        expected = predictor(torch_demo.read_image(str(src / (k + ".png"))))["labels"]
        assert lab.shape == expected.shape and (lab == expected).mean() >= 0.999, k
    assert labels[0].shape == (96, 128) and labels[1].shape == (40, 30) and labels[2].shape == (50, 70)
    # demo/demo.py, given the same labels, writes the same bytes (overlay and palette label PNG)
    meta = read_metadata(model_path)
    items = [(str(src / (k + ".png")), k) for k in keys]
    demo_py_outputs(meta["class_names"], meta["palette"], items, labels, tmp_path / "torch_demo")
    assert_same_files(out, tmp_path / "torch_demo")


@pytest.mark.parametrize(
    "case",
    ["resizes itself", "fixed size", "older dynamic"],
)
def test_run_size_follows_the_metadata(case, tmp_path):
    rng = np.random.default_rng(6)
    images = {"wide": rng.integers(0, 256, (30, 77, 3), dtype=np.uint8)}
    images["tall"] = rng.integers(0, 256, (61, 24, 3), dtype=np.uint8)
    src = tmp_path / "in"
    src.mkdir()
    for key, image in images.items():
        cv2.imwrite(str(src / f"{key}.png"), image)
    if case == "resizes itself":
        path = argmax_model(tmp_path / "m.onnx", handmade_meta(dynamic=True, test_resize=True, image_size=None))
        sizes = {key: None for key in images}  # the original image goes in
    elif case == "fixed size":
        meta = handmade_meta(dynamic=False, test_resize=True, image_size=[20, 28])
        path = argmax_model(tmp_path / "m.onnx", meta, size=(20, 28), batch=1)
        sizes = {key: (20, 28) for key in images}
    else:
        path = argmax_model(tmp_path / "m.onnx", handmade_meta(dynamic=True, image_size=None))
        resize = ResizeShortestEdge(40, 56)  # Detectron2's test resize: short side 40, long side <= 56
        sizes = {key: resize.get_output_shape(*image.shape[:2], 40, 56) for key, image in images.items()}
        assert sizes == {"wide": (22, 56), "tall": (56, 22)}
    out = tmp_path / "out"
    assert onnx_demo.main(["--model", path, "--input", str(src), "--output", str(out), "--alpha", "0.3"]) == 0
    keys = sorted(images)
    labels = [read_label_png(out / "labels" / f"{key}.png") for key in keys]
    for key, lab in zip(keys, labels):
        np.testing.assert_array_equal(lab, expected_labels(images[key], sizes[key]))
    items = [(str(src / f"{key}.png"), key) for key in keys]
    demo_py_outputs(NAMES, PALETTE, items, labels, tmp_path / "default_alpha")
    with pytest.raises(AssertionError):  # the overlay follows --alpha (demo/demo.py's default 0.5 here)
        assert_same_files(out, tmp_path / "default_alpha")
    assert onnx_demo.main(["--model", path, "--input", str(src), "--output", str(out)]) == 0
    assert_same_files(out, tmp_path / "default_alpha")  # short display names, palette, alpha 0.5


def test_images_of_one_size_share_a_call_when_the_batch_is_dynamic(tmp_path):
    rng = np.random.default_rng(7)
    images = [rng.integers(0, 256, size, dtype=np.uint8) for size in [(20, 30, 3), (25, 30, 3), (20, 30, 3)]]
    meta = handmade_meta(dynamic=True, test_resize=True, image_size=None)
    calls = {}
    for batch in ("batch", 1):
        model = onnx_demo.OnnxSegmenter(argmax_model(tmp_path / f"{batch}.onnx", meta, batch=batch))
        run = model.session.run
        shapes = []

        def spy(names, feeds, run=run, shapes=shapes):
            shapes.append(next(iter(feeds.values())).shape)
            return run(names, feeds)

        model.session.run = spy
        labels = model.predict(images, batch_size=3)
        for image, lab in zip(images, labels):
            np.testing.assert_array_equal(lab, expected_labels(image, None))
        calls[batch] = sorted(shapes)
    assert calls["batch"] == [(1, 25, 30, 3), (2, 20, 30, 3)]
    assert calls[1] == [(1, 20, 30, 3), (1, 20, 30, 3), (1, 25, 30, 3)]


def test_copied_alone_it_names_the_project_files_it_needs(tmp_path):
    (tmp_path / "tools").mkdir()
    demo = str(tmp_path / "tools" / "onnx_demo.py")
    shutil.copy(DEMO, demo)
    model = argmax_model(tmp_path / "m.onnx", handmade_meta(dynamic=True, test_resize=True, image_size=None))
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((8, 9, 3), np.uint8))
    args = ["--model", model, "--input", str(tmp_path / "a.png"), "--output", str(tmp_path / "out")]
    proc = run_without_torch(*args, demo=demo)
    assert proc.returncode == 2
    for name in ("demo_io.py", "visualization.py", "atomic_io.py"):
        assert os.path.join(str(tmp_path), "mta_clip", name) in proc.stderr
    assert "--package-dir" in proc.stderr and not (tmp_path / "out").exists()
    lib = tmp_path / "lib"
    lib.mkdir()
    for name in ("demo_io.py", "visualization.py", "atomic_io.py"):
        shutil.copy(os.path.join(ROOT, "mta_clip", name), lib / name)
    proc = run_without_torch(*args, "--package-dir", str(lib), demo=demo)
    assert proc.returncode == 0, proc.stderr
    assert files_below(tmp_path / "out") == [os.path.join("labels", "a.png"), os.path.join("overlays", "a.png")]


def test_unusable_arguments_and_model_files(tmp_path, caplog):
    image = tmp_path / "a.png"
    cv2.imwrite(str(image), np.zeros((8, 9, 3), np.uint8))
    not_onnx = tmp_path / "m.onnx"
    not_onnx.write_text("not a model")
    bare = argmax_model(tmp_path / "bare.onnx", handmade_meta())
    model = onnx.load(bare)
    del model.metadata_props[:]
    onnx.save(model, bare)
    no_test_size = argmax_model(tmp_path / "old.onnx", handmade_meta(dynamic=True, input={"dtype": "uint8"}))
    out = str(tmp_path / "out")
    cases = [
        (["--model", no_test_size], "lacks input.min_size_test"),
        (["--model", str(not_onnx)], "not a usable exported file"),
        (["--model", bare], "no 'mta_clip' metadata"),
        (["--model", str(tmp_path / "nope.onnx")], "nope.onnx: no such file"),
        (["--model", bare, "--batch-size", "0"], "--batch-size"),
    ]
    for extra, message in cases:
        caplog.clear()
        assert onnx_demo.main(extra + ["--input", str(image), "--output", out]) == 2
        assert message in caplog.text
    assert not os.path.exists(os.path.join(out, "labels"))
