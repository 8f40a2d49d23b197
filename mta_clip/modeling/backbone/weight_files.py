"""Reading and loading the ImageNet weight files of the non-CLIP backbones (ViT-S/16, MiT-B4).

Accepted files: a PyTorch state dict (``.pth`` / ``.pt`` / ``.bin``, read with
``torch.load(weights_only=True)``; a ``{"model": ...}`` or ``{"state_dict": ...}`` wrapper and a
``module.`` prefix are removed) or a ``.safetensors`` file. Nothing is downloaded:
``docs/backbones.md`` says where each file comes from and where to put it.
"""

import logging
import os
from typing import Dict, Iterable, Sequence

import torch
from torch import nn

logger = logging.getLogger(__name__)

__all__ = ["read_backbone_weights", "load_backbone_weights"]

_WRAPPERS = ("model", "state_dict", "module")


def read_backbone_weights(path: str, key: str, how_to_get: str) -> Dict[str, torch.Tensor]:
    """The fp32 state dict in ``path`` (config key ``key``); a missing file is an error that names the
    key, the path and ``how_to_get`` (where the file comes from)."""
    path = os.path.expanduser(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"Backbone weights '{path}' ({key}, resolved to {os.path.abspath(path)}) do not exist. "
            f"{how_to_get} See docs/backbones.md; nothing is downloaded at run time. "
            f'Set {key} to "" for random initialization (tests and toy runs only).'
        )
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        raw = load_file(path, device="cpu")
    else:
        try:
            raw = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # unpickling errors have many types; the message says what went wrong
            raise ValueError(
                f"Backbone weights '{path}' ({key}) could not be read as a PyTorch state dict "
                f"(.pth/.pt/.bin) or .safetensors file: {e}"
            ) from e
    for wrapper in _WRAPPERS:
        if isinstance(raw, dict) and isinstance(raw.get(wrapper), dict):
            raw = raw[wrapper]
    if not isinstance(raw, dict) or not any(isinstance(v, torch.Tensor) for v in raw.values()):
        raise ValueError(
            f"Backbone weights '{path}' ({key}): expected a state dict of tensors, got {type(raw).__name__}"
        )
    state_dict = {}
    for name, value in raw.items():
        if not isinstance(value, torch.Tensor):
            continue
        name = name[len("module.") :] if name.startswith("module.") else name
        state_dict[name] = value.float() if value.is_floating_point() else value
    logger.info("Read backbone weights %s (%d tensors)", path, len(state_dict))
    return state_dict


def load_backbone_weights(
    module: nn.Module,
    state_dict: Dict[str, torch.Tensor],
    component: str,
    source: str,
    new_prefixes: Iterable[str] = (),
    ignored_prefixes: Iterable[str] = (),
) -> None:
    """Loads ``state_dict`` into ``module``; every trunk tensor must be in the file.

    Entries under ``ignored_prefixes`` (the classifier of an ImageNet checkpoint) are dropped with an
    info message; missing tensors under ``new_prefixes`` (layers the checkpoint cannot have, e.g. the
    feature pyramid) keep their initialization. Any other missing or unexpected tensor, or a shape
    mismatch, is an error naming them: the file is not the architecture the config describes.
    """
    ignored_prefixes = tuple(ignored_prefixes)
    new_prefixes = tuple(new_prefixes)
    dropped = sorted(k for k in state_dict if ignored_prefixes and k.startswith(ignored_prefixes))
    if dropped:
        logger.info("%s: not using %d classifier tensors of %s: %s", component, len(dropped), source, _short(dropped))
    state_dict = {k: v for k, v in state_dict.items() if not (ignored_prefixes and k.startswith(ignored_prefixes))}
    own = module.state_dict()
    missing = [k for k in own if k not in state_dict and not (new_prefixes and k.startswith(new_prefixes))]
    unexpected = [k for k in state_dict if k not in own]
    wrong = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state_dict.items()
        if k in own and v.shape != own[k].shape
    ]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing tensors ({_short(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected tensors ({_short(unexpected)})")
        if wrong:
            parts.append(f"{len(wrong)} shape mismatches ({_short(wrong, 5)})")
        raise ValueError(
            f"{component}: weights from {source} do not fit the configured architecture: " + "; ".join(parts)
        )
    module.load_state_dict(state_dict, strict=False)
    logger.info("%s: loaded %d tensors from %s", component, len(state_dict), source)


def _short(keys: Sequence[str], limit: int = 12) -> str:
    keys = sorted(keys)
    text = ", ".join(keys[:limit])
    return text + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")
