"""What every command shares: consoles, progress bars, option types, JSON output."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, get_args

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)

err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False, soft_wrap=True)

BACKEND_HELP = (
    "Inference backend: auto (measured: the fastest that keeps accuracy), eager (fp32), "
    "fp64, bf16, onnx, openvino, openvino-bf16, int8 and openvino-int8 (after `vitrina optimize`), "
    "pruned."
)
DEVICE_HELP = "Where to run: auto (GPU if present), cpu, cuda, cuda:1..."
NPROC_HELP = (
    "Train on N processes of this machine (torchrun's DDP: gloo on CPUs, nccl on GPUs, one GPU "
    "each); rank 0 writes the run. The same command runs under `torchrun --nproc-per-node N -m "
    "vitrina ...` (several machines: torchrun --nnodes). 0: one process."
)

#: The arguments ``vitrina`` was called with (``main`` sets them): ``--nproc`` relaunches them.
INVOKED: list[str] = []

RAY_HELP = (
    "Run on Ray Data: plain --ray starts Ray on this machine for the run; --ray ADDRESS "
    "(auto, HOST:PORT, ray://HOST:PORT) joins a running cluster. Results go to OUT.ray-shards/ "
    "first, so a killed run resumes. Needs the scale extra: pip install 'vitrina\\[scale]'."
)
RAY_PANEL = "More than one machine"


def ray_option() -> Any:
    """``--ray [ADDRESS]``: the one definition every batch command shares (a bare ``--ray``
    is turned into ``--ray=local`` by :func:`bare_ray_flag` before parsing)."""
    return typer.Option(
        None, "--ray", metavar="[ADDRESS]", help=RAY_HELP, rich_help_panel=RAY_PANEL
    )


def ray_workers_option() -> Any:
    return typer.Option(
        None,
        "--ray-workers",
        min=1,
        help="Actors (engines) in the Ray pool; default one per CPU of the cluster.",
        rich_help_panel=RAY_PANEL,
    )


def ray_options(address: str | None, workers: int | None) -> Any:
    """The API's ``RayOptions`` for ``--ray`` / ``--ray-workers`` (``None``: no Ray)."""
    if address is None:
        if workers is not None:
            raise typer.BadParameter("--ray-workers needs --ray", param_hint="--ray-workers")
        return None
    from vitrina.scale import RayOptions

    return RayOptions(address=address, workers=workers)


def bare_ray_flag(args: list[str]) -> list[str]:
    """``--ray`` with no address (last, or followed by another option) means ``--ray=local``:
    click options take a value or none, never either, so the command line is read here."""
    out = list(args)
    for i, a in enumerate(out):
        if a == "--":
            break
        if a == "--ray" and (i + 1 == len(out) or out[i + 1].startswith("-")):
            out[i] = "--ray=local"
    return out


def flip_option() -> Any:
    """``--flip`` of ``detect evaluate``, ``detect predict`` and ``serve``."""
    return typer.Option(
        False,
        "--flip",
        help="Also look at each photo mirrored left-right and fuse the two answers "
        "(test-time augmentation: twice the work, usually a few points more mAP; trained "
        "runs only).",
    )


def parse_scales(text: str) -> tuple[float, ...]:
    """``0.85,1,1.3`` -> ``(0.85, 1.0, 1.3)``; else exit 2 (read by :func:`scales_option`)."""
    try:
        scales = tuple(float(v) for v in str(text).split(",") if v.strip())
    except ValueError:
        scales = ()
    if not scales:  # the range is checked where the sizes are made (detect.sized_views)
        raise typer.BadParameter(
            f"{text!r}: expected sizes relative to the run's input, e.g. 0.85,1,1.3"
        ) from None
    return scales


def scales_option() -> Any:
    """``--scales`` of ``detect evaluate``, ``detect predict`` and ``serve``."""
    return typer.Option(
        "1",
        "--scales",
        parser=parse_scales,
        metavar="S1,S2,...",
        help="Also look at each photo at these multiples of the run's input size and fuse the "
        "answers (test-time augmentation: 0.85,1,1.3 is about 3.4x the work and helps where "
        "objects are smaller or larger than in training; trained runs only).",
    )


def report_option(what: str) -> Any:
    """``--report OUT.html``, the same for every command that can show what it did as a page."""
    return typer.Option(
        None,
        "--report",
        dir_okay=False,
        help=f"Also write OUT.html: {what}; one self-contained file (thumbnails embedded, "
        "nothing fetched) that opens offline and can be mailed.",
    )


def sheet_option(what: str) -> Any:
    """``--sheet PATH.png``: a contact sheet, the same for every command that draws one."""
    return typer.Option(
        None, "--sheet", dir_okay=False, help=f"Also write a PNG contact sheet: {what}."
    )


def pictures_dir_option(what: str) -> Any:
    """``--out DIR``: the folder a command draws its pictures into."""
    return typer.Option(
        None,
        "--out",
        "-o",
        file_okay=False,
        help=f"Also draw {what} into this folder, with an index.html that shows them all.",
    )


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


@contextmanager
def progress_bar(
    description: str, total: int | None, *, enabled: bool = True, unit: str | None = "img/s"
) -> Iterator[Any]:
    """Yield ``update(done, total=None)``; draws a bar on stderr (nothing when disabled).

    ``unit`` labels the rate column (``None``: no rate, for steps of very unequal cost)."""
    if not enabled:
        yield lambda done, total=None: None
        return
    if not err.is_terminal:  # logs and pipes get a line every few seconds, not bar frames
        lines = ProgressLines(description, total, unit)
        yield lines
        lines.finish()
        return
    with Progress(
        TextColumn(f"[bold]{description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
        console=err,
        transient=True,
    ) as p:
        task = p.add_task(description, total=total, rate="")

        def update(done: int, total: int | None = None) -> None:
            t = p.tasks[0]
            rate = f"{done / t.elapsed:.0f} {unit}" if t.elapsed and unit else ""
            p.update(task, completed=done, total=total if total is not None else t.total, rate=rate)

        yield update


class ProgressLines:
    """``update(done, total=None)`` for stderr that is not a terminal (a log, a pipe): one
    plain line every ``every`` seconds (``sorting: 1,200 of 50,000 (2%), 310 img/s``) and a
    last one when the work took long enough to log at all."""

    def __init__(
        self, description: str, total: int | None, unit: str | None, every: float = 5.0
    ) -> None:
        self.description, self.total, self.unit, self.every = description, total, unit, every
        self.start = time.monotonic()
        self.last = self.start
        self.done = 0
        self.logged = False

    def __call__(self, done: int, total: int | None = None) -> None:
        self.done = done
        if total is not None:
            self.total = total
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            self._line(now)

    def _line(self, now: float, end: str = "") -> None:
        self.logged = True
        of = f" of {self.total:,}" if self.total else ""
        pct = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        elapsed = now - self.start
        rate = f", {self.done / elapsed:.0f} {self.unit}" if self.unit and elapsed > 0 else ""
        sys.stderr.write(f"{self.description}: {self.done:,}{of}{pct}{rate}{end}\n")
        sys.stderr.flush()

    def finish(self) -> None:
        if self.logged:
            self._line(time.monotonic(), f", done in {time.monotonic() - self.start:.0f} s")


class CommaChoices:
    """Parser of an option that takes a comma-separated list from a fixed set (``eager,bf16``).

    Returns the names, stripped and de-duplicated, joined by commas; an empty list or a name
    outside the set is a usage error (exit 2) naming the closest valid names. ``choices`` is a
    tuple or a ``Literal`` type; ``metavar`` shows them in ``--help``."""

    def __init__(self, choices: Any) -> None:
        self.choices: tuple[str, ...] = tuple(get_args(choices) or choices)
        self.metavar = "[" + "|".join(self.choices) + "],..."

    def __call__(self, text: str) -> str:
        from vitrina.registry import suggest

        names = list(dict.fromkeys(v.strip() for v in str(text).split(",") if v.strip()))
        if not names:
            raise typer.BadParameter(f"give one or more of {', '.join(self.choices)}")
        for n in names:
            if n not in self.choices:
                raise typer.BadParameter(
                    f"{n!r} is not one of {', '.join(self.choices)}{suggest(n, list(self.choices))}"
                )
        return ",".join(names)


#: How every size option of the CLI reads (one convention, one parser: :func:`parse_size`).
SIZE_METAVAR = "HxW"
SIZE_HELP = "HEIGHTxWIDTH (e.g. 256x128; one number: a square)"


def parse_size(text: str) -> tuple[int, int]:
    """``HEIGHTxWIDTH`` (``256x128``; ``×`` also accepted; ``320`` is ``320x320``) ->
    ``(256, 128)``; else exit 2. The one reading of every size option of the CLI."""
    try:
        parts = [int(v) for v in str(text).lower().replace("×", "x").split("x")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) < 1:
        raise typer.BadParameter(f"{text!r}: expected HEIGHTxWIDTH, e.g. 256x128") from None
    return parts[0], parts[1]


def input_size_option(what: str, default: str | None = None) -> Any:
    """``--input-size HxW``: the one definition of a size option (read by :func:`parse_size`,
    documented as :data:`SIZE_HELP`); ``what`` says what the size is of."""
    return typer.Option(
        default,
        "--input-size",
        parser=parse_size,
        metavar=SIZE_METAVAR,
        help=f"{SIZE_HELP}: {what}",
    )


def config_from_options(
    cls: Any, options: Mapping[str, Any], *, cli_only: Collection[str] = ()
) -> Any:
    """The config dataclass ``cls`` built from a command's parsed options (``ctx.params``).

    Each option is the field of the same name (paths become text, as the configs store
    them); ``cli_only`` options (``--json``, ``--resume``) are left out. An option that is
    neither is a mistake in the command, caught by ``tests/test_cli_contract.py``."""
    import dataclasses

    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = set(options) - fields - set(cli_only)
    if unknown:
        raise TypeError(f"{cls.__name__} has no field for option(s) {sorted(unknown)}")
    return cls(
        **{k: str(v) if isinstance(v, Path) else v for k, v in options.items() if k not in cli_only}
    )
