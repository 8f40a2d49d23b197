"""tools/config_reference.py: docs/config_reference.md is up to date and lists every key the project adds."""

import pytest
from detectron2.config import CfgNode, get_cfg

from mta_clip.config import add_mtaclip_config
from tests.conftest import ROOT, load_tool

tool = load_tool("config_reference")


def _leaves(node: CfgNode, prefix: str = ""):
    for key, value in node.items():
        if isinstance(value, CfgNode):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def test_docs_config_reference_is_up_to_date():
    text, _ = tool.generate()
    with open(tool.OUTPUT, encoding="utf-8") as f:
        assert f.read() == text, f"docs/config_reference.md is out of date: run `{tool.COMMAND}`"
    assert tool.main(["--check"]) == 0


def test_every_added_or_changed_key_is_listed_with_its_default():
    """Independent of the source parser: the keys are those where our config differs from Detectron2's."""
    base, ours = dict(_leaves(get_cfg())), dict(_leaves(add_mtaclip_config(get_cfg())))
    added = {k for k, v in ours.items() if k not in base or base[k] != v}
    listed = {key.name for section in tool.read_sections() for key in section.keys}
    assert added <= listed, sorted(added - listed)
    assert len(added) > 90
    text, _ = tool.generate()
    for name in ("MODEL.CLIP.WEIGHTS", "MODEL.MTA_CLIP.NEGATIVES", "TEST.SLIDE.STRIDE"):
        assert f"| `{name}` | `{tool._format_value(ours[name])}` |" in text


def test_key_without_comment_and_stale_file_are_errors(tmp_path):
    source = tmp_path / "config.py"
    source.write_text(
        'def _add_x_config(cfg):\n    """X."""\n    cfg.A = CN()\n    cfg.A.B = 1  # b\n    cfg.A.C = 2\n'
    )
    with pytest.raises(ValueError, match="A.C has no comment"):
        tool.read_sections(str(source))
    source.write_text(
        'def _add_x_config(cfg):\n    """X keys."""\n    # a note\n    a = cfg.A\n    a.B = [1]  # b | c\n'
    )
    (section,) = tool.read_sections(str(source))
    assert section.title == "X keys." and section.notes == ["a note"] and section.keys[0][:2] == ("A.B", "b | c")
    stale = tmp_path / "ref.md"
    stale.write_text("old\n")
    assert tool.main(["--check", "--output", str(stale)]) == 1
    assert tool.main(["--output", str(stale)]) == 0 and tool.main(["--check", "--output", str(stale)]) == 0
    assert ROOT in tool.OUTPUT
