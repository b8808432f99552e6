"""Datasets: class folders, identity sets, splits, P x K sampling, transforms, bad-file-tolerant
loading.

The names built on PyTorch (datasets, samplers, transforms) are imported on first use, so
that scanning folders (``vitrina sort``, ``vitrina data inspect``) never pays for
``import torch`` (see :mod:`vitrina.lazy`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vitrina.data.dataset import Batch, ImageFiles, collate_skip_bad
    from vitrina.data.samplers import PKSampler, pk_batches
    from vitrina.data.transforms import AUGMENTS, eval_transform, train_transform

from vitrina.data.folder import (
    FolderScan,
    Sample,
    check_class_name,
    expand_image_paths,
    iter_image_files,
    scan_folder,
    stratified_split,
)
from vitrina.data.identities import (
    IdentityImage,
    IdentitySet,
    MarketName,
    ToMarketReport,
    parse_market_name,
    scan_identities,
    to_market,
)
from vitrina.data.inspect import FolderReport, inspect_folder
from vitrina.lazy import lazy_exports

__all__ = [
    "AUGMENTS",
    "Batch",
    "FolderReport",
    "FolderScan",
    "IdentityImage",
    "IdentitySet",
    "ImageFiles",
    "MarketName",
    "PKSampler",
    "Sample",
    "ToMarketReport",
    "check_class_name",
    "collate_skip_bad",
    "eval_transform",
    "expand_image_paths",
    "inspect_folder",
    "iter_image_files",
    "parse_market_name",
    "pk_batches",
    "scan_folder",
    "scan_identities",
    "stratified_split",
    "to_market",
    "train_transform",
]

#: The names on PyTorch, by module: imported when first read.
_ON_TORCH = {
    "Batch": "dataset",
    "ImageFiles": "dataset",
    "collate_skip_bad": "dataset",
    "PKSampler": "samplers",
    "pk_batches": "samplers",
    "AUGMENTS": "transforms",
    "eval_transform": "transforms",
    "train_transform": "transforms",
}


__getattr__ = lazy_exports(globals(), _ON_TORCH)
