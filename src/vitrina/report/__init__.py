"""Plots and pages. Computes nothing: it draws what ``evaluate`` and ``train`` measured."""

from vitrina.report.plots import plot_confusion, plot_curves, plot_size_scatter

__all__ = ["plot_confusion", "plot_curves", "plot_size_scatter"]
