"""Pictures and pages: `plots` draws figures from results micl_probe already computed (PNG + PDF), `report` renders
the report folder. Nothing here computes a measurement."""

from . import plots
from .report import write_report

__all__ = ["plots", "write_report"]
