"""The study report: PNG figures (matplotlib) and a self-contained ``report.html``."""

from mivar_jax.report.html import FIGURES, write_report

__all__ = ["FIGURES", "write_report"]
