"""Annotated photos for detection: COCO JSON, YOLO txt and Pascal VOC XML, read into one
shape (:class:`AnnotatedSet`), inspected, converted between the formats, and cut into
class folders of crops."""

from vitrina.data.annotations.crops import CropsResult, crop_annotated, write_crops
from vitrina.data.annotations.layout import FORMATS, Layout, detect_layout, has_annotations
from vitrina.data.annotations.read import read_annotated, read_class_list
from vitrina.data.annotations.types import PROBLEM_KINDS, AnnotatedPhoto, AnnotatedSet, Problem
from vitrina.data.annotations.write import ConvertResult, convert_annotated, write_annotated

__all__ = [
    "FORMATS",
    "PROBLEM_KINDS",
    "AnnotatedPhoto",
    "AnnotatedSet",
    "ConvertResult",
    "CropsResult",
    "Layout",
    "Problem",
    "convert_annotated",
    "crop_annotated",
    "detect_layout",
    "has_annotations",
    "read_annotated",
    "read_class_list",
    "write_annotated",
    "write_crops",
]
