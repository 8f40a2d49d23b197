"""Config and dataset files are data: YAML is read with ``yaml.safe_load`` only.

Detectron2's ``merge_from_file`` falls back to ``yaml.unsafe_load`` (which runs ``!!python/...``
tags) unless told not to; here a refused tag is a ``ValueError`` naming the file, the line and the
tag, for config files, their ``_BASE_`` files and dataset files alike.
"""

from typing import Any

import yaml

__all__ = ["safe_load_yaml_file", "unsafe_tag_error"]


def _tag(error: yaml.constructor.ConstructorError) -> str:
    """'!!python/object/apply:os.system' from "could not determine a constructor for the tag '...'"."""
    text = str(error.problem or error)
    if text.count("'") >= 2:
        text = text.split("'")[1]
    return text.replace("tag:yaml.org,2002:", "!!")


def unsafe_tag_error(error: yaml.constructor.ConstructorError, what: str = "config file", path: str = "") -> ValueError:
    """The ValueError for a tag that safe loading refused (file from the error's mark if known)."""
    mark = error.problem_mark
    name = path or (mark.name if mark is not None else "<unknown file>")
    line = f", line {mark.line + 1}" if mark is not None else ""
    return ValueError(
        f"{what} {name}{line}: the tag {_tag(error)} is not allowed ({what}s are read as plain data; "
        "nothing in them is run). Remove the tag."
    )


def safe_load_yaml_file(path: str, what: str = "file") -> Any:
    """``yaml.safe_load`` of ``path``; a refused tag or a syntax error is a ValueError naming the file."""
    with open(path, "r", encoding="utf-8") as f:
        try:
            return yaml.safe_load(f)
        except yaml.constructor.ConstructorError as e:
            raise unsafe_tag_error(e, what, path) from None
        except yaml.YAMLError as e:
            raise ValueError(f"{what} {path} is not valid YAML/JSON: {e}") from None
