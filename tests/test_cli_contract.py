"""The command line's contract, over every command: `--help` works and imports no torch; an
option with a fixed set of values is a choice with exactly the API's values, listed in `--help`,
and a wrong value is a usage error (exit 2); the training commands' options are the fields of
their config classes, with the same defaults."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import itertools
import json
import subprocess
import sys
from pathlib import Path
from typing import Any, get_args, get_origin

import pytest
import typer.main

from conftest import run_cli, usage_error
from vitrina.cli import _register, app
from vitrina.cli._common import CommaChoices
from vitrina.cli._help import _ITEM, reflow
from vitrina.errors import VitrinaError

# Options (and arguments) that take free text: names, paths given as text, expressions. Any
# other text option must be a choice; a new one fails `test_text_options_are_choices_or_free`
# until it is made a choice or added here.
FREE_TEXT = {
    "arch",  # any registered model name (thousands, wildcard-matched)
    "model",  # a run folder or a model name
    "weights",  # imagenet, none, a file or a run folder
    "device",  # auto, cpu, cuda, cuda:1...
    "pattern",  # a shell wildcard over model names
    "family",  # resolved by vitrina.zoo.resolve_family (any case), one-line error
    "layer",  # a layer name of the model at hand
    "loss",  # an expression: softmax+0.5*triplet
    "input_size",  # HEIGHTxWIDTH, parsed by parse_size
    "scales",  # S1,S2,... (multiples of a detector's input size), parsed by parse_scales
    "train_scales",  # S1,S2,... (multiples of a detector's input size), parsed by parse_scales
    "host",
    "token",
    "write_token",
    "embedder",  # a run folder
    "name",  # a person
    "old",
    "new",
    "items",  # paths or sha256 prefixes
    "target",  # a class name or index of the model at hand
    "class_name",
    "detector",  # a detection run folder or a detector name (DETECTORS, listed by `detect list`)
    "backbone",  # any zoo classifier name
    "size",  # detect train's deprecated WIDTHxHEIGHT (vitrina.detect.train.parse_size)
    "ray",  # a Ray address: local (a bare --ray), auto, HOST:PORT, ray://HOST:PORT (RayOptions)
}


def _api_choices() -> dict[tuple[str, str], set[str]]:
    """(command, option) -> the values the API accepts, read from the API's own definitions."""
    from vitrina.classify.export import FORMATS
    from vitrina.data import AUGMENTS
    from vitrina.data.annotations import FORMATS as ANNOTATION_FORMATS
    from vitrina.detect.data import BOX_AUGMENTS
    from vitrina.detect.train import FREEZE, WEIGHTS
    from vitrina.detect.train import OPTIMIZERS as DETECT_OPTIMIZERS
    from vitrina.detect.train import PRECISIONS as DETECT_PRECISIONS
    from vitrina.embed import POOLS
    from vitrina.embed.projection import METHODS as PROJECTIONS
    from vitrina.embed.reid import METRICS as REID_METRICS
    from vitrina.engine import BACKENDS
    from vitrina.evaluate.retrieval import METRICS as RETRIEVAL_METRICS
    from vitrina.explain import METHODS as EXPLAIN_METHODS
    from vitrina.explain.atlas import LAYOUTS
    from vitrina.explain.featureviz import PARAMS
    from vitrina.faces.pipeline import DETECTORS
    from vitrina.losses import MINERS
    from vitrina.models.detection import HEADS
    from vitrina.optimize import VARIANT_NAMES
    from vitrina.search.index import KINDS
    from vitrina.search.index import METRICS as INDEX_METRICS
    from vitrina.training import MODES, OPTIMIZERS, PRECISIONS
    from vitrina.training.embedding import DISTANCES, EMBED_AUGMENTS, SAMPLERS
    from vitrina.training.trainable import TRAINABLE
    from vitrina.zoo import SORT_KEYS
    from vitrina.zoo.plot import PLOT_Y

    backends = set(BACKENDS.names())
    found = {
        ("train", "mode"): set(MODES),
        ("train", "optimizer"): set(OPTIMIZERS),
        ("train", "precision"): set(PRECISIONS),
        ("train", "augment"): set(AUGMENTS),
        ("train-embedding", "miner"): set(MINERS.names()),
        ("train-embedding", "distance"): set(DISTANCES),
        ("train-embedding", "augment"): set(EMBED_AUGMENTS),
        ("train-embedding", "precision"): set(PRECISIONS),
        ("train-embedding", "sampler"): set(SAMPLERS),
        ("train-autoencoder", "augment"): set(AUGMENTS),
        ("train-autoencoder", "precision"): set(PRECISIONS),
        ("explain atlas", "layout"): set(LAYOUTS),
        ("train-embedding", "trainable"): set(TRAINABLE),
        ("embed", "pool"): set(POOLS),
        ("evaluate-retrieval", "pool"): set(POOLS),
        ("evaluate-retrieval", "metric"): set(RETRIEVAL_METRICS),
        ("evaluate-reid", "metric"): set(REID_METRICS),
        ("index build", "metric"): set(INDEX_METRICS),
        ("index build", "kind"): set(KINDS),
        ("search", "metric"): set(INDEX_METRICS),
        ("faces enroll", "detector"): set(DETECTORS.names()),
        ("faces chips", "detector"): set(DETECTORS.names()),
        ("explain image", "method"): {*EXPLAIN_METHODS.names(), "all"},
        ("explain neuron", "param"): set(PARAMS),
        ("plot-embeddings", "method"): set(PROJECTIONS),
        ("zoo", "sort"): set(SORT_KEYS),
        ("zoo", "plot_y"): set(PLOT_Y),
        ("zoo", "backends"): backends,
        ("export", "fmt"): set(FORMATS),
        ("optimize", "variants"): set(VARIANT_NAMES),
        ("detect train", "arch"): set(HEADS.names()),
        ("detect train", "weights"): set(WEIGHTS),
        ("detect train", "optimizer"): set(DETECT_OPTIMIZERS),
        ("detect train", "augment"): set(BOX_AUGMENTS),
        ("detect train", "freeze"): set(FREEZE),
        ("detect train", "precision"): set(DETECT_PRECISIONS),
        ("detect train", "fmt"): set(ANNOTATION_FORMATS),
        ("detect evaluate", "fmt"): set(ANNOTATION_FORMATS),
        ("data convert", "to"): set(ANNOTATION_FORMATS),
        ("data convert", "fmt"): set(ANNOTATION_FORMATS),
        ("data crops", "fmt"): set(ANNOTATION_FORMATS),
    }
    for command, _ in list(_commands().items()):
        if "backend" in _params(command):
            found[(command, "backend")] = backends
    return found


@functools.cache
def _commands() -> dict[str, Any]:
    """Every leaf command, by its words (``"index build"``)."""
    _register()
    out: dict[str, Any] = {}

    def walk(cmd: Any, words: tuple[str, ...]) -> None:
        subs = getattr(cmd, "commands", None)
        if subs:
            for name, sub in subs.items():
                walk(sub, (*words, name))
        else:
            out[" ".join(words)] = cmd

    walk(typer.main.get_command(app), ())
    return out


def _params(command: str) -> dict[str, Any]:
    return {p.name: p for p in _commands()[command].params}


def _choices(param: Any) -> tuple[str, ...] | None:
    """The values of a choice (typer's Literal / Enum choices, or a comma-separated list)."""
    td = param.type_descriptor
    if td.choices is not None:
        return tuple(str(getattr(c, "value", c)) for c in td.choices)
    parser = td.parameter_info.parser
    if isinstance(parser, CommaChoices):
        return parser.choices
    return None


def _flag(param: Any) -> str:
    return next(o for o in param.opts if o.startswith("--"))


def _placeholder_args(command: str) -> list[str]:
    """Required arguments filled with a dummy value (a bad option is rejected before)."""
    return [
        "x" for p in _commands()[command].params if p.param_type_name == "argument" and p.required
    ]


def test_every_command_has_help_that_exits_0(capsys) -> None:
    commands = _commands()
    assert len(commands) >= 30
    for command in commands:
        code, out, err = run_cli(capsys, *command.split(), "--help")
        assert code == 0, (command, err)
        assert "Usage" in out, command


def test_every_commands_help_leaves_the_wrapping_to_the_terminal() -> None:
    """A docstring's line breaks would break sentences mid-line in `--help` (Typer keeps
    them): every prose line of every command's help is a whole paragraph, and indented
    examples stay as written."""
    for command, cmd in _commands().items():
        for para in (cmd.help or "").split("\n\n"):
            lines = para.splitlines()
            for prev, line in itertools.pairwise(lines):
                # a new line is an example (indented), a list item, or follows an example
                assert line[:1].isspace() or prev[:1].isspace() or _ITEM.match(line), (
                    command,
                    para,
                )


def test_reflow_joins_prose_and_list_items_and_keeps_examples() -> None:
    text = """Summary line.

    A paragraph written
    over three lines
    in the source.

    Examples:

      vitrina train photos/ --arch resnet18
      vitrina train digits/ --mode scratch

    - an item that goes
    on, and
    - another
    1. numbered
    """
    assert reflow(text).split("\n\n") == [
        "Summary line.",
        "A paragraph written over three lines in the source.",
        "Examples:",
        "  vitrina train photos/ --arch resnet18\n  vitrina train digits/ --mode scratch",
        "- an item that goes on, and\n- another\n1. numbered",
    ]
    kept = "First.\n\n\b\nkept\nas is"
    assert reflow(kept) == kept  # click's no-rewrap marker


def test_help_wraps_at_the_terminals_width_not_the_sources(capsys, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    code, out, _ = run_cli(capsys, "train", "--help")
    assert code == 0
    assert "The result is a run folder: model.safetensors, vitrina.json, metrics.jsonl" in out


# What `vitrina --help` must not load: every command module is imported at start-up, so one
# heavy import at module level slows every command (measured: benchmarks/cli_startup.py).
HEAVY = ("torch", "numpy", "sklearn", "scipy", "PIL", "matplotlib", "faiss", "vitrina.evaluate",
         "vitrina.search", "vitrina.training", "vitrina.engine", "vitrina.embed", "vitrina.data")  # fmt: skip


def test_help_loads_nothing_heavy() -> None:
    """`vitrina --help` and every command's `--help` stay light: the choices are literal
    values (or read from modules already loaded), not imported from the torch-heavy API."""
    script = (
        "import json, sys\n"
        "from vitrina.cli import main\n"
        "codes = [main(['--help'])]\n"
        f"for c in {list(_commands())!r}:\n"
        "    codes.append(main(c.split() + ['--help']))\n"
        f"print(json.dumps({{'codes': codes, 'heavy': [m for m in {HEAVY!r} if m in sys.modules]}}))\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=300
    )
    doc = json.loads(res.stdout.strip().splitlines()[-1])
    assert set(doc["codes"]) == {0}
    assert doc["heavy"] == []


def test_fixed_value_options_are_choices_with_the_apis_values() -> None:
    expected = _api_choices()
    found = {}
    for command in _commands():
        for name, p in _params(command).items():
            values = _choices(p)
            if values is not None:
                found[(command, name)] = set(values)
    # every option known to have a fixed set is a choice, and no choice goes unchecked
    assert set(found) == set(expected), {
        "not a choice": sorted(set(expected) - set(found)),
        "unchecked": sorted(set(found) - set(expected)),
    }
    for key, values in found.items():
        assert values == expected[key], (key, values ^ expected[key])


def test_text_options_are_choices_or_free_text() -> None:
    for command in _commands():
        for name, p in _params(command).items():
            ann = p.type_descriptor.annotation
            text = ann is str or (get_origin(ann) is list and get_args(ann) == (str,))
            if text and _choices(p) is None:
                assert name in FREE_TEXT, (
                    f"`vitrina {command}` option {name!r} takes any text: if it has a fixed set "
                    "of values, make it a choice (vitrina/cli/_choices.py); else add it to "
                    "FREE_TEXT"
                )


def test_a_wrong_choice_is_a_usage_error_listing_the_values(capsys, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "400")  # help on one line per option: values not wrapped
    checked = 0
    helps: dict[str, str] = {}
    for command in _commands():
        for p in _params(command).values():
            values = _choices(p)
            if values is None:
                continue
            args = [*command.split(), *_placeholder_args(command), _flag(p), "not-a-choice"]
            code, _, err = run_cli(capsys, *args)
            assert code == 2, (command, _flag(p), err)
            usage_error(err, _flag(p), "'not-a-choice' is not one of", values[0])
            checked += 1
            if command not in helps:
                code, helps[command], _ = run_cli(capsys, *command.split(), "--help")
            assert all(v in helps[command] for v in values), (command, _flag(p))  # in --help
    assert checked == len(_api_choices())


def test_comma_choices_keep_order_and_drop_repeats() -> None:
    from vitrina.cli._choices import Backend

    parse = CommaChoices(Backend)
    assert parse(" onnx, eager,onnx ") == "onnx,eager"
    assert parse.metavar == (
        "[auto|eager|fp64|bf16|onnx|int8|openvino|openvino-bf16|openvino-int8|pruned|dlib],..."
    )
    for bad in ("", " , ", "eager,eagr"):
        with pytest.raises(typer.BadParameter):
            parse(bad)


# ------------------------------------------------------------- defaults = the API's


def _api_functions() -> dict[str, Any]:
    """The API function each command calls (its keyword defaults are the defaults)."""
    from vitrina.classify.classifier import Classifier
    from vitrina.classify.export import export_model
    from vitrina.classify.sort import sort_folder
    from vitrina.data import to_market
    from vitrina.demo import run_demo
    from vitrina.embed.evaluate import evaluate_retrieval
    from vitrina.embed.files import embed_files
    from vitrina.embed.projection import plot_embeddings
    from vitrina.embed.reid import evaluate_reid
    from vitrina.explain.atlas import atlas_files
    from vitrina.explain.files import write_dream, write_layers, write_neuron
    from vitrina.explain.folder import explain_photos
    from vitrina.faces.calibrate import calibrate_gallery
    from vitrina.faces.chips import write_face_chips
    from vitrina.faces.enroll import enroll_photos
    from vitrina.faces.identify import identify_photos, verify_photos
    from vitrina.faces.sort import sort_faces
    from vitrina.optimize import optimize_run
    from vitrina.search import Index
    from vitrina.search.dedupe import find_duplicates
    from vitrina.search.query import search_photos
    from vitrina.service import ServiceConfig
    from vitrina.zoo import find

    return {
        "data to-market": to_market,
        "dedupe": find_duplicates,
        "demo": run_demo,
        "embed": embed_files,
        "evaluate": Classifier.evaluate,
        "evaluate-reid": evaluate_reid,
        "evaluate-retrieval": evaluate_retrieval,
        "explain atlas": atlas_files,
        "explain dream": write_dream,
        "explain image": explain_photos,
        "explain layers": write_layers,
        "explain neuron": write_neuron,
        "export": export_model,
        "faces calibrate": calibrate_gallery,
        "faces chips": write_face_chips,
        "faces enroll": enroll_photos,
        "faces identify": identify_photos,
        "faces sort": sort_faces,
        "faces verify": verify_photos,
        "index add": Index.open,
        "index build": Index.build,
        "optimize": optimize_run,
        "plot-embeddings": plot_embeddings,
        "predict": Classifier.predict,
        "search": search_photos,
        "serve": ServiceConfig,
        "sort": sort_folder,
        "zoo": find,
    }


def test_options_have_the_defaults_of_the_api_they_call() -> None:
    """An option named like a keyword of the API function its command calls has that
    keyword's default: `vitrina X` and the Python API behave the same when nothing is given."""
    compared = 0
    for command, fn in _api_functions().items():
        signature = inspect.signature(fn)
        for name, p in _params(command).items():
            api = signature.parameters.get(name)
            if api is None or api.default is inspect.Parameter.empty:
                continue
            default = list(api.default) if isinstance(api.default, tuple) else api.default
            assert p.default == default, (command, name, p.default, api.default)
            compared += 1
    assert compared >= 100


# ------------------------------------------------------------- training options = config


def _training_cases() -> list[tuple[str, Any, tuple[str, ...], dict[str, set[str]]]]:
    from vitrina.cli import train, train_autoencoder, train_embedding
    from vitrina.data import AUGMENTS
    from vitrina.losses import MINERS
    from vitrina.training import MODES, OPTIMIZERS, PRECISIONS, TrainConfig
    from vitrina.training.autoencoder import AutoencoderConfig
    from vitrina.training.embedding import DISTANCES, EMBED_AUGMENTS, SAMPLERS, EmbeddingConfig
    from vitrina.training.trainable import TRAINABLE

    return [
        (
            "train",
            TrainConfig,
            train.CLI_ONLY,
            {
                "mode": set(MODES),
                "optimizer": set(OPTIMIZERS),
                "precision": set(PRECISIONS),
                "augment": set(AUGMENTS),
            },
        ),
        (
            "train-embedding",
            EmbeddingConfig,
            train_embedding.CLI_ONLY,
            {
                "miner": set(MINERS.names()),
                "distance": set(DISTANCES),
                "augment": set(EMBED_AUGMENTS),
                "precision": set(PRECISIONS),
                "sampler": set(SAMPLERS),
                "trainable": set(TRAINABLE),
            },
        ),
        (
            "train-autoencoder",
            AutoencoderConfig,
            train_autoencoder.CLI_ONLY,
            {"augment": set(AUGMENTS), "precision": set(PRECISIONS)},
        ),
    ]


@pytest.mark.parametrize("case", range(3), ids=["train", "train-embedding", "train-autoencoder"])
def test_training_options_are_the_config_fields_with_their_defaults(case: int) -> None:
    command, config, cli_only, choices = _training_cases()[case]
    params = _params(command)
    fields = {f.name: f for f in dataclasses.fields(config)}
    assert set(params) - set(cli_only) == set(fields), (
        "an option without a config field, or a field without an option"
    )
    for name, f in fields.items():
        p = params[name]
        if f.default is dataclasses.MISSING:
            assert p.required, name
        else:
            assert p.default == f.default, (name, p.default, f.default)
        values = _choices(p)
        if name in choices:
            assert values is not None and set(values) == choices[name], name
        else:
            assert values is None, f"{name} is a choice the test does not check"


def _captured_config(monkeypatch, target: str, attr: str, argv: list[str]) -> Any:
    """Run `vitrina ARGV` with the training function replaced; return the config it got."""
    import importlib

    seen: dict[str, Any] = {}

    def fake(cfg: Any, **kw: Any) -> Any:
        seen["cfg"], seen["kw"] = cfg, kw
        raise VitrinaError("stopped before training")

    monkeypatch.setattr(importlib.import_module(target), attr, fake)
    from vitrina.cli import main

    assert main(argv) == 1
    return seen["cfg"], seen["kw"]


def test_train_with_no_options_gets_the_config_defaults(monkeypatch, tmp_path: Path) -> None:
    from vitrina.training import TrainConfig

    cfg, kw = _captured_config(
        monkeypatch, "vitrina.training", "train_classifier", ["train", str(tmp_path)]
    )
    assert cfg == TrainConfig(data_dir=str(tmp_path))
    assert kw == {"resume": False, "progress": True}
    cfg, kw = _captured_config(
        monkeypatch,
        "vitrina.training",
        "train_classifier",
        [
            "train", str(tmp_path), "--mode", "probe", "--optimizer", "lbfgs", "--augment",
            "none", "--weight-decay", "0.05", "--out", str(tmp_path / "run"), "--workers", "3",
            "--val-dir", str(tmp_path / "val"), "--resume", "--json",
        ],
    )  # fmt: skip
    assert (cfg.mode, cfg.optimizer, cfg.augment, cfg.weight_decay) == (
        "probe",
        "lbfgs",
        "none",
        0.05,
    )
    assert (cfg.out, cfg.num_workers, cfg.val_dir) == (
        str(tmp_path / "run"),
        3,
        str(tmp_path / "val"),
    )
    assert kw == {"resume": True, "progress": False}


def test_train_embedding_with_no_options_gets_the_config_defaults(
    monkeypatch, tmp_path: Path
) -> None:
    from vitrina.training.embedding import EmbeddingConfig

    target = "vitrina.training.embedding"
    cfg, _ = _captured_config(
        monkeypatch, target, "train_embedding", ["train-embedding", str(tmp_path)]
    )
    assert cfg == EmbeddingConfig(data_dir=str(tmp_path))
    cfg, _ = _captured_config(
        monkeypatch,
        target,
        "train_embedding",
        [
            "train-embedding", str(tmp_path), "--input-size", "256x128", "--no-bnneck",
            "--miner", "semi-hard", "--distance", "cosine", "--p", "6", "--k", "2",
            "--weight-decay", "0", "--out", str(tmp_path / "run"),
        ],
    )  # fmt: skip
    assert cfg.input_size == (256, 128) and cfg.bnneck is False and cfg.weight_decay == 0
    assert (cfg.miner, cfg.distance, cfg.p, cfg.k) == ("semi-hard", "cosine", 6, 2)
    assert cfg.out == str(tmp_path / "run")


def test_a_malformed_input_size_is_a_usage_error(capsys, tmp_path: Path) -> None:
    code, _, err = run_cli(capsys, "train-embedding", tmp_path, "--input-size", "256by128")
    assert code == 2
    usage_error(err, "--input-size", "expected HEIGHTxWIDTH")


def test_config_from_options_refuses_an_option_without_a_field() -> None:
    from vitrina.cli._common import config_from_options
    from vitrina.training import TrainConfig

    with pytest.raises(TypeError, match="colour"):
        config_from_options(TrainConfig, {"data_dir": "d", "colour": "red"})
    cfg = config_from_options(
        TrainConfig, {"data_dir": Path("d"), "as_json": True}, cli_only=("as_json",)
    )
    assert cfg == TrainConfig(data_dir="d")
