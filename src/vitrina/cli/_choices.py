"""The value sets of the CLI's fixed-choice options, as ``Literal`` types typer turns into choices.

A fixed-choice option is annotated with one of these: ``--help`` lists the values and a wrong one
is a usage error (exit 2) before any work starts.

Every command module is imported when ``vitrina`` starts (``vitrina --help`` lists them all), so
nothing here may import the API: its packages load torch, numpy or scikit-learn (importing
even ``vitrina.search`` for the index's metrics cost a quarter of ``vitrina --help``'s time).
So the values are written out here, each next to the name of its API definition (a constant
or a registry), and ``tests/test_cli_contract.py`` holds every one to that definition: they
cannot drift apart, and ``vitrina --help`` loads nothing heavy (tested too).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal, get_args

__all__ = [
    "AnnotationFormat",
    "AtlasLayout",
    "Augment",
    "Backend",
    "BoxAugment",
    "DetectArch",
    "DetectOptimizer",
    "DetectPrecision",
    "DetectWeights",
    "Distance",
    "EmbeddingAugment",
    "ExplainMethod",
    "ExplainMethodName",
    "ExportFormat",
    "FaceDetector",
    "FeatureParam",
    "Freeze",
    "IndexKind",
    "IndexMetric",
    "Miner",
    "Mode",
    "Optimizer",
    "Pool",
    "Precision",
    "Projection",
    "ReidMetric",
    "RetrievalMetric",
    "Sampler",
    "Trainable",
    "Variant",
    "ZooPlotY",
    "ZooSort",
]

#: vitrina.engine.BACKENDS (the registry), ``auto`` first: it is the default.
Backend = Literal[
    "auto",
    "eager",
    "fp64",
    "bf16",
    "onnx",
    "int8",
    "openvino",
    "openvino-bf16",
    "openvino-int8",
    "pruned",
    "dlib",
]
Mode = Literal["scratch", "probe", "finetune"]  # vitrina.training.MODES
Optimizer = Literal["sgd", "adamw", "lbfgs"]  # vitrina.training.OPTIMIZERS
Precision = Literal["fp64", "fp32", "bf16", "auto"]  # vitrina.training.PRECISIONS
DetectPrecision = Literal["fp32", "bf16", "auto"]  # vitrina.detect.train.PRECISIONS
Augment = Literal["none", "light", "standard"]  # vitrina.data.AUGMENTS
EmbeddingAugment = Literal[
    "reid", "camera", "none", "light", "standard"
]  # training.embedding.EMBED_AUGMENTS
Miner = Literal["none", "batch-hard", "semi-hard", "distance-weighted"]  # vitrina.losses.MINERS
Distance = Literal["euclidean", "cosine"]  # vitrina.training.embedding.DISTANCES
Sampler = Literal["pk", "pairs"]  # vitrina.training.embedding.SAMPLERS
Trainable = Literal["auto", "neck", "last", "all"]  # vitrina.training.trainable.TRAINABLE
Pool = Literal["avg", "max", "gem"]  # vitrina.embed.POOLS
IndexMetric = Literal["cosine", "euclidean"]  # vitrina.search.index.METRICS
IndexKind = Literal["auto", "exact", "hnsw", "ivf"]  # vitrina.search.index.KINDS
RetrievalMetric = Literal["cosine", "euclidean"]  # vitrina.evaluate.retrieval.METRICS
ReidMetric = Literal["euclidean", "cosine"]  # vitrina.embed.reid.METRICS
FaceDetector = Literal["cascade", "hog", "cnn"]  # vitrina.faces.pipeline.DETECTORS
FeatureParam = Literal["fourier", "pixel"]  # vitrina.explain.featureviz.PARAMS
Projection = Literal["tsne", "umap"]  # vitrina.embed.projection.METHODS
AtlasLayout = Literal["umap", "tsne"]  # vitrina.explain.atlas.LAYOUTS
ZooSort = Literal["size", "params", "gflops", "top1", "year", "name"]  # vitrina.zoo.SORT_KEYS
ZooPlotY = Literal["top1", "throughput"]  # vitrina.zoo.plot.PLOT_Y
ExportFormat = Literal["onnx"]  # vitrina.classify.export.FORMATS
DetectArch = Literal["fasterrcnn", "retinanet", "fcos", "ssdlite"]  # models.detection.HEADS
DetectOptimizer = Literal["adamw", "sgd"]  # vitrina.detect.train.OPTIMIZERS
DetectWeights = Literal["imagenet", "none"]  # vitrina.detect.train.WEIGHTS
BoxAugment = Literal[
    "none", "flip", "light", "strong", "mosaic"
]  # vitrina.detect.data.BOX_AUGMENTS
Freeze = Literal["stem", "lower", "backbone", "none"]  # vitrina.detect.train.FREEZE
AnnotationFormat = Literal["coco", "yolo", "voc"]  # vitrina.data.annotations.FORMATS
#: vitrina.optimize.VARIANT_NAMES (``--variants`` takes a comma-separated list of them).
Variant = Literal["bf16", "int8", "openvino-int8", "pruned"]
#: vitrina.explain.METHODS (the registry), plus ``all``.
ExplainMethodName = Literal[
    "gradcam",
    "gradcam++",
    "scorecam",
    "eigencam",
    "layercam",
    "saliency",
    "smoothgrad",
    "integrated-gradients",
    "guided-backprop",
    "occlusion",
    "all",
]
#: A repeatable option cannot be a ``Literal`` in typer; an enum of the same values can.
ExplainMethod = StrEnum("ExplainMethod", {m: m for m in get_args(ExplainMethodName)})  # type: ignore[misc]
