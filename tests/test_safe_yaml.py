"""Config files are data: a !!python tag in a config or its _BASE_ is refused, naming file and tag."""

import pytest

from mta_clip.config import setup_cfg
from tests.conftest import TOY_BASELINE_CONFIG


@pytest.mark.parametrize("in_base", [False, True])
def test_python_tag_in_config_or_base_is_refused_and_not_run(tmp_path, in_base):
    marker = tmp_path / "ran"
    evil = f"SEED: !!python/object/apply:os.system ['touch {marker}']\n"
    if in_base:
        (tmp_path / "base.yaml").write_text(f"_BASE_: {TOY_BASELINE_CONFIG}\n{evil}")
        (tmp_path / "top.yaml").write_text("_BASE_: base.yaml\nSOLVER:\n  MAX_ITER: 5\n")
        bad = "base.yaml"
    else:
        (tmp_path / "top.yaml").write_text(f"_BASE_: {TOY_BASELINE_CONFIG}\n{evil}")
        bad = "top.yaml"
    with pytest.raises(
        ValueError,
        match=rf"config file .*{bad}, line \d+: the tag !!python/object/apply:os.system "
        "is not allowed",
    ):
        setup_cfg(str(tmp_path / "top.yaml"))
    assert not marker.exists()
