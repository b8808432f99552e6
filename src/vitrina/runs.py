"""A trained model is a folder (a *run*).

``model.safetensors`` (weights; never pickled) + ``vitrina.json`` (architecture, classes,
preprocessing, weights origin, metrics, thresholds, versions, data fingerprint, the checkpoint's
sha256) + ``metrics.jsonl`` + ``plots/``. Loading verifies the checksum, so a missing or
tampered checkpoint is a clear error, not a silent wrong model.
"""

from __future__ import annotations

import hashlib
import json
import platform
import struct
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vitrina.errors import RunFolderError
from vitrina.io import atomic_write_bytes, atomic_write_text
from vitrina.lazy import is_device, lazy_module
from vitrina.models import WEIGHT_SOURCES, Preprocess

if TYPE_CHECKING:
    import torch

    from vitrina.models import VitrinaModel
else:
    torch = lazy_module("torch")

__all__ = [
    "RUN_FORMAT",
    "DeferredModel",
    "RunInfo",
    "build_model",
    "is_run_dir",
    "load_model",
    "read_run",
    "save_run",
    "versions",
]

RUN_FORMAT = "vitrina-run/1"
RUN_JSON = "vitrina.json"
WEIGHTS_FILE = "model.safetensors"


def versions() -> dict[str, str]:
    import timm
    import torchvision

    from vitrina._version import __version__

    return {
        "vitrina": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "timm": timm.__version__,
        "python": platform.python_version(),
    }


@dataclass
class RunInfo:
    """The contents of ``vitrina.json``."""

    arch: str
    classes: list[str]
    preprocess: Preprocess
    task: str = "classification"
    weights_origin: str = "random"
    metrics: dict[str, Any] = field(default_factory=dict)
    thresholds: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=versions)
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    checkpoint_sha256: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": RUN_FORMAT,
            "task": self.task,
            "arch": self.arch,
            "num_classes": self.num_classes,
            "classes": self.classes,
            "preprocess": self.preprocess.to_dict(),
            "weights_origin": self.weights_origin,
            "checkpoint": {"file": WEIGHTS_FILE, "sha256": self.checkpoint_sha256},
            "metrics": self.metrics,
            "thresholds": self.thresholds,
            "data": self.data,
            "config": self.config,
            "versions": self.versions,
            "created": self.created,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunInfo:
        return cls(
            arch=d["arch"],
            classes=list(d["classes"]),
            preprocess=Preprocess.from_dict(d["preprocess"]),
            task=d.get("task", "classification"),
            weights_origin=d.get("weights_origin", ""),
            metrics=d.get("metrics", {}),
            thresholds=d.get("thresholds", {}),
            data=d.get("data", {}),
            config=d.get("config", {}),
            versions=d.get("versions", {}),
            created=d.get("created", ""),
            checkpoint_sha256=d.get("checkpoint", {}).get("sha256", ""),
        )


def is_run_dir(path: str | Path) -> bool:
    return (Path(path) / RUN_JSON).is_file()


def state_dict_bytes(model: torch.nn.Module) -> bytes:
    """The model's state dict as safetensors bytes. float64 tensors (a model trained with
    ``--precision fp64``) are stored as float32: a run folder holds what every backend reads,
    and inference precision is the backend's choice."""
    # clone() breaks storage sharing, which safetensors refuses.
    tensors = {
        k: v.detach()
        .cpu()
        .to(torch.float32 if v.dtype == torch.float64 else v.dtype)
        .contiguous()
        .clone()
        for k, v in model.state_dict().items()
    }
    from safetensors.torch import save as st_save

    return st_save(tensors)


def save_run(run_dir: str | Path, model: VitrinaModel, info: RunInfo) -> Path:
    """Write weights then metadata, each atomically; the json is written last, so a folder
    with a ``vitrina.json`` always has the checkpoint it describes."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    blob = state_dict_bytes(model)
    info.checkpoint_sha256 = hashlib.sha256(blob).hexdigest()
    atomic_write_bytes(run_dir / WEIGHTS_FILE, blob)
    write_info(run_dir, info)
    return run_dir


def write_info(run_dir: str | Path, info: RunInfo) -> None:
    atomic_write_text(Path(run_dir) / RUN_JSON, json.dumps(info.to_dict(), indent=2) + "\n")


def read_run(run_dir: str | Path) -> RunInfo:
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise RunFolderError(f"{run_dir}: run folder not found")
    meta = run_dir / RUN_JSON
    if not meta.is_file():
        raise RunFolderError(
            f"{run_dir}: not a run folder (no {RUN_JSON}); train one with `vitrina train`"
        )
    try:
        d = json.loads(meta.read_text())
        if d.get("format") != RUN_FORMAT:
            raise RunFolderError(
                f"{meta}: unknown run format {d.get('format')!r} (expected {RUN_FORMAT})"
            )
        return RunInfo.from_dict(d)
    except RunFolderError:
        raise
    except (ValueError, KeyError, TypeError) as e:
        raise RunFolderError(f"{meta}: damaged run metadata ({type(e).__name__}: {e})") from None


def build_model(info: RunInfo) -> VitrinaModel:
    """The run's architecture with random weights (an embedding run gets its neck and head,
    an encoder run loses its classifier, a classic model its recorded feature settings; a
    detection run its detector, from ``config.detector``)."""
    from vitrina.models import create

    if info.task == "detection":
        from vitrina.models.detection import DetectorSpec, create_detector

        try:
            spec = DetectorSpec.from_dict(info.config["detector"])
        except (KeyError, TypeError, ValueError) as e:
            raise RunFolderError(
                f"detection run without a valid config.detector in {RUN_JSON} ({e})"
            ) from None
        return create_detector(spec)  # type: ignore[return-value]
    if info.task == "embedding":
        from vitrina.models.embedding import EmbeddingModel

        emb = info.config.get("embedding", {})
        base = create(info.arch, weights=None)
        return EmbeddingModel(
            base,
            dim=int(emb.get("dim", 0)),
            bnneck=bool(emb.get("bnneck", True)),
            num_classes=info.num_classes,
            local_stripes=int(emb.get("local_stripes", 0)),
            local_dim=int(emb.get("local_dim", 128)),
        )
    if info.task == "encoder":  # an autoencoder's encoder: the backbone, no classifier
        from vitrina.models.autoencoder import as_encoder

        return as_encoder(create(info.arch, weights=None))
    model = create(info.arch, weights=None, num_classes=info.num_classes)
    settings = info.config.get("classic")
    if settings is not None and hasattr(model, "configure"):
        model.configure(settings)  # a classic model: its recorded feature settings
    return model


def load_model(run_dir: str | Path, *, verify: bool = True, deferred: bool = False) -> VitrinaModel:
    """Rebuild the model of a run from safetensors (no unpickling), checksum verified.

    ``deferred``: a :class:`DeferredModel` where the run allows it (a plain PyTorch network):
    the checkpoint is read and verified now, the network built when first needed."""
    run_dir = Path(run_dir)
    info = read_run(run_dir)
    blob = _checkpoint(run_dir, info, verify)
    if deferred and _deferrable(info):
        index = _safetensors_index(blob, run_dir / WEIGHTS_FILE)  # damaged: fails now
        return DeferredModel(run_dir, info, blob, index)  # type: ignore[return-value]
    return _built(run_dir, info, blob)


def _checkpoint(run_dir: Path, info: RunInfo, verify: bool) -> bytes:
    wfile = run_dir / WEIGHTS_FILE
    if not wfile.is_file():
        raise RunFolderError(f"{wfile}: checkpoint missing; the run is incomplete (retrain it)")
    blob = wfile.read_bytes()
    if (
        verify
        and info.checkpoint_sha256
        and hashlib.sha256(blob).hexdigest() != info.checkpoint_sha256
    ):
        raise RunFolderError(
            f"{wfile}: checkpoint does not match the sha256 in {RUN_JSON} (changed or corrupt); "
            "restore it or retrain"
        )
    return blob


def _safetensors_index(blob: bytes, where: Path) -> list[tuple[str, int, int]]:
    """``(name, start, end)`` of every tensor's raw little-endian bytes in a safetensors
    file, by name (the format: an 8-byte header length, a JSON header, the data). Read once
    at load, so a damaged header fails there; :meth:`DeferredModel.weights_items` slices
    the data with it, as :func:`vitrina.engine.onnx.weights_items` gives for the built
    network, without building it."""
    try:
        (n,) = struct.unpack("<Q", blob[:8])
        header = json.loads(blob[8 : 8 + n])
        base = 8 + n
        index = [
            (k, base + int(v["data_offsets"][0]), base + int(v["data_offsets"][1]))
            for k, v in sorted(header.items())
            if k != "__metadata__"
        ]
    except (struct.error, ValueError, KeyError, TypeError, IndexError) as e:
        raise RunFolderError(f"{where}: unreadable checkpoint ({e})") from None
    if any(not base <= a <= b <= len(blob) for _, a, b in index):
        raise RunFolderError(f"{where}: unreadable checkpoint (tensor data past the file's end)")
    return index


class DeferredModel:
    """A run's model that builds its network on first use.

    Building a network imports its library (timm, torchvision: ~1 s before the first photo)
    and allocates its weights. A runtime that reads its own compiled copy (an OpenVINO or
    ONNX file cached by the weights' fingerprint, a run's int8 variant) never needs the
    PyTorch network: ``vitrina sort`` with ``--backend auto`` and a cached decision starts
    without it. Everything a backend asks of the model and this object does not hold itself
    (``classify``, ``parameters``, ``state_dict``...) builds the network once, from the same
    verified checkpoint, and is answered by it; :meth:`materialize` gives the network itself.

    Only runs whose network is plain PyTorch are deferred (:func:`load_model` decides):
    classic models (features from OpenCV) and dlib's face descriptor carry refusals that a
    backend reads before running, so they are built at once.
    """

    # What backends read before running, known for every deferrable run (see _deferrable).
    export_refusal = None
    reduced_precision_refusal = None
    onnx_single_image = None  # a detector's; detection runs are built at once
    nonfinite_reason = None

    def __init__(
        self, run_dir: Path, info: RunInfo, blob: bytes, index: list[tuple[str, int, int]]
    ) -> None:
        d = self.__dict__  # no __setattr__ forwarding while setting up
        d["arch"] = info.arch
        d["class_names"] = list(info.classes)
        d["preprocess"] = info.preprocess
        d["weights_origin"] = f"run:{run_dir.resolve()}"
        d["_run_dir"], d["_info"], d["_blob"], d["_index"] = run_dir, info, blob, index
        d["_net"], d["_device"], d["_training"] = None, None, False
        d["_lock"] = threading.Lock()

    @property
    def built(self) -> bool:
        """Whether the PyTorch network exists yet."""
        return self._net is not None

    def weights_items(self) -> list[tuple[str, memoryview]] | None:
        """The weights as ``(name, bytes)`` by name, views of the checkpoint read at load;
        ``None`` once the network is built (it may have changed since: ask the network)."""
        if self._net is not None:
            return None
        data = memoryview(self._blob)
        return [(k, data[a:b]) for k, a, b in self._index]

    def materialize(self) -> VitrinaModel:
        """The PyTorch network (built on the first call, then the same object)."""
        with self._lock:
            if self._net is None:
                model = _built(self._run_dir, self._info, self._blob)
                model.class_names = list(self.class_names or [])
                model.preprocess = self.preprocess
                model.train(self._training)
                if self._device is not None:
                    model = model.to(self._device)
                self.__dict__["_net"] = model
                self.__dict__["_blob"] = b""  # the network holds the weights now
            return self._net

    # nn.Module's chaining calls keep the deferral until something needs the network
    def eval(self) -> Any:
        return self.train(False)

    def train(self, mode: bool = True) -> Any:
        if self._net is not None:
            return self._net.train(mode)
        self.__dict__["_training"] = bool(mode)
        return self

    def to(self, *args: Any, **kwargs: Any) -> Any:
        if self._net is not None:
            return self._net.to(*args, **kwargs)
        device = kwargs.get("device", args[0] if args else None)
        if (
            kwargs.get("memory_format") is not None
            or len(args) > 1
            or (device is not None and not isinstance(device, str) and not is_device(device))
        ):
            return self.materialize().to(*args, **kwargs)
        if device is not None:  # a name or a device: given to the network's .to() when built
            self.__dict__["_device"] = device
        return self

    @property
    def training(self) -> bool:
        return self._net.training if self._net is not None else self._training

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("_net", "_lock"):
            raise AttributeError(name)
        return getattr(self.materialize(), name)

    def __setattr__(self, name: str, value: Any) -> None:
        if self._net is not None:
            setattr(self._net, name, value)
        self.__dict__[name] = value

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.materialize()(*args, **kwargs)

    def __deepcopy__(self, memo: dict[int, Any]) -> Any:
        import copy

        return copy.deepcopy(self.materialize(), memo)

    def __reduce_ex__(self, protocol: Any) -> Any:  # pickled (Ray, processes): the network
        return self.materialize().__reduce_ex__(protocol)

    def __repr__(self) -> str:
        state = "built" if self._net is not None else "not built yet"
        return f"DeferredModel({self.arch!r}, {self._run_dir}, {state})"


def _deferrable(info: RunInfo) -> bool:
    return (
        info.task in ("classification", "embedding")
        and "classic" not in info.config
        and info.arch not in _BUILT_AT_ONCE
    )


#: Runs whose network carries a refusal a backend reads before running (see DeferredModel).
_BUILT_AT_ONCE = frozenset({"dlib_face_resnet"})


def _built(run_dir: Path, info: RunInfo, blob: bytes) -> VitrinaModel:
    from safetensors.torch import load as st_load

    wfile = run_dir / WEIGHTS_FILE
    try:
        state = st_load(blob)
    except Exception as e:  # safetensors raises its own error types for bad headers
        raise RunFolderError(f"{wfile}: unreadable checkpoint ({e})") from None
    model = build_model(info)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise RunFolderError(
            f"{wfile}: does not fit architecture {info.arch!r} ({first})"
        ) from None
    model.class_names = list(info.classes)
    model.preprocess = info.preprocess
    model.weights_origin = f"run:{run_dir.resolve()}"
    model.eval()
    return model


def __getattr__(name: str) -> Any:
    # ``vitrina.create`` is :func:`vitrina.models.create` with run folders as weights: it is
    # read from here, so that this module has registered the "run" source first.
    if name == "create":
        from vitrina.models import create

        return create
    raise AttributeError(f"module 'vitrina.runs' has no attribute {name!r}")


# ``create(arch, weights=RUN_DIR)`` loads through this module: models sits below the run
# folder and never imports it (see vitrina.models.registry.WEIGHT_SOURCES).
WEIGHT_SOURCES.register("run")(load_model)
