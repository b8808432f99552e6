"""``vitrina train``."""

from __future__ import annotations

from pathlib import Path

import typer

from vitrina.cli._choices import Augment, Mode, Optimizer, Precision
from vitrina.cli._common import DEVICE_HELP, INVOKED, NPROC_HELP, config_from_options, print_json
from vitrina.cli._common import out as console

#: Options of the command that are not fields of :class:`vitrina.training.TrainConfig`;
#: every other option is the field of the same name (tests/test_cli_contract.py checks
#: names, defaults and choices against the dataclass).
CLI_ONLY = ("resume", "as_json", "nproc")


def train(
    ctx: typer.Context,
    data_dir: Path = typer.Argument(..., help="Folder with one sub-folder of images per class."),
    arch: str = typer.Option(
        "efficientnet_lite0", help="Architecture name (see vitrina.list_models)."
    ),
    weights: str | None = typer.Option(
        None,
        help="Starting weights: imagenet (default for probe/finetune), a weights file, or a run "
        "folder. Not used with --mode scratch.",
    ),
    mode: Mode = typer.Option(
        "finetune",
        help="scratch: all weights from random init; probe: train only the head on frozen "
        "features; finetune: train everything from pretrained weights.",
    ),
    epochs: int | None = typer.Option(
        None, help="Epochs (default: 30 scratch/probe, 10 finetune)."
    ),
    batch_size: int = typer.Option(32, help="Images per step."),
    lr: float | None = typer.Option(None, help="Learning rate (default by optimizer and mode)."),
    optimizer: Optimizer | None = typer.Option(
        None,
        help="Default: full-batch lbfgs for --mode probe with --augment none, the classic "
        "linear probe; adamw otherwise.",
    ),
    weight_decay: float | None = typer.Option(
        None, help="L2 / weight decay (default: 1e-2 with lbfgs, 1e-4 otherwise)."
    ),
    augment: Augment | None = typer.Option(
        None, help="Training augmentation (default: none for probe, light otherwise)."
    ),
    precision: Precision = typer.Option(
        "fp32",
        help="fp64, fp32, bf16 (autocast) or auto: bf16 where it measures faster on this machine "
        "(AMX CPUs, bf16 GPUs; the measurement is saved as RUN/precision.json). "
        "The run stores fp32 weights.",
    ),
    seed: int = typer.Option(0, help="Seed for the split, init and shuffling."),
    out: Path | None = typer.Option(
        None, "--out", help="Run folder to create (default runs/<data>-<arch>-<mode>)."
    ),
    val_dir: Path | None = typer.Option(
        None, help="Validation class-folder tree (default: a seeded 20% split)."
    ),
    val_fraction: float = typer.Option(0.2, help="Share of each class held out for validation."),
    patience: int = typer.Option(
        10, help="Stop after this many epochs without a better validation score (0: never)."
    ),
    resume: bool = typer.Option(
        False, "--resume", help="Continue the run in --out from its last epoch."
    ),
    num_workers: int | None = typer.Option(
        None, "--workers", help="Image decoding processes (default: one per spare core)."
    ),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    nproc: int = typer.Option(0, "--nproc", min=0, help=NPROC_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Train or fine-tune a classifier on a folder of labelled photos.

    Classes are the sub-folders of DATA_DIR. The result is a run folder: model.safetensors,
    vitrina.json, metrics.jsonl and plots/ (curves.png, confusion.png).

    Examples:

      vitrina train photos/ --arch efficientnet_lite0 --weights imagenet --mode probe

      vitrina train digits/ --arch lenet5 --mode scratch --epochs 20
    """
    from vitrina.training import TrainConfig, train_classifier

    cfg = config_from_options(TrainConfig, ctx.params, cli_only=CLI_ONLY)
    if nproc:
        from vitrina.training.distributed import launch, strip_nproc

        launch(strip_nproc(INVOKED), nproc)  # rank 0 prints the result
        return
    res = train_classifier(cfg, resume=resume, progress=not as_json)
    if res.rank:  # under torchrun: rank 0 reports
        return
    if as_json:
        print_json(
            {
                "run_dir": str(res.run_dir),
                "classes": res.classes,
                "metrics": res.metrics,
                "unreadable": res.bad_files,
            }
        )
        return
    m = res.metrics
    acc = m.get("val_accuracy")
    console.print(
        f"best epoch {res.best_epoch}: "
        + (
            f"validation accuracy {acc:.3f}"
            if acc is not None
            else f"train accuracy {m.get('train_accuracy', 0):.3f}"
        )
    )
    if res.bad_files:
        console.print(f"{len(res.bad_files)} unreadable images were skipped (listed above)")
    console.print(f"run folder: {res.run_dir}  (plots in {res.run_dir / 'plots'})")
    console.print(f"next: vitrina sort NEW_PHOTOS --model {res.run_dir} --out sorted")


def register(app: typer.Typer) -> None:
    app.command("train")(train)
