"""Datasets: class folders, splits, transforms, bad-file-tolerant loading."""

from vitrina.data.dataset import Batch, ImageFiles, collate_skip_bad
from vitrina.data.folder import (
    FolderScan,
    Sample,
    check_class_name,
    iter_image_files,
    scan_folder,
    stratified_split,
)
from vitrina.data.inspect import FolderReport, inspect_folder
from vitrina.data.transforms import AUGMENTS, eval_transform, train_transform

__all__ = [
    "AUGMENTS",
    "Batch",
    "FolderReport",
    "FolderScan",
    "ImageFiles",
    "Sample",
    "check_class_name",
    "collate_skip_bad",
    "eval_transform",
    "inspect_folder",
    "iter_image_files",
    "scan_folder",
    "stratified_split",
    "train_transform",
]
