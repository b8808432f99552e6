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
    "Start with `vitrina demo`, then `vitrina train --help`.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


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
    _registered = True


def main(argv: list[str] | None = None) -> int:
    _register()
    from vitrina.cli._common import INVOKED

    INVOKED[:] = list(sys.argv[1:] if argv is None else argv)  # what --nproc relaunches
    try:
        app(args=argv, standalone_mode=True)
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
