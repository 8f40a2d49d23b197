"""tools/offline_bundle.py: what goes into a bundle, its manifest, and the check before an offline
install. The install itself (pip --no-index into a fresh venv over a stand-in of the GPU machine,
numpy 2, the GPU check's CPU rehearsal) is scripts/ci_offline_check.sh, run by CI."""

import hashlib
import json

import pytest

from tests.conftest import load_tool

offline_bundle = load_tool("offline_bundle")


def _item(name, version, url):
    return {"metadata": {"name": name, "version": version}, "download_info": {"url": url}}


def _report(tmp_path, items):
    path = tmp_path / "report.json"
    path.write_text(json.dumps({"version": "1", "install": items}))
    return str(path)


REPORT = [
    _item("torch", "2.14.1", "https://x/torch-2.14.1-cp311-cp311-manylinux_2_28_x86_64.whl"),
    _item("nvidia-cublas", "13.1", "https://x/nvidia_cublas-13.1-py3-none-manylinux_2_27_x86_64.whl"),
    _item("numpy", "1.26.4", "https://x/numpy-1.26.4-cp311-cp311-manylinux2014_x86_64.whl"),
    _item("fvcore", "0.1.5.post20221221", "file:///tmp/local/fvcore-0.1.5.post20221221-py3-none-any.whl"),
    _item("Open_Clip.torch", "3.3.0", "https://x/open_clip_torch-3.3.0-py3-none-any.whl"),
    _item("setuptools", "84.2.1", "https://x/setuptools-84.2.1-py3-none-any.whl"),
]


def test_plan_leaves_out_torch_stack_and_what_the_target_has(tmp_path):
    plan = offline_bundle.plan(
        _report(tmp_path, REPORT), with_torch=False, assume_present=["NumPy", "setuptools", "open-clip-torch*"]
    )
    assert [x["name"] for x in plan["bundle"]] == ["fvcore", "setuptools"]  # setuptools: always bundled
    why = {x["name"]: x["why"] for x in plan["left_out"]}
    torch_stack, present = "torch stack (--with-torch not given)", "assumed present on the target"
    assert why == {"torch": torch_stack, "nvidia-cublas": torch_stack, "numpy": present, "Open_Clip.torch": present}
    plan = offline_bundle.plan(_report(tmp_path, REPORT), with_torch=True, assume_present=[])
    assert len(plan["bundle"]) == len(REPORT) and not plan["left_out"]


def test_plan_rejects_source_archives_and_other_files(tmp_path):
    with pytest.raises(ValueError, match=r"antlr4-python3-runtime 4.9.3 resolved to a source archive"):
        offline_bundle.plan(
            _report(tmp_path, [_item("antlr4-python3-runtime", "4.9.3", "https://x/a-4.9.3.tar.gz")]), False, []
        )
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="not a pip installation report"):
        offline_bundle.plan(str(tmp_path / "bad.json"), False, [])


def test_name_list_reads_names_and_pip_freeze(tmp_path):
    path = tmp_path / "names.txt"
    path.write_text("# comment\ntorch==2.11.0\n\nnvidia-*  # all of them\nopencv_python_headless\n")
    assert offline_bundle.read_name_list(str(path)) == ["torch", "nvidia-*", "opencv_python_headless"]
    path.write_text("torch\nnot a name!\n")
    with pytest.raises(ValueError, match=r"names.txt:2: expected a project name"):
        offline_bundle.read_name_list(str(path))


@pytest.fixture
def bundle(tmp_path):
    wheels = tmp_path / "bundle" / "wheels"
    wheels.mkdir(parents=True)
    contents = {
        "fvcore-0.1.5.post20221221-py3-none-any.whl": b"fvcore bytes",
        "pycocotools-2.0.10-cp312-abi3-manylinux_2_17_x86_64.manylinux2014_x86_64.whl": b"x" * 3000,
    }
    for name, data in contents.items():
        (wheels / name).write_bytes(data)
    return tmp_path / "bundle", contents


def test_manifest_lists_every_wheel_with_its_sha256(bundle):
    root, contents = bundle
    left = [{"name": "torch", "version": "2.11", "why": "torch stack"}]
    manifest = offline_bundle.write_manifest(str(root), "3.12", ["manylinux2014_x86_64"], False, left)
    assert manifest["total_bytes"] == sum(len(d) for d in contents.values())
    assert manifest["left_out"] == left and manifest["python"] == "3.12"
    sums = dict(line.split("  ")[::-1] for line in (root / "SHA256SUMS").read_text().splitlines())
    for name, data in contents.items():
        assert sums[f"wheels/{name}"] == hashlib.sha256(data).hexdigest()
    assert (root / "requirements.txt").read_text() == "fvcore==0.1.5.post20221221\npycocotools==2.0.10\n"
    assert json.loads((root / "manifest.json").read_text()) == manifest
    assert offline_bundle.verify(str(root), "3.12")["wheels"] == manifest["wheels"]


def test_manifest_size_limit_and_duplicates(bundle):
    root, _ = bundle
    with pytest.raises(ValueError, match=r"over --max-mib 0.001; largest: pycocotools-2.0.10"):
        offline_bundle.write_manifest(str(root), "3.12", [], False, [], max_mib=0.001)
    assert not (root / "manifest.json").exists()
    (root / "wheels" / "fvcore-0.1.6-py3-none-any.whl").write_bytes(b"other")
    with pytest.raises(ValueError, match="two wheels of fvcore"):
        offline_bundle.write_manifest(str(root), "3.12", [], False, [])


@pytest.mark.parametrize(
    "damage, message",
    [
        (
            lambda w: (w / "fvcore-0.1.5.post20221221-py3-none-any.whl").write_bytes(b"fvcore bytes!"),
            r"fvcore-0.1.5.post20221221-py3-none-any.whl: sha256 [0-9a-f]{64} does not match",
        ),
        (
            lambda w: (w / "fvcore-0.1.5.post20221221-py3-none-any.whl").unlink(),
            r"missing wheels listed in manifest.json: fvcore-0.1.5.post20221221-py3-none-any.whl",
        ),
        (
            lambda w: (w / "yacs-0.1.8-py3-none-any.whl").write_bytes(b"y"),
            r"wheels not in manifest.json: yacs-0.1.8-py3-none-any.whl",
        ),
    ],
)
def test_verify_names_a_damaged_bundle(bundle, damage, message, capsys):
    root, _ = bundle
    offline_bundle.write_manifest(str(root), "3.12", [], False, [])
    damage(root / "wheels")
    with pytest.raises(ValueError, match=message):
        offline_bundle.verify(str(root), "3.12")
    assert offline_bundle.main(["verify", str(root)]) == 1
    assert "[offline_bundle] error:" in capsys.readouterr().err


def test_verify_checks_the_python_version_and_the_manifest(bundle, tmp_path):
    root, _ = bundle
    with pytest.raises(ValueError, match="no manifest.json; build the bundle with scripts/make_offline_bundle.sh"):
        offline_bundle.verify(str(root))
    offline_bundle.write_manifest(str(root), "3.12", [], False, [])
    with pytest.raises(ValueError, match=r"bundle is for Python 3.12, this Python is 3.11; .*--python 3.11"):
        offline_bundle.verify(str(root), "3.11")
