"""Resume points: model, optimizer and scheduler state in safetensors + JSON (no pickle)."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from vitrina.errors import RunFolderError
from vitrina.io import atomic_write_bytes, atomic_write_text
from vitrina.report import plot_curves

__all__ = ["best_metrics", "load_resume_point", "resume_saver", "save_resume_point"]

CKPT_DIR = "checkpoint"
PLOTS_DIR, CURVES_FILE = "plots", "curves.png"  # redrawn after every epoch


def _split_optimizer(sd: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, Any] = {"param_groups": sd["param_groups"], "state": {}}
    for pid, pstate in sd["state"].items():
        plain["state"][str(pid)] = {}
        for key, value in pstate.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{pid}.{key}"] = value.detach().cpu().contiguous().clone()
            elif isinstance(value, list | tuple) and all(
                isinstance(v, torch.Tensor) for v in value
            ):
                # L-BFGS keeps lists of tensors (its curvature history)
                for i, v in enumerate(value):
                    tensors[f"optimlist.{pid}.{key}.{i}"] = v.detach().cpu().contiguous().clone()
                plain["state"][str(pid)][key] = {"__tensor_list__": len(value)}
            else:
                plain["state"][str(pid)][key] = value
    return tensors, plain


def _join_optimizer(tensors: dict[str, torch.Tensor], plain: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {int(k): dict(v) for k, v in plain["state"].items()}
    for pid, pstate in state.items():
        for key, value in list(pstate.items()):
            if isinstance(value, dict) and "__tensor_list__" in value:
                pstate[key] = [
                    tensors[f"optimlist.{pid}.{key}.{i}"] for i in range(value["__tensor_list__"])
                ]
    for name, t in tensors.items():
        if name.startswith("optim."):
            _, pid, key = name.split(".", 2)
            state.setdefault(int(pid), {})[key] = t
    return {"param_groups": plain["param_groups"], "state": state}


def save_resume_point(
    run_dir: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    meta: dict[str, Any],
) -> None:
    folder = Path(run_dir) / CKPT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {
        f"model.{k}": v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()
    }
    opt_tensors, opt_plain = _split_optimizer(optimizer.state_dict())
    tensors.update(opt_tensors)
    tensors["rng.torch"] = torch.get_rng_state()
    atomic_write_bytes(folder / "last.safetensors", st_save(tensors))
    doc = {
        **meta,
        "optimizer": opt_plain,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
    }
    atomic_write_text(folder / "state.json", json.dumps(doc, indent=1, default=float))


def load_resume_point(
    run_dir: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
) -> dict[str, Any]:
    folder = Path(run_dir) / CKPT_DIR
    try:
        doc = json.loads((folder / "state.json").read_text())
        tensors = st_load((folder / "last.safetensors").read_bytes())
    except FileNotFoundError:
        raise RunFolderError(
            f"{run_dir}: nothing to resume (no {CKPT_DIR}/ from an earlier run)"
        ) from None
    except Exception as e:
        raise RunFolderError(f"{folder}: damaged resume point ({e})") from None
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    optimizer.load_state_dict(_join_optimizer(tensors, doc["optimizer"]))
    if scheduler is not None and doc.get("scheduler"):
        scheduler.load_state_dict(doc["scheduler"])
    if "rng.torch" in tensors:
        torch.set_rng_state(tensors["rng.torch"])
    return doc


def best_metrics(record: dict[str, Any]) -> dict[str, Any]:
    """The metrics a run folder records for its best epoch: the epoch's record as
    ``best_epoch`` plus its figures (the loop's own ``best`` flag left out)."""
    return {"best_epoch": record["epoch"], **{k: v for k, v in record.items() if k != "best"}}


def resume_saver(
    run_dir: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    *,
    curves: Callable[[Sequence[dict[str, Any]], Path], Path] | None = None,
) -> Any:
    """The training loop's ``on_resume`` callback: after every epoch a resume point, and
    ``RUN/plots/curves.png`` redrawn from the history so far (``curves``: the trainer's own
    drawing, :func:`vitrina.report.plot_curves` by default), so the curves can be watched
    while the run trains. The picture is written to a temporary name and renamed: a viewer
    reloading it never sees half a file. A picture that cannot be drawn is a warning, once;
    it never stops the training."""
    draw = curves or plot_curves
    warned = False

    def save(state: Any) -> None:
        nonlocal warned
        save_resume_point(
            run_dir, model, optimizer, scheduler, {"epoch": state.epoch, "history": state.history}
        )
        try:
            draw(state.history, Path(run_dir) / PLOTS_DIR / CURVES_FILE)
        except Exception as e:  # a picture must not end hours of training
            if not warned:
                warnings.warn(f"{run_dir}: could not draw the live curves: {e}", stacklevel=2)
                warned = True

    return save
