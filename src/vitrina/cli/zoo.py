"""``vitrina zoo``: the classic architectures with their size, cost, accuracy and speed."""

from __future__ import annotations

import contextlib
import csv
import io
import sys
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from vitrina.cli._choices import Backend, ZooPlotY, ZooSort
from vitrina.cli._common import CommaChoices, err, out, print_json, progress_bar
from vitrina.errors import VitrinaError


def zoo(
    pattern: str | None = typer.Argument(
        None,
        help="Model name or shell wildcard over every model name, e.g. '*mobilenet*' "
        "(quote it). Default: the classic review list.",
    ),
    max_mb: float | None = typer.Option(
        None, "--max-mb", help="Only models whose fp32 weights take at most this many MB."
    ),
    family: str | None = typer.Option(
        None, "--family", help="Only this family, e.g. ResNet, MobileNetV3 (any case)."
    ),
    pretrained_only: bool = typer.Option(
        False,
        "--pretrained-only",
        help="Only models whose ImageNet weights are already on this machine (no download).",
    ),
    do_measure: bool = typer.Option(
        False,
        "--measure",
        help="Time each model on this machine: ms per image at batch 1 and images/s at "
        "batch 32 (cached per machine).",
    ),
    backends: str = typer.Option(
        "eager,bf16",
        "--backends",
        parser=CommaChoices(Backend),
        metavar=CommaChoices(Backend).metavar,
        help="Comma-separated inference backends for --measure (auto stands for its first "
        "guess on this machine).",
    ),
    threads: int | None = typer.Option(
        None,
        "--threads",
        help="Torch threads for --measure (default: every core; one for nets under 1M parameters).",
    ),
    refresh: bool = typer.Option(
        False, "--refresh", help="Ignore the cache: describe (and measure) again."
    ),
    plot: Path | None = typer.Option(
        None, "--plot", help="Also write a PNG scatter: fp32 size against --plot-y."
    ),
    plot_y: ZooPlotY | None = typer.Option(
        None,
        "--plot-y",
        help="What to draw against size (default: throughput when measured, else top1).",
    ),
    limit: int = typer.Option(
        60, "--limit", help="Describe at most this many of the names a PATTERN matches."
    ),
    sort: ZooSort = typer.Option(
        "size", "--sort", help="Order (top1: best first; year: oldest first)."
    ),
    as_csv: bool = typer.Option(False, "--csv", help="Print CSV."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    as_markdown: bool = typer.Option(False, "--markdown", help="Print a Markdown table."),
) -> None:
    """The model zoo: parameters, size (fp32 / bf16 / int8 MB), GFLOPs, input size,
    ImageNet top-1 and whether ImageNet weights are on this machine, for the classic CNNs
    (LeNet-5 to GhostNet) or any names matching PATTERN. --measure adds latency and
    throughput on this machine per backend.

    Which backbone fits 20 MB, with weights available offline?

        vitrina zoo --max-mb 20 --pretrained-only

    Other examples: vitrina zoo '*mobilenet*' --family MobileNetV3;
    vitrina zoo --max-mb 30 --measure --backends eager --plot zoo.png
    """
    from vitrina import zoo as Z

    if sum((as_csv, as_json, as_markdown)) > 1:
        raise VitrinaError("choose one of --csv, --json, --markdown")
    if plot_y == "throughput" and not do_measure:
        raise VitrinaError("--plot-y throughput needs --measure")
    chosen: list[str] = []
    if do_measure:
        chosen, notes = Z.measurement_backends(backends.split(","))
        for note in notes:
            err.print(f"note: {note}")

    bars: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:

        def progress(stage: str, done: int, total: int) -> None:
            if stage not in bars:
                label = "describing" if stage == "describe" else "measuring"
                bars[stage] = stack.enter_context(progress_bar(label, total, unit=None))
            bars[stage](done)

        found = Z.find(
            pattern,
            family=family,
            max_mb=max_mb,
            pretrained_only=pretrained_only,
            limit=limit,
            sort=sort,
            measure=chosen,
            threads=threads,
            refresh=refresh,
            on_progress=progress,
        )
    if found.truncated:
        err.print(
            f"{found.matched} models match; describing the first {found.limit} "
            f"(narrow PATTERN or raise --limit)"
        )
    entries, skipped = found.entries, found.skipped
    if skipped:
        err.print(
            f"skipped {len(skipped)} that cannot be described: "
            + escape("; ".join(f"{n} ({why})" for n, why in skipped[:3]))
            + (" ..." if len(skipped) > 3 else "")
        )
    if not entries:
        err.print("no model matches" + _criteria(pattern, max_mb, family, pretrained_only))
    if as_json:
        print_json([e.to_dict() for e in entries])
    elif as_csv:
        _print_csv(entries, chosen)
    elif as_markdown:
        if entries:
            _print_markdown(entries, chosen)
    elif entries:
        _print_table(entries, chosen)
    if plot is not None and entries:
        y = plot_y or ("throughput" if chosen else "top1")
        Z.plot_zoo(entries, plot, y=y, backend=chosen[0] if chosen else None)
        err.print(f"wrote {escape(str(plot))}")


# ---------------------------------------------------------------------------- helpers
def _criteria(pattern: str | None, max_mb: float | None, family: str | None, pre: bool) -> str:
    parts = [repr(pattern) if pattern else "the classic list"]
    if family:
        parts.append(f"family {family}")
    if max_mb is not None:
        parts.append(f"<= {max_mb:g} MB fp32")
    if pre:
        parts.append("ImageNet weights on this machine")
    return ": " + ", ".join(parts)


def _num(x: float) -> str:
    """3 significant digits, never in exponent notation."""
    if x >= 1000:
        return f"{x:,.0f}"
    if x >= 100:
        return f"{x:.0f}"
    if x >= 10:
        return f"{x:.1f}"
    if x >= 0.1:
        return f"{x:.2f}"
    return f"{x:.2g}" if x >= 1e-4 else ("0" if x == 0 else f"{x:.1e}")


def _input(e: Any) -> str:
    h, w = e.input_size
    return f"{h}x{w}" if e.channels == 3 else f"{e.channels}x{h}x{w}"


def _columns(backends: list[str]) -> list[str]:
    cols = ["name", "family", "year", "params (M)", "MB fp32", "MB bf16", "MB int8"]
    cols += ["GFLOPs", "input", "top-1", "offline weights"]
    for b in backends:
        cols += [f"ms@1 {b}", f"img/s@32 {b}"]
    return cols


def _row(e: Any, backends: list[str]) -> list[str]:
    row = [
        e.name,
        e.family,
        str(e.year) if e.year else "",
        _num(e.params / 1e6),
        _num(e.size_mb_fp32),
        _num(e.size_mb_bf16),
        _num(e.size_mb_int8),
        _num(e.gflops),
        _input(e),
        f"{e.top1:.1f}" if e.top1 is not None else "-",
        "yes" if e.pretrained_offline else "no",
    ]
    for b in backends:
        t = e.timings.get(b)
        row += [_num(t.latency_ms), _num(t.throughput)] if t else ["-", "-"]
    return row


def _print_table(entries: list[Any], backends: list[str]) -> None:
    from rich.table import Table

    table = Table()
    for i, col in enumerate(_columns(backends)):
        table.add_column(col, justify="left" if i in (0, 1, 8, 10) else "right")
    for e in entries:
        table.add_row(*(escape(c) for c in _row(e, backends)))
    if out.is_terminal:
        out.print(table)
    else:  # piped or logged: the whole table, never squeezed to the default 80 columns
        from rich.console import Console
        from rich.measure import Measurement

        natural = Measurement.get(out, out.options.update_width(10_000), table).maximum
        Console(file=sys.stdout, width=max(out.width, natural), highlight=False).print(table)
    notes = [
        "GFLOPs: 2 x multiply-accumulates for one image at its input size",
        "int8: weights 1 byte, biases and buffers fp32",
        "top-1: ImageNet-1k, from torchvision's weights metadata",
    ]
    timed = [t for e in entries for t in e.timings.values()]
    if timed:
        threads = sorted({t.threads for t in timed})
        notes.append(
            f"ms@1: median per batch of 1; img/s@32: from the median batch of 32; "
            f"{'/'.join(map(str, threads))} torch thread(s), random input"
        )
    out.print("; ".join(notes), markup=False)


def _print_markdown(entries: list[Any], backends: list[str]) -> None:
    cols = _columns(backends)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(_row(e, backends)) + " |" for e in entries]
    sys.stdout.write("\n".join(lines) + "\n")


def _print_csv(entries: list[Any], backends: list[str]) -> None:
    fields = [
        "name",
        "arch",
        "source",
        "family",
        "year",
        "params",
        "size_mb_fp32",
        "size_mb_bf16",
        "size_mb_int8",
        "gflops",
        "input_size",
        "channels",
        "top1",
        "pretrained_offline",
    ]
    for b in backends:
        fields += [
            f"latency_ms_{b}",
            f"latency_runs_{b}",
            f"throughput_{b}",
            f"throughput_runs_{b}",
        ]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(fields)
    for e in entries:
        d = e.to_dict()
        row: list[Any] = [d[f] for f in fields[:14]]
        row[10] = "x".join(str(v) for v in e.input_size)
        for b in backends:
            t = e.timings.get(b)
            row += (
                [t.latency_ms, t.latency_runs, t.throughput, t.throughput_runs]
                if t
                else ["", "", "", ""]
            )
        writer.writerow(["" if v is None else v for v in row])
    sys.stdout.write(buf.getvalue())


def register(app: typer.Typer) -> None:
    app.command("zoo")(zoo)
