"""``vitrina optimize``."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from vitrina.cli._choices import Variant
from vitrina.cli._common import CommaChoices, err, out, print_json, progress_bar


def optimize(
    run_dir: Path = typer.Argument(
        ..., help="Run folder made by `vitrina train` or `train-embedding`."
    ),
    calib: Path = typer.Option(
        ..., "--calib", help="Folder of your own photos to calibrate int8 on (64 are used)."
    ),
    eval_dir: Path | None = typer.Option(
        None,
        "--eval",
        help="What to judge the variants by: labelled class folders (the run's classes) for a "
        "classifier; for an embedding run, identity folders of people it was not trained on "
        "(default: the identities the run held out).",
    ),
    variants: str | None = typer.Option(
        None,
        parser=CommaChoices(Variant),
        metavar=CommaChoices(Variant).metavar,
        help="Comma-separated variants to make (default: int8, openvino-int8 where OpenVINO "
        "is installed, pruned, plus bf16 where the CPU has bf16 matrix units).",
    ),
    prune_flops: float | None = typer.Option(
        None,
        help="Fraction of the FLOPs the pruned variant removes (0.5: half; the default when "
        "no --prune-latency is given).",
    ),
    prune_latency: float | None = typer.Option(
        None,
        help="Instead: fraction of the time per batch to remove, measured on this machine "
        "(ONNX Runtime, batch --batch-size).",
    ),
    sparsify_epochs: int = typer.Option(
        0,
        help="Epochs of MorphNet's FLOP-weighted sparsity training before channels are chosen "
        "(0: choose by each channel's Fisher information per FLOP, no training).",
    ),
    finetune_epochs: int = typer.Option(
        6, help="Epochs of distillation from the full model after removal (0: none)."
    ),
    distill_features: float = typer.Option(
        4.0,
        help="Weight of matching the full model's features between stages while the pruned "
        "variant is distilled, besides its answers (0: the answers only).",
    ),
    prune_max_drop: float | None = typer.Option(
        None,
        metavar="POINTS",
        help="Accuracy budget for the pruned variant, in points (mAP x 100 for an embedding "
        "run): it is judged on --eval and on relit, shifted and rescaled copies of it, and "
        "built again removing a tenth less (0.5, 0.4, ... 0.1) while the worst drop exceeds "
        "the budget. Each try costs a build.",
    ),
    train_dir: Path | None = typer.Option(
        None,
        "--train",
        help="Photos to fine-tune the pruned model on, no labels needed (default: the run's "
        "training photos).",
    ),
    batch_size: int = typer.Option(32, help="Batch size for measuring and fine-tuning."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Make smaller / faster variants of a trained model, each measured against fp32.

    Writes RUN/variants/ (int8.onnx, openvino-int8.xml, pruned.onnx,
    pruned-embed.onnx, pruned-widths.png, bf16.safetensors, report.json, and
    variants.png: size, speed and accuracy side by side) and prints, per
    variant: size on disk, GFLOPs and parameters, images/s at batch 32 on this
    machine, and accuracy on --eval with top-1 agreement with fp32 (an
    embedding run: retrieval mAP and rank-1 on held-out identities,
    nearest-neighbour agreement with fp32).

    The pruned variant: the channels whose loss (Fisher information) per FLOP
    is least are removed until the target is met (with --sparsify-epochs,
    MorphNet's FLOP-weighted sparsity fine-tune chooses first), the layers
    that read them are re-fitted by least squares to answer what the full
    model's layers answer, and the result is distilled from the full model on
    your photos (no labels needed). Afterwards `--backend int8` / `--backend
    openvino-int8` / `--backend pruned` use the variants, and `--backend auto`
    uses int8 when its agreement met the tolerance (>= 99%).

    With --prune-max-drop the pruned variant removes as much as the budget
    allows instead: built at the target, judged against fp32 on --eval and on
    relit, shifted and rescaled copies of it, and built again removing a tenth
    less while the worst drop is over the budget. The tries are printed and
    kept in report.json.

    Example: vitrina optimize runs/shop --calib photos/unsorted --eval photos/labelled --prune-flops 0.5

    Example: vitrina optimize runs/shop --calib photos/unsorted --eval photos/labelled --variants pruned --prune-max-drop 1
    """
    from vitrina.optimize import optimize_run

    with progress_bar("measuring", None, enabled=not as_json, unit="img/s") as update:
        report = optimize_run(
            run_dir,
            calib=calib,
            eval_dir=eval_dir,
            variants=variants,
            prune_flops=prune_flops,
            prune_latency=prune_latency,
            sparsify_epochs=sparsify_epochs,
            finetune_epochs=finetune_epochs,
            distill_features=distill_features,
            prune_max_drop=prune_max_drop,
            train_dir=train_dir,
            batch_size=batch_size,
            on_stage=(lambda s: None) if as_json else (lambda s: err.print(f"[dim]{escape(s)}[/]")),
            on_progress=lambda d, n: update(d, n),
        )
    if as_json:
        print_json(report)
        return
    embedding = report.get("task") == "embedding"
    t = Table(title=f"{run_dir}: variants measured on {report['eval_images']} images")
    judged = ("mAP", "rank-1", "same neighbour") if embedding else ("accuracy", "agrees with fp32")
    for col in ("variant", "size MB", "GFLOPs", "params M", "img/s @32", "speed-up", *judged):
        t.add_column(col, justify="left" if col == "variant" else "right")
    t.add_column("status")
    for name, v in report["variants"].items():
        scores = (
            (f"{v['mAP']:.3f}", f"{v['rank1']:.1%}", f"{v['top1_agreement']:.1%}")
            if embedding
            else (f"{v['accuracy']:.1%}", f"{v['top1_agreement']:.1%}")
        )
        t.add_row(
            name,
            f"{v['size_bytes'] / 1e6:.1f}",
            f"{v['gflops']:.3f}",
            f"{v['params'] / 1e6:.2f}",
            f"{v['images_per_s']:.0f}",
            f"{v['speedup']:.2f}x",
            *scores,
            escape(v["status"]),
        )
    out.print(t)
    pruned = report["variants"].get("pruned")
    if pruned:
        n = pruned["notes"]
        out.print(
            f"pruned: {n['flops_ratio']:.0%} of the FLOPs, "
            f"{n['speedup_vs_fp32_onnx']:.2f}x the full model on the same runtime (ONNX Runtime); "
            f"widths per layer: {n['widths_plot']}"
        )
        search = n.get("budget_search")
        if search:
            for j in search["tried"]:
                out.print(f"  {escape(j['summary'])}")
            if not search["held"]:
                out.print(
                    f"[yellow]no pruning target down to {search['removed']:.0%} kept every "
                    f"drop within {search['max_drop']:g} points: the variant kept is the "
                    f"last one tried[/]"
                )
    out.print(f"variants and report.json in {Path(run_dir) / 'variants'}")
    out.print(f"size, speed and accuracy as a picture: {escape(report['plot'])}")


def register(app: typer.Typer) -> None:
    app.command("optimize")(optimize)
