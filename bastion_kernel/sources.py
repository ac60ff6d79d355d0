"""Opening the owner's datasets: the only place Bastion reads data files.

Why separate: the grammar never names a file; the interpreter only ever asks
for a dataset by its configured name, and this module turns the owner's path
into a polars scan. Nothing a user types reaches a reader function.
"""

from __future__ import annotations

import polars as pl

from .config import DatasetConfig


def scan(ds: DatasetConfig) -> pl.LazyFrame:
    """A lazy scan of the dataset with projection and predicate pushdown intact."""
    if ds.format == "csv":
        return pl.scan_csv(ds.path)
    return pl.scan_parquet(ds.path)
