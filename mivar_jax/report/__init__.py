"""The study report: PNG figures (matplotlib), interactive views (plotly), a self-contained
``report.html`` per run and ``compare.html`` setting runs side by side."""

from mivar_jax.report.compare import write_comparison
from mivar_jax.report.html import FIGURES, write_report

__all__ = ["FIGURES", "write_comparison", "write_report"]
