"""``vitrina train-autoencoder``."""

from __future__ import annotations

from pathlib import Path

import typer

from vitrina.cli._choices import Augment, Precision
from vitrina.cli._common import DEVICE_HELP, config_from_options, input_size_option, print_json
from vitrina.cli._common import out as console

#: Options of the command that are not fields of
#: :class:`vitrina.training.autoencoder.AutoencoderConfig`; every other option is the field of
#: the same name (tests/test_cli_contract.py checks names, defaults and choices against it).
CLI_ONLY = ("resume", "as_json")


def train_autoencoder(
    ctx: typer.Context,
    data_dir: Path = typer.Argument(
        ..., help="Folder of photos (sub-folders included); no labels needed."
    ),
    arch: str = typer.Option("resnet18", help="Encoder: any `vitrina zoo` name."),
    weights: str | None = typer.Option(
        None,
        help="Encoder start: none (learn without labels from scratch), imagenet, a weights "
        "file or a run folder.",
    ),
    input_size: str | None = input_size_option(
        "the photos are resized and center-cropped to (default: the encoder's; 64x64 trains "
        "a ResNet-18 in minutes on a CPU; fixed-size networks such as lenet5 take only their "
        "own)."
    ),
    width: int = typer.Option(128, help="Channels of the decoder's first 4x4 map."),
    epochs: int = typer.Option(30, help="Epochs (each photo once per epoch)."),
    batch_size: int = typer.Option(32, help="Photos per step."),
    lr: float = typer.Option(1e-3, help="AdamW learning rate (cosine decay)."),
    weight_decay: float = typer.Option(1e-4, help="AdamW weight decay."),
    augment: Augment = typer.Option("light", help="Augmentation of the inputs (and targets)."),
    precision: Precision = typer.Option(
        "fp32",
        help="fp64, fp32, bf16 (autocast) or auto: bf16 where it measures faster on this machine "
        "(AMX CPUs, bf16 GPUs; the measurement is saved as RUN/precision.json).",
    ),
    val_fraction: float = typer.Option(
        0.1, help="Share of photos held out to pick the best epoch and to draw."
    ),
    patience: int = typer.Option(
        0, help="Stop after this many epochs without a lower held-out error (0: never)."
    ),
    seed: int = typer.Option(0, help="Seed for the split, init and shuffling."),
    out: Path | None = typer.Option(None, "--out", help="Run folder to create."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out."),
    num_workers: int | None = typer.Option(None, "--workers", help="Image decoding processes."),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Learn features without labels: a convolutional autoencoder on a folder of photos.

    Any zoo backbone is the encoder; a decoder learns to rebuild each photo from the
    encoder's embedding. The run folder holds the encoder: use it with `vitrina embed`,
    `index` and `search`, or fine-tune it with few labels (`vitrina train PHOTOS --arch
    ARCH --weights RUN`). plots/reconstructions/ shows held-out photos and their
    reconstructions after every epoch.

    Examples:

      vitrina train-autoencoder photos/ --arch resnet18 --input-size 64x64 --epochs 30

      vitrina train labelled/ --arch resnet18 --weights runs/photos-resnet18-autoencoder --mode probe

    One process: under torchrun it stops with one line (vitrina train and train-embedding
    train on several processes).
    """
    from vitrina.training.autoencoder import AutoencoderConfig
    from vitrina.training.autoencoder import train_autoencoder as run

    cfg = config_from_options(AutoencoderConfig, ctx.params, cli_only=CLI_ONLY)
    res = run(cfg, resume=resume, progress=not as_json)
    if as_json:
        print_json(
            {
                "run_dir": str(res.run_dir),
                "photos": res.photos,
                "metrics": res.metrics,
                "unreadable": res.bad_files,
            }
        )
        return
    m = res.metrics
    err = m.get("val_loss", m.get("train_loss"))
    where = "held-out" if "val_loss" in m else "training"
    console.print(f"best epoch {res.best_epoch}: {where} reconstruction error (MSE) {err:.4f}")
    if res.bad_files:
        console.print(f"{len(res.bad_files)} unreadable images were skipped")
    console.print(f"run folder: {res.run_dir}  (reconstructions in {res.run_dir / 'plots'})")
    console.print(
        f"next: vitrina index build PHOTOS --model {res.run_dir} --out index  ·  "
        f"vitrina train LABELLED --arch {cfg.arch} --weights {res.run_dir} --mode probe"
    )


def register(app: typer.Typer) -> None:
    app.command("train-autoencoder")(train_autoencoder)
