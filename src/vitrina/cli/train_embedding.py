"""``vitrina train-embedding``."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from vitrina.cli._choices import (
    Distance,
    EmbeddingAugment,
    Miner,
    Precision,
    Sampler,
    Trainable,
)
from vitrina.cli._common import (
    DEVICE_HELP,
    INVOKED,
    NPROC_HELP,
    config_from_options,
    input_size_option,
    print_json,
)
from vitrina.cli._common import out as console

#: Options of the command that are not fields of
#: :class:`vitrina.training.embedding.EmbeddingConfig`; every other option is the field of the
#: same name (tests/test_cli_contract.py checks names, defaults and choices against it).
CLI_ONLY = ("resume", "as_json", "nproc")


def train_embedding(
    ctx: typer.Context,
    data_dir: Path = typer.Argument(
        ...,
        help="Identities: one sub-folder of images per person/product, or a Market-1501 folder "
        "(bounding_box_train/, bounding_box_test/, query/).",
    ),
    arch: str = typer.Option("efficientnet_lite0", help="Backbone (any `vitrina zoo` name)."),
    weights: str | None = typer.Option(
        "imagenet", help="Starting weights: imagenet, none, a weights file, or a run folder."
    ),
    loss: str = typer.Option(
        "auto",
        help="auto: arcface for aligned face chips (a folder written by `vitrina faces "
        "chips`), softmax+triplet-batch-hard otherwise; or a loss or a weighted sum, e.g. "
        "arcface, triplet+0.5*center. Names: "
        "softmax, triplet, triplet-batch-hard, triplet-batch-all, triplet-semi-hard, "
        "contrastive, quadruplet, center, cosface, arcface; with --sampler pairs: "
        "siamese-contrastive, siamese-binary.",
    ),
    miner: Miner = typer.Option("none", help="Pair/triplet mining for triplet and contrastive."),
    distance: Distance = typer.Option("euclidean", help="Distance of the metric losses."),
    margin: float | None = typer.Option(None, help="Margin of triplet/contrastive/quadruplet."),
    dim: int = typer.Option(0, help="Embedding size (0: the backbone's feature width)."),
    bnneck: bool = typer.Option(
        True, "--bnneck/--no-bnneck", help="Batch-norm neck between metric and identity losses."
    ),
    p: int | None = typer.Option(
        None, "--p", help="Identities per batch (P of P×K; default 8, fewer if fewer exist)."
    ),
    k: int = typer.Option(4, "--k", help="Images per identity in a batch (K of P×K)."),
    sampler: Sampler = typer.Option(
        "pk",
        help="pk: P identities x K images per batch; pairs: balanced same/different Siamese "
        "pairs (P*K/2 per batch) for the siamese-* losses.",
    ),
    epochs: int | None = typer.Option(
        None,
        help="Epochs (one epoch ≈ every training image once). Default: 40 when the loss has "
        "an ArcFace term (it learns slowly), else 20.",
    ),
    lr: float = typer.Option(3e-4, help="Learning rate of the backbone (AdamW, cosine decay)."),
    head_lr_mult: float = typer.Option(
        10.0, help="The neck and the loss weights learn this many times faster."
    ),
    weight_decay: float = typer.Option(5e-4, help="AdamW weight decay."),
    freeze_backbone: bool = typer.Option(
        False,
        "--freeze-backbone",
        help="Train only the neck and the loss weights (= --trainable neck).",
    ),
    trainable: Trainable = typer.Option(
        "auto",
        help="How much of the backbone trains: neck (frozen backbone), last (its last "
        "stage), all; auto: by the number of training identities and photos (last below "
        "1,000 people or 20,000 photos, else all), stated in the run.",
    ),
    layer_decay: float = typer.Option(
        1.0, help="Below 1: each trained backbone stage learns this many times as fast as the next."
    ),
    input_size: str | None = input_size_option(
        "of the crops, 256x128 for people (default: the model's; fixed-size networks such as "
        "lenet5 take only their own)."
    ),
    augment: EmbeddingAugment = typer.Option(
        "reid",
        help="reid: flip, pad-crop, random erasing; camera: reid + another camera's light, resolution, JPEG and framing; or a classifier's augmentation.",
    ),
    precision: Precision = typer.Option(
        "fp32",
        help="fp64, fp32, bf16 (autocast) or auto: bf16 where it measures faster on this machine "
        "(AMX CPUs, bf16 GPUs; the measurement is saved as RUN/precision.json).",
    ),
    val_fraction: float = typer.Option(
        0.2, help="Share of identities held out to pick the best epoch and calibrate thresholds."
    ),
    val_dir: Path | None = typer.Option(
        None,
        help="Another folder of identities (another camera, another day): its mAP picks the "
        "epoch, and with --trainable auto the recipe (neck, last and all each train: 3x the time).",
    ),
    local_stripes: int = typer.Option(
        0,
        help="AlignedReID: learn this many horizontal stripe features beside the global "
        "vector (e.g. 8), matched by the shortest path at test time (0: off).",
    ),
    local_dim: int = typer.Option(128, help="Channels of each local stripe feature."),
    mutual: bool = typer.Option(
        False,
        "--mutual",
        help="AlignedReID's mutual learning: two networks teach each other (2x time).",
    ),
    target_far: float = typer.Option(
        0.01, help="False-accept rate the stored verification threshold is set for."
    ),
    patience: int = typer.Option(0, help="Stop after this many epochs without a better mAP."),
    seed: int = typer.Option(0, help="Seed for the split, init and sampling."),
    out: Path | None = typer.Option(None, "--out", help="Run folder to create."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out."),
    num_workers: int | None = typer.Option(None, "--workers", help="Image decoding processes."),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    nproc: int = typer.Option(0, "--nproc", min=0, help=NPROC_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Train an embedding where the same identity lands close and different ones far.

    Batches hold P identities × K images. The best epoch is chosen by retrieval mAP on
    held-out identities (or on --val-dir), which also calibrate the verification threshold
    stored in the run. The run reports the starting weights' mAP on the same identities and
    says plainly when training did not beat them. The run folder works with `vitrina embed`,
    `index`, `search` and `evaluate-reid`.

    Examples:

      vitrina train-embedding people/ --loss softmax+triplet-batch-hard --input-size 256x128

      vitrina train-embedding staff-chips/   (from `vitrina faces chips`: ArcFace, chosen for faces)

      vitrina train-embedding market/ --loss triplet --miner semi-hard --distance cosine

      vitrina train-embedding people-market/ --local-stripes 8 --input-size 256x128

      vitrina train-embedding chips/ --val-dir other-camera-chips/
    """
    from vitrina.training.embedding import EmbeddingConfig
    from vitrina.training.embedding import train_embedding as run

    cfg = config_from_options(EmbeddingConfig, ctx.params, cli_only=CLI_ONLY)
    if nproc:
        from vitrina.training.distributed import launch, strip_nproc

        launch(strip_nproc(INVOKED), nproc)  # rank 0 prints the result
        return
    res = run(cfg, resume=resume, progress=not as_json)
    if res.rank:  # under torchrun: rank 0 reports
        return
    if as_json:
        print_json(
            {
                "run_dir": str(res.run_dir),
                "identities": res.identities,
                "metrics": res.metrics,
                "dropped_singletons": res.dropped_singletons,
                "unreadable": res.bad_files,
                "start": res.start,
                "trainable": res.trainable,
                "verdict": res.verdict,
                "beat_start": res.beat_start,
                "recipes": res.recipes,
            }
        )
        return
    m = res.metrics
    if res.dropped_singletons:
        console.print(f"{res.dropped_singletons} identities with a single image were skipped")
    if res.trainable:
        console.print(f"trainable: {res.trainable['choice']} ({escape(res.trainable['reason'])})")
    if m.get("loss"):
        console.print(f"loss: {escape(m['loss']['choice'])} ({escape(m['loss']['reason'])})")
    if "val_mAP" in m:
        line = (
            f"best epoch {res.best_epoch}: held-out identities mAP {m['val_mAP']:.3f}, "
            f"rank-1 {m['val_rank1']:.3f}"
        )
        if "val_mAP_combined" in m:
            line += f" (local {m['val_mAP_local']:.3f}, combined {m['val_mAP_combined']:.3f})"
        if "valdir_mAP" in m:
            line += f"; --val-dir mAP {m['valdir_mAP']:.3f}"
        console.print(line)
    else:
        console.print(f"trained {m.get('epochs_run')} epochs (no held-out identities: last kept)")
    for r, figs in res.recipes.items():
        console.print(
            f"  recipe {r}: val-dir mAP {figs.get('valdir_mAP', float('nan')):.3f}, held-out "
            f"mAP {figs.get('val_mAP', float('nan')):.3f} (epoch {figs.get('best_epoch')})"
        )
    for line in res.verdict:
        console.print(("[bold red]" if "did NOT" in line else "") + escape(line), highlight=False)
    if res.bad_files:
        console.print(f"{len(res.bad_files)} unreadable images were skipped")
    console.print(f"run folder: {res.run_dir}")
    console.print(f"next: vitrina evaluate-reid {res.run_dir} DATA  ·  vitrina index build ...")


def register(app: typer.Typer) -> None:
    app.command("train-embedding")(train_embedding)
