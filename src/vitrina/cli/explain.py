"""``vitrina explain ...``: what the network looks at, and what its neurons respond to."""

from __future__ import annotations

from pathlib import Path

import click
import typer
from rich.markup import escape
from typer.core import TyperGroup

from vitrina.cli._choices import ExplainMethod, FeatureParam
from vitrina.cli._common import err, out, progress_bar


class _ImageByDefault(TyperGroup):
    """``vitrina explain MODEL IMAGE...`` runs the ``image`` command; ``layers``, ``neuron``
    and ``dream`` are subcommands."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = ["image", *args]
        return super().parse_args(ctx, args)


app = typer.Typer(
    cls=_ImageByDefault,
    help="What the network looks at, and what its neurons respond to.\n\n"
    "vitrina explain MODEL IMAGE... --method gradcam --method occlusion  (heat maps + HTML page)\n\n"
    "vitrina explain layers MODEL IMAGE   (first-layer filters, feature maps layer by layer)\n\n"
    "vitrina explain neuron MODEL --layer L --channel C   (an image that excites a channel)\n\n"
    "vitrina explain dream IMAGE --layer L   (DeepDream)\n\n"
    "MODEL is a run folder or a zoo name (ImageNet weights).",
    no_args_is_help=True,
)


@app.command("image", hidden=True)
def image(
    model: str = typer.Argument(..., help="Run folder or zoo name."),
    images: list[Path] = typer.Argument(..., help="Photos or folders of photos."),
    method: list[ExplainMethod] = typer.Option(
        ["gradcam"],
        "--method",
        "-m",
        help="Repeatable, or `all`: gradcam, gradcam++, scorecam, eigencam, layercam are CAMs; "
        "saliency, smoothgrad, integrated-gradients, guided-backprop, occlusion attribute "
        "by gradients or masking.",
    ),
    target: str | None = typer.Option(
        None, help="Class to explain (name or index); default: the predicted one."
    ),
    layer: str | None = typer.Option(
        None, help="Layer of the CAMs (default: the last convolutional feature map)."
    ),
    out_dir: Path = typer.Option(Path("explain"), "--out", "-o", help="Output folder."),
    seed: int = typer.Option(0, help="Seed of SmoothGrad's noise."),
) -> None:
    """Heat maps of what made the model answer, one overlay PNG per photo and method, and
    `index.html` comparing the methods side by side with the model's top-3."""
    from vitrina.explain.folder import explain_photos

    with progress_bar("explaining", None, unit="photos/s") as update:
        res = explain_photos(
            model,
            images,
            out_dir,
            [m.value for m in method],
            target=target,
            layer=layer,
            seed=seed,
            on_progress=update,
        )
    for error in res.unreadable:
        err.print(f"[yellow]skipped[/] {escape(error)}")
    out.print(
        f"{res.explained} photos x {len(res.methods)} methods -> {escape(str(res.overlays))}/"
    )
    out.print(f"open {escape(str(res.page))}")


@app.command("layers")
def layers(
    model: str = typer.Argument(..., help="Run folder or zoo name."),
    photo: Path = typer.Argument(..., help="One photo."),
    layer: list[str] = typer.Option(
        None, "--layer", "-l", help="Layers to show (repeatable; default: one per stage)."
    ),
    top: int = typer.Option(8, help="Strongest channels shown per layer."),
    out_dir: Path = typer.Option(Path("explain-layers"), "--out", "-o", help="Output folder."),
) -> None:
    """First-layer filters as a grid, and the strongest feature maps of layers from early
    (edges, colours) to late (parts of objects) for one photo."""
    from vitrina.explain.files import write_layers

    files = write_layers(model, photo, out_dir, layers=layer or None, top=top)
    out.print("wrote " + ", ".join(escape(str(p)) for p in files.values()))


@app.command("neuron")
def neuron(
    model: str = typer.Argument(..., help="Run folder or zoo name."),
    layer: str | None = typer.Option(None, "--layer", "-l", help="Layer (see --list-layers)."),
    channel: int | None = typer.Option(None, "--channel", "-c", help="Channel of the layer."),
    class_name: str | None = typer.Option(
        None, "--class", help="Maximise this class's logit instead of a channel."
    ),
    steps: int = typer.Option(256, help="Optimisation steps."),
    size: int | None = typer.Option(None, help="Image side in pixels."),
    param: FeatureParam = typer.Option(
        "fourier", help="fourier (decorrelated, readable) or pixel (the plain baseline)."
    ),
    seed: int = typer.Option(0, help="Seed: the same seed gives the same image."),
    out_path: Path = typer.Option(Path("neuron.png"), "--out", "-o", help="PNG to write."),
    list_layers: bool = typer.Option(False, "--list-layers", help="List the layer names."),
) -> None:
    """Synthesise an image that excites a channel (or a class), with jitter, scale and
    rotation robustness and a decorrelated Fourier parameterisation (Olah et al., 2017)."""
    if list_layers:
        from vitrina.embed import list_layers as layer_names

        out.print("\n".join(layer_names(model)))
        return
    from vitrina.explain.files import write_neuron

    with progress_bar("optimising", steps, unit=None) as update:
        res = write_neuron(
            model,
            out_path,
            layer=layer,
            channel=channel,
            target=class_name,
            steps=steps,
            size=size,
            seed=seed,
            param=param,
            on_progress=lambda done, total: update(done),
        )
    what = (
        f"class {class_name}"
        if res.class_index is not None
        else f"{res.layer} channel {res.channel}"
        if res.channel is not None
        else f"{res.layer} (all channels)"
    )
    curve = res.objective_curve
    gain = f", objective {curve[0]:.3g} -> {curve[-1]:.3g}" if curve else ""
    out.print(f"wrote {escape(str(out_path))} ({escape(what)}{gain})")


@app.command("dream")
def dream(
    photo: Path = typer.Argument(..., help="The photo to dream on."),
    layer: str = typer.Option(..., "--layer", "-l", help="Layer whose activations to amplify."),
    model: str = typer.Option("efficientnet_lite0", "--model", help="Run folder or zoo name."),
    octaves: int = typer.Option(4, help="Image pyramid levels."),
    octave_scale: float = typer.Option(1.4, help="Scale between octaves."),
    steps: int = typer.Option(20, help="Gradient steps per octave."),
    seed: int = typer.Option(0, help="Seed of the jitter."),
    out_path: Path = typer.Option(Path("dream.png"), "--out", "-o", help="PNG to write."),
) -> None:
    """DeepDream: amplify what a layer sees in a photo, over octaves (seeded)."""
    from vitrina.explain.files import write_dream

    with progress_bar("dreaming", octaves * steps, unit=None) as update:
        write_dream(
            model,
            photo,
            out_path,
            layer=layer,
            octaves=octaves,
            octave_scale=octave_scale,
            steps=steps,
            seed=seed,
            on_progress=lambda done, total_now: update(done, total_now),
        )
    out.print(f"wrote {escape(str(out_path))}")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="explain")
