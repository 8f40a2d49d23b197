#!/usr/bin/env python
"""Writes docs/config_reference.md: every config key this project adds, its default and its comment.

    python tools/config_reference.py            # regenerate docs/config_reference.md
    python tools/config_reference.py --check    # exit 1 when the file is out of date

The keys, their sections and comments are read from ``mta_clip/config.py`` (its ``_add_*_config``
functions: one section each, the docstring as title, comment lines as notes, the trailing comment
of every assignment as the key's meaning; keys whose comment starts with "not used" are listed
apart); the defaults are the values of a config built with ``add_mtaclip_config``. A key without a
comment is an error.
"""

import argparse
import ast
import io
import os
import sys
import tokenize
from typing import Dict, List, NamedTuple, Optional, Tuple, Union

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

CONFIG_SOURCE = os.path.join(ROOT, "mta_clip", "config.py")
OUTPUT = os.path.join(ROOT, "docs", "config_reference.md")
COMMAND = "python tools/config_reference.py"


class Key(NamedTuple):
    name: str  # full key, e.g. "MODEL.CLIP.WEIGHTS"
    comment: str
    line: int


class Section(NamedTuple):
    function: str
    title: str
    notes: List[str]
    keys: List[Key]


def _comments_by_line(source: str) -> Dict[int, str]:
    return {
        tok.start[0]: tok.string.lstrip("#").strip()
        for tok in tokenize.generate_tokens(io.StringIO(source).readline)
        if tok.type == tokenize.COMMENT
    }


def _dotted(node: ast.AST, aliases: Dict[str, str]) -> Optional[str]:
    """``cfg.MODEL.X`` / ``alias.X`` -> "MODEL.X" (the config root is the function's first argument)."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name) or node.id not in aliases:
        return None
    prefix = aliases[node.id]
    return ".".join(([prefix] if prefix else []) + parts[::-1])


def _is_new_node(value: ast.AST) -> bool:
    return isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "CN"


def read_sections(path: str = CONFIG_SOURCE) -> List[Section]:
    """The ``_add_*_config`` functions of ``path`` with their keys, in source order."""
    with open(path, encoding="utf-8") as f:
        source = f.read()
    comments = _comments_by_line(source)
    sections = []
    for fn in ast.parse(source).body:
        if not (isinstance(fn, ast.FunctionDef) and fn.name.startswith("_add_") and fn.name.endswith("_config")):
            continue
        aliases = {fn.args.args[0].arg: ""}
        keys: List[Key] = []
        statement_lines = set()
        for stmt in fn.body:
            statement_lines.update(range(stmt.lineno, stmt.end_lineno + 1))
            if not isinstance(stmt, ast.Assign) or len(stmt.targets) != 1:
                continue
            target = stmt.targets[0]
            if isinstance(target, ast.Name):  # alias = cfg.SOME.NODE
                resolved = _dotted(stmt.value, aliases)
                if resolved is not None:
                    aliases[target.id] = resolved
                continue
            name = _dotted(target, aliases)
            if name is None or _is_new_node(stmt.value):
                continue
            comment = comments.get(stmt.end_lineno, "")
            if not comment:
                raise ValueError(f"{path}:{stmt.end_lineno}: config key {name} has no comment")
            keys.append(Key(name, comment, stmt.end_lineno))
        body_start = fn.body[0].end_lineno + 1 if ast.get_docstring(fn) else fn.body[0].lineno
        notes = [
            text
            for line, text in sorted(comments.items())
            if body_start <= line <= fn.end_lineno and line not in statement_lines
        ]
        sections.append(Section(fn.name, ast.get_docstring(fn) or fn.name, notes, keys))
    return sections


def is_unused(key: Key) -> bool:
    """Keys kept only so that other projects' YAML files load: their comment starts with "not used"."""
    return key.comment.startswith("not used")


def _default(cfg, name: str):
    node = cfg
    for part in name.split("."):
        node = node[part]
    return node


def _format_value(value) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, (list, tuple)):
        inner = ", ".join(_format_value(v) for v in value)
        return f"[{inner}]" if isinstance(value, list) else f"({inner}{',' if len(value) == 1 else ''})"
    return repr(value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render(sections: List[Section], renamed: Dict[str, Union[str, Tuple[str, str]]], cfg) -> str:
    lines = [
        "# Config reference",
        "",
        f"Generated from `mta_clip/config.py` by `{COMMAND}`; do not edit by hand",
        "(`tests/tools/test_config_reference.py` fails when this file is out of date). Detectron2's own",
        "keys are documented by Detectron2 (`detectron2/config/defaults.py`); YAML files only override",
        "the defaults below.",
        "",
    ]

    def row(key: Key) -> str:
        return f"| `{key.name}` | `{_cell(_format_value(_default(cfg, key.name)))}` | {_cell(key.comment)} |"

    header = ["| Key | Default | Meaning |", "|---|---|---|"]
    for section in sections:
        lines += [f"## {section.title.rstrip('.')}", ""]
        if section.notes:
            lines += [" ".join(section.notes), ""]
        lines += header + [row(key) for key in section.keys if not is_unused(key)] + [""]
    unused = [key for section in sections for key in section.keys if is_unused(key)]
    if unused:
        lines += [
            "## Kept for YAML compatibility, not used",
            "",
            "Mask2Former / Detectron2 YAML files set these keys; nothing in this project reads them.",
            "",
        ]
        lines += header + [row(key) for key in unused] + [""]
    if renamed:
        lines += [
            "## Renamed and removed keys",
            "",
            "A YAML file or override that uses an old key is an error naming the key to use.",
            "",
            "| Old key | Use | Note |",
            "|---|---|---|",
        ]
        for old, new in renamed.items():
            new, note = (new, "") if isinstance(new, str) else new
            lines.append(f"| `{old}` | `{new}` | {_cell(note)} |")
        lines.append("")
    return "\n".join(lines)


def generate() -> Tuple[str, List[Section]]:
    from detectron2.config import get_cfg

    from mta_clip.config import RENAMED_KEYS, add_mtaclip_config

    cfg = add_mtaclip_config(get_cfg())
    sections = read_sections()
    return render(sections, RENAMED_KEYS, cfg), sections


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when the file is out of date; write nothing")
    parser.add_argument("--output", default=OUTPUT, help="where to write (default: docs/config_reference.md)")
    args = parser.parse_args(argv)
    text, sections = generate()
    if args.check:
        current = open(args.output, encoding="utf-8").read() if os.path.isfile(args.output) else None
        if current != text:
            print(f"{args.output} is out of date: run `{COMMAND}`", file=sys.stderr)
            return 1
        return 0
    from mta_clip.atomic_io import write_text_atomic

    write_text_atomic(args.output, text)
    print(f"wrote {args.output} ({sum(len(s.keys) for s in sections)} keys)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
