"""The cell grammar: parsing, the syntax allow-list, and the name/method tables."""

from .parser import parse_cell, suggest

__all__ = ["parse_cell", "suggest"]
