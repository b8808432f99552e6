"""``vitrina optimize``."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from vitrina.cli._choices import Variant
from vitrina.cli._common import CommaChoices, err, out, print_json, progress_bar


def optimize(
    run_dir: Path = typer.Argument(..., help="Run folder made by `vitrina train`."),
    calib: Path = typer.Option(
        ..., "--calib", help="Folder of your own photos to calibrate int8 on (64 are used)."
    ),
    eval_dir: Path = typer.Option(
        ..., "--eval", help="Labelled class folders (the run's classes) to measure accuracy on."
    ),
    variants: str | None = typer.Option(
        None,
        parser=CommaChoices(Variant),
        metavar=CommaChoices(Variant).metavar,
        help="Comma-separated variants to make (default: int8,pruned, plus bf16 where the "
        "CPU has bf16 matrix units).",
    ),
    prune: float = typer.Option(0.3, help="Fraction of channels the pruned variant removes."),
    finetune_epochs: int = typer.Option(2, help="Epochs of fine-tuning after pruning (0: none)."),
    train_dir: Path | None = typer.Option(
        None, "--train", help="Class folders to fine-tune on (default: the run's training data)."
    ),
    batch_size: int = typer.Option(32, help="Batch size for measuring and fine-tuning."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Make smaller / faster variants of a trained model and measure each against fp32.

    Writes RUN/variants/ (int8.onnx, pruned.onnx, bf16.safetensors, report.json) and prints,
    per variant: size on disk, images/s at batch 32 on this machine, accuracy on --eval and
    top-1 agreement with fp32. Afterwards `--backend int8` / `--backend pruned` use them, and
    `--backend auto` uses int8 when its agreement met the tolerance (>= 99%).

    Example: vitrina optimize runs/shop --calib photos/unsorted --eval photos/labelled
    """
    from vitrina.optimize import optimize_run

    with progress_bar("measuring", None, enabled=not as_json, unit="img/s") as update:
        report = optimize_run(
            run_dir,
            calib=calib,
            eval_dir=eval_dir,
            variants=variants,
            prune=prune,
            finetune_epochs=finetune_epochs,
            train_dir=train_dir,
            batch_size=batch_size,
            on_stage=(lambda s: None) if as_json else (lambda s: err.print(f"[dim]{escape(s)}[/]")),
            on_progress=lambda d, n: update(d, n),
        )
    if as_json:
        print_json(report)
        return
    t = Table(title=f"{run_dir}: variants measured on {report['eval_images']} images")
    for col, justify in (
        ("variant", "left"),
        ("size MB", "right"),
        ("img/s @32", "right"),
        ("speed-up", "right"),
        ("accuracy", "right"),
        ("agrees with fp32", "right"),
        ("status", "left"),
    ):
        t.add_column(col, justify=justify)  # type: ignore[arg-type]
    for name, v in report["variants"].items():
        t.add_row(
            name,
            f"{v['size_bytes'] / 1e6:.1f}",
            f"{v['images_per_s']:.0f}",
            f"{v['speedup']:.2f}x",
            f"{v['accuracy']:.1%}",
            f"{v['top1_agreement']:.1%}",
            escape(v["status"]),
        )
    out.print(t)
    out.print(f"variants and report.json in {Path(run_dir) / 'variants'}")


def register(app: typer.Typer) -> None:
    app.command("optimize")(optimize)
