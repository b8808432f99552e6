"""The ``vitrina`` command. Each command parses, calls one API function, and reports.

Exit codes: 0 done, 1 bad input or user-facing failure (one line, no traceback), 2 usage.
"""

from __future__ import annotations

import sys

import typer

from vitrina.errors import VitrinaError

app = typer.Typer(
    name="vitrina",
    help="Computer vision for people with folders of photos: train a classifier, sort new "
    "photos, inspect datasets. Offline on a CPU, fast on a GPU.\n\n"
    "Start with `vitrina demo`, then `vitrina train --help`. A panel marked (extra: NAME) "
    "needs `pip install 'vitrina\\[NAME]'`; `vitrina\\[all]` installs every extra.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


#: ``vitrina --help`` lists the commands in these panels, in this order: by workflow, the way a
#: user meets them. A command not named here (a new one) is listed under "More".
PANELS: dict[str, tuple[str, ...]] = {
    "Start here": ("demo", "zoo"),
    "Classify photos": ("train", "evaluate", "predict", "sort", "export", "optimize"),
    "Look at the data": ("data", "dedupe"),
    "Embed and search": (
        "embed",
        "index",
        "search",
        "evaluate-retrieval",
        "plot-embeddings",
        "train-embedding",
        "train-autoencoder",
        "evaluate-reid",
    ),
    "Faces (extra: faces)": ("faces",),
    "Explain (extra: explain)": ("explain",),
    "Detect objects (extra: detect)": ("detect",),
    "Serve over HTTP (extra: serve)": ("serve",),
}


def _version(value: bool) -> None:
    if value:
        from vitrina._version import __version__

        print(f"vitrina {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False,
        "--version",
        "-V",
        callback=_version,
        is_eager=True,
        help="Print the version and exit.",
    ),
) -> None:
    """The options of ``vitrina`` itself (the help text is the app's)."""


def _set_panels() -> None:
    """Put every registered command and group in its :data:`PANELS` panel, sorted by it."""
    panel_of = {name: panel for panel, names in PANELS.items() for name in names}
    order = {name: i for i, name in enumerate(panel_of)}

    def name_of(info: typer.models.CommandInfo | typer.models.TyperInfo) -> str:
        if info.name:
            return info.name
        return info.callback.__name__.replace("_", "-") if info.callback else ""

    for infos in (app.registered_commands, app.registered_groups):
        for info in infos:
            info.rich_help_panel = panel_of.get(name_of(info), "More")
        infos.sort(key=lambda i: order.get(name_of(i), len(order)))


_registered = False


def _register() -> None:
    """Add every command to ``app`` (once: ``main`` may be called many times in a process)."""
    global _registered
    if _registered:
        return
    from vitrina.cli import data, demo, evaluate, export, optimize, predict, sort, train, zoo

    app.add_typer(data.app, name="data")
    from vitrina.cli import dedupe, index, search

    app.add_typer(index.app, name="index")
    for mod in (search, dedupe):
        mod.register(app)
    for mod in (train, evaluate, predict, sort, export, optimize, zoo, demo):
        mod.register(app)
    from vitrina.cli import (
        detect,
        embed,
        evaluate_reid,
        evaluate_retrieval,
        explain,
        explain_atlas,
        faces,
        plot_embeddings,
        serve,
        train_autoencoder,
        train_embedding,
    )

    for mod in (
        embed,
        evaluate_retrieval,
        train_embedding,
        train_autoencoder,
        evaluate_reid,
        plot_embeddings,
        faces,
        explain,
        explain_atlas,
        serve,
        detect,
    ):
        mod.register(app)
    _set_panels()
    from vitrina.cli._help import reflow_commands

    reflow_commands(app)  # docstrings' line breaks would break sentences in a terminal
    _registered = True


def main(argv: list[str] | None = None) -> int:
    _register()
    from vitrina.cli._common import INVOKED, bare_ray_flag

    INVOKED[:] = list(sys.argv[1:] if argv is None else argv)  # what --nproc relaunches
    try:
        app(args=bare_ray_flag(sys.argv[1:] if argv is None else argv), standalone_mode=True)
    except SystemExit as e:
        return int(e.code or 0) if not isinstance(e.code, str) else 1
    except VitrinaError as e:
        from rich.markup import escape

        from vitrina.cli._common import err

        err.print(f"[red]error:[/] {escape(str(e))}")
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


def entry() -> None:
    sys.exit(main())
