"""Metrics. They compute; they never print or plot."""

from vitrina.evaluate.classification import ClassificationReport, classification_report

__all__ = ["ClassificationReport", "classification_report"]
