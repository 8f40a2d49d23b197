"""Reading OpenAI's CLIP weight files: the one place shared by the image backbones and the
prompt text encoder.

Accepted files (``MODEL.CLIP.WEIGHTS``):

- OpenAI's released TorchScript archives ``RN50.pt``, ``RN101.pt``, ``ViT-B-16.pt`` (most weights
  stored in fp16); read with ``torch.jit.load(f).state_dict()`` and cast to fp32.
- A plain state dict with OpenAI's key names (``visual.*``, ``transformer.*``,
  ``token_embedding.weight``, ``positional_embedding``, ``ln_final.*``, ``text_projection``,
  ``logit_scale``), optionally wrapped as ``{"state_dict": ...}`` and/or prefixed ``module.``.

The architecture (:class:`CLIPArch`) is read from the tensor shapes, as OpenAI's loader does:
attention heads are ``width // 64`` everywhere, so widths must be multiples of 64 (ResNet: the
stage-5 width ``32 * width``). Nothing is downloaded unless the caller asks for it explicitly.
"""

import contextlib
import logging
import os
import shutil
import tempfile
import warnings
import zipfile
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

__all__ = [
    "OFFICIAL_CLIP_FILES",
    "CLIPArch",
    "read_clip_weights",
    "clip_weights_and_arch",
    "download_official_clip",
    "sub_state_dict",
    "resize_grid_pos_embed",
    "image_size_pair",
    "load_clip_weights",
    "clip_weights_read_once",
]

# Architecture name -> OpenAI's released file name.
OFFICIAL_CLIP_FILES: Dict[str, str] = {"RN50": "RN50.pt", "RN101": "RN101.pt", "ViT-B-16": "ViT-B-16.pt"}

CUSTOM_PREFIX = "custom:"  # MODEL.CLIP.MODEL_NAME of a non-official CLIP: "custom:" + JSON of its CLIPArch
HEAD_WIDTH = 64  # OpenAI CLIP: every attention head is 64 channels wide
_META_KEYS = ("input_resolution", "context_length", "vocab_size")  # non-weight entries of old files
_TEXT_KEYS = ("token_embedding.weight", "positional_embedding", "ln_final.weight", "text_projection")


def _official_files_text() -> str:
    return ", ".join(OFFICIAL_CLIP_FILES.values())


def _official_url_text(model_name: str) -> str:
    """ "; <file> is at <url>" for an official architecture name (open_clip's registry, no network), else ""."""
    if model_name not in OFFICIAL_CLIP_FILES:
        return ""
    from open_clip import get_pretrained_url

    url = get_pretrained_url(model_name, "openai")
    return f"; {OFFICIAL_CLIP_FILES[model_name]} is at {url}" if url else ""


@dataclass(frozen=True)
class CLIPArch:
    """Shapes of one CLIP model (both towers).

    ``vision_layers`` is a 4-tuple of blocks per stage for the modified ResNets, an int (number of
    transformer blocks) for ViTs. ``vision_image_size`` is the pretraining resolution (224).
    """

    embed_dim: int
    vision_layers: Union[Tuple[int, int, int, int], int]
    vision_width: int
    vision_patch_size: Optional[int]
    vision_image_size: int
    context_length: int
    vocab_size: int
    text_width: int
    text_heads: int
    text_layers: int

    @property
    def is_vit(self) -> bool:
        return self.vision_patch_size is not None

    @property
    def vision_heads(self) -> int:
        """Heads of the ViT blocks, or of the ResNet attention pool (on ``32 * width`` channels)."""
        channels = self.vision_width if self.is_vit else self.vision_width * 32
        return max(1, channels // HEAD_WIDTH)

    @property
    def official_name(self) -> Optional[str]:
        """The official architecture name this matches ("RN50", ...), or None for custom shapes."""
        for name in OFFICIAL_CLIP_FILES:
            if CLIPArch.from_official(name) == self:
                return name
        return None

    def open_clip_kwargs(self) -> dict:
        """Keyword arguments of ``open_clip.CLIP`` (QuickGELU, as OpenAI's models were trained)."""
        vision_cfg = dict(
            layers=self.vision_layers,
            width=self.vision_width,
            head_width=HEAD_WIDTH,
            patch_size=self.vision_patch_size,
            image_size=self.vision_image_size,
        )
        return dict(embed_dim=self.embed_dim, vision_cfg=vision_cfg, text_cfg=self.text_tower_kwargs(), quick_gelu=True)

    def text_tower_kwargs(self) -> dict:
        """Shape arguments of open_clip's text tower (``text_cfg`` / ``TextTransformer``)."""
        return dict(
            context_length=self.context_length,
            vocab_size=self.vocab_size,
            width=self.text_width,
            heads=self.text_heads,
            layers=self.text_layers,
        )

    def model_name(self) -> str:
        """``MODEL.CLIP.MODEL_NAME`` that rebuilds these shapes without a file: the official name, or
        ``"custom:{json}"`` (written into model files, so a custom CLIP is rebuilt from them alone)."""
        import json
        from dataclasses import asdict

        official = self.official_name
        if official is not None:
            return official
        fields = asdict(self)
        if isinstance(fields["vision_layers"], tuple):
            fields["vision_layers"] = list(fields["vision_layers"])
        return CUSTOM_PREFIX + json.dumps(fields, sort_keys=True)

    @classmethod
    def from_official(cls, name: str) -> "CLIPArch":
        """Shapes of an official model, from open_clip's bundled config (no download), or of a
        ``"custom:{json}"`` name (see ``model_name``)."""
        if name.startswith(CUSTOM_PREFIX):
            import json

            try:
                fields = json.loads(name[len(CUSTOM_PREFIX) :])
                if isinstance(fields.get("vision_layers"), list):
                    fields["vision_layers"] = tuple(fields["vision_layers"])
                return cls(**fields)
            except (ValueError, TypeError) as e:
                raise ValueError(f"MODEL.CLIP.MODEL_NAME {name!r} is not a valid custom CLIP: {e}") from None
        if name not in OFFICIAL_CLIP_FILES:
            raise ValueError(
                f"Unknown CLIP model name '{name}' (MODEL.CLIP.MODEL_NAME); expected one of {list(OFFICIAL_CLIP_FILES)}"
            )
        from open_clip import get_model_config

        cfg = get_model_config(name + "-quickgelu")
        vis, txt = cfg["vision_cfg"], cfg["text_cfg"]
        layers = vis["layers"]
        return cls(
            embed_dim=int(cfg["embed_dim"]),
            vision_layers=tuple(layers) if isinstance(layers, (list, tuple)) else int(layers),
            vision_width=int(vis["width"]),
            vision_patch_size=vis.get("patch_size") if not isinstance(layers, (list, tuple)) else None,
            vision_image_size=int(vis["image_size"]),
            context_length=int(txt["context_length"]),
            vocab_size=int(txt["vocab_size"]),
            text_width=int(txt["width"]),
            text_heads=int(txt["heads"]),
            text_layers=int(txt["layers"]),
        )

    @classmethod
    def from_state_dict(cls, state_dict: Dict[str, torch.Tensor], source: str = "state dict") -> "CLIPArch":
        """Infers the shapes from OpenAI-named weights; raises naming ``source`` if keys lack."""
        missing = [k for k in _TEXT_KEYS + ("visual.conv1.weight",) if k not in state_dict]
        is_vit = "visual.proj" in state_dict
        if not is_vit and "visual.layer1.0.conv1.weight" not in state_dict:
            missing.append("visual.proj or visual.layer1.0.conv1.weight")
        if missing:
            raise ValueError(
                f"{source} is not a full CLIP weights file with OpenAI's key names: missing {missing}. "
                f"Expected OpenAI's {_official_files_text()} (or a state dict with the same keys)."
            )

        def count(prefix: str) -> int:
            return len({k[len(prefix) :].split(".")[0] for k in state_dict if k.startswith(prefix)})

        if is_vit:
            conv1 = state_dict["visual.conv1.weight"]
            layers: Union[Tuple[int, ...], int] = count("visual.transformer.resblocks.")
            width, patch = int(conv1.shape[0]), int(conv1.shape[-1])
            grid = _square_grid(state_dict["visual.positional_embedding"].shape[0] - 1, source)
            image_size = grid * patch
        else:
            layers = tuple(count(f"visual.layer{i}.") for i in (1, 2, 3, 4))
            width, patch = int(state_dict["visual.layer1.0.conv1.weight"].shape[0]), None
            pool_pos = state_dict.get("visual.attnpool.positional_embedding")
            image_size = 32 * _square_grid(pool_pos.shape[0] - 1, source) if pool_pos is not None else 224
        text_width = int(state_dict["ln_final.weight"].shape[0])
        return cls(
            embed_dim=int(state_dict["text_projection"].shape[1]),
            vision_layers=layers,
            vision_width=width,
            vision_patch_size=patch,
            vision_image_size=int(image_size),
            context_length=int(state_dict["positional_embedding"].shape[0]),
            vocab_size=int(state_dict["token_embedding.weight"].shape[0]),
            text_width=text_width,
            text_heads=max(1, text_width // HEAD_WIDTH),
            text_layers=count("transformer.resblocks."),
        )


def _square_grid(n: int, source: str) -> int:
    side = int(round(n**0.5))
    if side * side != n:
        raise ValueError(f"{source}: positional embedding grid of {n} cells is not square")
    return side


def _is_torchscript_archive(path: str) -> bool:
    """TorchScript archives are zip files with ``<name>/constants.pkl`` and ``<name>/code/``."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
    return any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names)


def _read_raw(path: str) -> Dict[str, object]:
    try:
        if _is_torchscript_archive(path):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch.jit.* deprecation notices
                return dict(torch.jit.load(path, map_location="cpu").state_dict())
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # any reader failure (corrupt zip, pickle, truncated file) -> one clear error
        raise ValueError(
            f"Cannot read CLIP weights file '{path}' ({type(e).__name__}: {e}). Expected OpenAI's "
            f"TorchScript archive ({_official_files_text()}) or a plain state dict with the same keys."
        ) from e
    if not isinstance(obj, dict):
        raise ValueError(f"CLIP weights file '{path}' holds a {type(obj).__name__}, expected a state dict")
    return obj


def _normalize_state_dict(obj: Dict[str, object], path: str) -> Dict[str, torch.Tensor]:
    """Unwraps ``{"state_dict": ...}``, strips ``module.``, drops non-tensors, casts floats to fp32."""
    if "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor) and k not in _META_KEYS}
    if tensors and all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module.") :]: v for k, v in tensors.items()}
    if not tensors:
        raise ValueError(f"CLIP weights file '{path}' contains no tensors")
    return {k: (v.float() if v.is_floating_point() else v) for k, v in tensors.items()}


def download_official_clip(model_name: str, path: str) -> str:
    """Downloads OpenAI's file for ``model_name`` to ``path`` (explicit opt-in only).

    ``path``'s file name must be the official one (e.g. ``pretrained/RN50.pt``). The file is
    fetched into a temporary folder next to it (checksum verified by open_clip) and then moved.
    """
    if model_name not in OFFICIAL_CLIP_FILES:
        raise ValueError(f"Cannot download CLIP model '{model_name}': expected one of {list(OFFICIAL_CLIP_FILES)}")
    if os.path.basename(path) != OFFICIAL_CLIP_FILES[model_name]:
        raise ValueError(
            f"Downloading {model_name} needs MODEL.CLIP.WEIGHTS to end in "
            f"'{OFFICIAL_CLIP_FILES[model_name]}', got '{path}'"
        )
    from open_clip import download_pretrained_from_url, get_pretrained_url

    url = get_pretrained_url(model_name, "openai")
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".clip_download_", dir=folder)
    try:
        logger.info("Downloading %s to %s (MODEL.CLIP.DOWNLOAD is True)", url, path)
        fetched = download_pretrained_from_url(url, cache_dir=tmp)
        os.replace(fetched, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def read_clip_weights(
    path: str, model_name: str = "", allow_download: bool = False
) -> Tuple[Dict[str, torch.Tensor], CLIPArch]:
    """Reads a CLIP weights file into ``(fp32 state dict with OpenAI's keys, CLIPArch)``.

    ``model_name`` (optional) is checked against the file's shapes: a different official model is
    a warning. A missing file is an error naming the path and the official file names, unless
    ``allow_download`` is set (then OpenAI's file for ``model_name`` is fetched to ``path``).
    """
    path = os.path.expanduser(path)
    if not os.path.isfile(path):
        if allow_download and model_name:
            download_official_clip(model_name, path)
        else:
            raise FileNotFoundError(
                f"CLIP weights file '{path}' (MODEL.CLIP.WEIGHTS, resolved to {os.path.abspath(path)}) does not "
                f"exist. Place OpenAI's released file there ({_official_files_text()}, e.g. under pretrained/)"
                f"{_official_url_text(model_name)}; docs/clip.md lists them. Nothing is downloaded unless "
                f"MODEL.CLIP.DOWNLOAD is True."
            )
    state_dict = _normalize_state_dict(_read_raw(path), path)
    arch = CLIPArch.from_state_dict(state_dict, f"CLIP weights file '{path}'")
    found = arch.official_name
    if model_name and found != model_name:
        if found is not None:
            logger.warning(
                "MODEL.CLIP.MODEL_NAME is %s but %s holds %s weights; using the file's architecture",
                model_name,
                path,
                found,
            )
        else:
            logger.info("%s holds a custom CLIP architecture (not %s): %s", path, model_name, arch)
    logger.info("Read CLIP weights %s (%d tensors, %s)", path, len(state_dict), found or "custom")
    return state_dict, arch


# Set inside ``clip_weights_read_once()``: weights already read in this block, by file and model name.
_READ_IN_THIS_BUILD: ContextVar[Optional[Dict[tuple, tuple]]] = ContextVar("clip_weights_read_once", default=None)


@contextlib.contextmanager
def clip_weights_read_once():
    """Within this block (one model build), :func:`clip_weights_and_arch` reads each CLIP file once
    and gives every caller (CLIP backbone, text encoder) the same state dict; it is dropped at the end.
    Callers must not modify the returned tensors in place."""
    token = _READ_IN_THIS_BUILD.set({}) if _READ_IN_THIS_BUILD.get() is None else None
    try:
        yield
    finally:
        if token is not None:
            _READ_IN_THIS_BUILD.reset(token)


def clip_weights_and_arch(
    weights_file: str, model_name: str, allow_download: bool = False, user: str = "CLIP"
) -> Tuple[Optional[Dict[str, torch.Tensor]], CLIPArch]:
    """``(state dict, arch)`` for the config keys; an empty ``weights_file`` means random weights
    with ``model_name``'s official shapes (logged as a warning naming ``user``)."""
    if not weights_file and model_name.startswith(CUSTOM_PREFIX):
        logger.info("%s: custom CLIP shapes from MODEL.CLIP.MODEL_NAME, weights to be loaded from a model file", user)
        return None, CLIPArch.from_official(model_name)
    if not weights_file:
        logger.warning(
            "MODEL.CLIP.WEIGHTS is empty: %s is randomly initialized with the %s architecture. "
            "Set it to OpenAI's %s for the paper's setting.",
            user,
            model_name,
            OFFICIAL_CLIP_FILES.get(model_name, _official_files_text()),
        )
        return None, CLIPArch.from_official(model_name)
    read = _READ_IN_THIS_BUILD.get()
    if read is None:
        return read_clip_weights(weights_file, model_name, allow_download)
    key = (os.path.abspath(os.path.expanduser(weights_file)), model_name)
    if key not in read:
        read[key] = read_clip_weights(weights_file, model_name, allow_download)
    else:
        logger.info("%s: using the CLIP weights already read from %s", user, weights_file)
    return read[key]


def sub_state_dict(state_dict: Dict[str, torch.Tensor], prefix: str) -> Dict[str, torch.Tensor]:
    """Entries under ``prefix`` (e.g. ``"visual."``) with the prefix removed."""
    return {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}


def image_size_pair(size) -> Tuple[int, int]:
    """(H, W) from an int or a 1- / 2-element sequence (MODEL.CLIP.IMAGE_SIZE)."""
    if isinstance(size, int):
        return size, size
    size = [int(s) for s in size]
    if len(size) not in (1, 2) or min(size) <= 0:
        raise ValueError(f"image size {size} (MODEL.CLIP.IMAGE_SIZE): expected [H, W] of positive ints")
    return size[0], size[-1]


def resize_grid_pos_embed(
    pos: torch.Tensor,
    old_grid: Sequence[int],
    new_grid: Sequence[int],
    mode: str = "bicubic",
    antialias: bool = False,
) -> torch.Tensor:
    """Resizes a ``(1 + gh*gw, C)`` positional embedding to ``(1 + nh*nw, C)``.

    Row 0 (class token / pooled token) is kept; the grid rows, laid out row-major, are resized
    with ``mode`` interpolation ("bicubic" or "bilinear", ``align_corners=False``). Returns ``pos``
    itself when the grids match. ``antialias=True`` is timm's resize (PyTorch's anti-aliased bicubic:
    another cubic kernel, so it differs from the default even when upsampling).
    """
    if mode not in ("bicubic", "bilinear"):
        raise ValueError(f"positional embedding interpolation must be 'bicubic' or 'bilinear', got {mode!r}")
    gh, gw = int(old_grid[0]), int(old_grid[1])
    if pos.dim() != 2 or pos.shape[0] != 1 + gh * gw:
        raise ValueError(f"positional embedding of shape {tuple(pos.shape)} does not match a {gh}x{gw} grid")
    nh, nw = new_grid[0], new_grid[1]
    if not any(isinstance(n, torch.SymInt) for n in (nh, nw)):
        nh, nw = int(nh), int(nw)
        if (gh, gw) == (nh, nw):
            return pos
    # symbolic sizes (torch.export): no int() and no size comparison, which would fix the image size;
    # an interpolation to the same size gives back its input exactly (weights 1 and 0)
    channels = pos.shape[1]
    grid = pos[1:].reshape(1, gh, gw, channels).permute(0, 3, 1, 2)
    grid = F.interpolate(grid.float(), size=(nh, nw), mode=mode, align_corners=False, antialias=antialias)
    grid = grid.permute(0, 2, 3, 1).reshape(nh * nw, channels).to(pos.dtype)
    return torch.cat([pos[:1], grid], dim=0)


def load_clip_weights(
    module: nn.Module,
    state_dict: Dict[str, torch.Tensor],
    component: str,
    source: str,
    new_prefixes: Iterable[str] = (),
) -> Tuple[List[str], List[str]]:
    """Loads ``state_dict`` into ``module`` (non-strict) and reports what did not match.

    Missing keys under ``new_prefixes`` (layers CLIP does not have) are logged at info level, other
    missing keys and unexpected keys as warnings. Returns ``(missing, unexpected)``.
    """
    try:
        result = module.load_state_dict(state_dict, strict=False)
    except RuntimeError as e:
        raise ValueError(f"{component}: weights from {source} do not fit the model: {e}") from e
    new_prefixes = tuple(new_prefixes)
    new = [k for k in result.missing_keys if new_prefixes and k.startswith(new_prefixes)]
    missing = [k for k in result.missing_keys if k not in new]
    if new:
        logger.info("%s: %d tensors not in CLIP, newly initialized: %s", component, len(new), _short(new))
    if missing:
        logger.warning("%s: %d tensors missing in %s: %s", component, len(missing), source, _short(missing))
    if result.unexpected_keys:
        logger.warning(
            "%s: %d unexpected tensors in %s: %s",
            component,
            len(result.unexpected_keys),
            source,
            _short(result.unexpected_keys),
        )
    logger.info("%s: loaded %d tensors from %s", component, len(state_dict) - len(result.unexpected_keys), source)
    return list(result.missing_keys), list(result.unexpected_keys)


def _short(keys: Sequence[str], limit: int = 20) -> str:
    keys = sorted(keys)
    text = ", ".join(keys[:limit])
    return text + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")
