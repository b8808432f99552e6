"""``vitrina demo``."""

from __future__ import annotations

from pathlib import Path

import typer

from vitrina.cli._common import out, progress_bar


def demo(
    out_dir: Path = typer.Option(
        Path("vitrina-demo"), "--out", help="Folder for the demo's files."
    ),
    epochs: int = typer.Option(30, help="Training epochs."),
    seed: int = typer.Option(0, help="Seed."),
) -> None:
    """Train LeNet-5 on scikit-learn's handwritten digits and sort the held-out ones.

    Needs nothing but the install; about a minute on two cores.
    """
    from vitrina.demo import run_demo

    out.print("writing scikit-learn's 1,797 handwritten digits as PNG files, training LeNet-5...")
    with progress_bar("sorting held-out digits", None) as update:
        r = run_demo(out_dir, epochs=epochs, seed=seed, on_sort_progress=lambda d, n: update(d, n))
    out.print(
        f"\nheld-out accuracy: [bold]{r.accuracy:.1%}[/] on {r.n_heldout} digits the model never saw"
    )
    out.print(
        f"sorted into {r.sorted_dir}/0 .. 9; {r.n_unsure} uncertain digits in {r.sorted_dir}/unsure "
        f"(accuracy of the rest: {r.sure_accuracy:.1%})"
    )
    out.print(f"run folder: {r.run_dir} (plots: {r.run_dir}/plots/curves.png, confusion.png)")
    out.print(f"took {r.seconds:.0f} s\n\ntry next:")
    out.print(f"  vitrina evaluate {r.run_dir} {r.workdir}/digits/labelled")
    out.print(f"  vitrina predict {r.run_dir} {r.workdir}/digits/new/photo-0000.png")
    out.print(f"  vitrina data inspect {r.workdir}/digits/labelled")
    out.print("  vitrina train PHOTOS --arch efficientnet_lite0 --weights imagenet --mode probe")


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
