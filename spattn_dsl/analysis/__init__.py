"""Analysis: how information spreads through a stack of layers (docs/analysis.md)."""
from .analyze import AnalysisError, analyze
from .render import render
from .report import Report

__all__ = ["analyze", "render", "Report", "AnalysisError"]
