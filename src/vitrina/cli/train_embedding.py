"""``vitrina train-embedding``."""

from __future__ import annotations

from pathlib import Path

import typer

from vitrina.cli._choices import Distance, EmbeddingAugment, Miner, Precision, Sampler
from vitrina.cli._common import DEVICE_HELP, config_from_options, parse_size, print_json
from vitrina.cli._common import out as console

#: Options of the command that are not fields of
#: :class:`vitrina.training.embedding.EmbeddingConfig`; every other option is the field of the
#: same name (tests/test_cli_contract.py checks names, defaults and choices against it).
CLI_ONLY = ("resume", "as_json")


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
        "softmax+triplet-batch-hard",
        help="A loss or a weighted sum, e.g. arcface, triplet+0.5*center. Names: "
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
    epochs: int = typer.Option(20, help="Epochs (one epoch ≈ every training image once)."),
    lr: float = typer.Option(3e-4, help="Learning rate of the backbone (AdamW, cosine decay)."),
    head_lr_mult: float = typer.Option(
        10.0, help="The neck and the loss weights learn this many times faster."
    ),
    weight_decay: float = typer.Option(5e-4, help="AdamW weight decay."),
    freeze_backbone: bool = typer.Option(
        False, "--freeze-backbone", help="Train only the neck and the loss weights."
    ),
    input_size: str | None = typer.Option(
        None,
        parser=parse_size,
        metavar="HxW",
        help="HEIGHTxWIDTH of the crops, e.g. 256x128 for people (default: the model's).",
    ),
    augment: EmbeddingAugment = typer.Option(
        "reid", help="reid: flip, pad-crop, random erasing; or a classifier's augmentation."
    ),
    precision: Precision = typer.Option("fp32", help="fp64, fp32 or bf16 (autocast)."),
    val_fraction: float = typer.Option(
        0.2, help="Share of identities held out to pick the best epoch and calibrate thresholds."
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
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Train an embedding where the same identity lands close and different ones far.

    Batches hold P identities × K images. The best epoch is chosen by retrieval mAP on
    held-out identities, which also calibrate the verification threshold stored in the run.
    The run folder works with `vitrina embed`, `index`, `search` and `evaluate-reid`.

    Examples:

      vitrina train-embedding people/ --loss softmax+triplet-batch-hard --input-size 256x128

      vitrina train-embedding faces/ --loss arcface --dim 256 --epochs 30

      vitrina train-embedding market/ --loss triplet --miner semi-hard --distance cosine
    """
    from vitrina.training.embedding import EmbeddingConfig
    from vitrina.training.embedding import train_embedding as run

    cfg = config_from_options(EmbeddingConfig, ctx.params, cli_only=CLI_ONLY)
    res = run(cfg, resume=resume, progress=not as_json)
    if as_json:
        print_json(
            {
                "run_dir": str(res.run_dir),
                "identities": res.identities,
                "metrics": res.metrics,
                "dropped_singletons": res.dropped_singletons,
                "unreadable": res.bad_files,
            }
        )
        return
    m = res.metrics
    if res.dropped_singletons:
        console.print(f"{res.dropped_singletons} identities with a single image were skipped")
    if "val_mAP" in m:
        console.print(
            f"best epoch {res.best_epoch}: held-out identities mAP {m['val_mAP']:.3f}, "
            f"rank-1 {m['val_rank1']:.3f}"
        )
    else:
        console.print(f"trained {m.get('epochs_run')} epochs (no held-out identities: last kept)")
    if res.bad_files:
        console.print(f"{len(res.bad_files)} unreadable images were skipped")
    console.print(f"run folder: {res.run_dir}")
    console.print(f"next: vitrina evaluate-reid {res.run_dir} DATA  ·  vitrina index build ...")


def register(app: typer.Typer) -> None:
    app.command("train-embedding")(train_embedding)
