"""Opening the owner's datasets: the only place Bastion reads data files.

Why separate: the grammar never names a file; the interpreter only ever asks
for a dataset by its configured name, and this module turns the owner's path
into a polars scan. Nothing a user types reaches a reader function.
"""

from __future__ import annotations

import functools

import polars as pl

from .config import DatasetConfig


def scan(ds: DatasetConfig) -> pl.LazyFrame:
    """A lazy scan of the dataset with projection and predicate pushdown intact."""
    if ds.format == "csv":
        return pl.scan_csv(ds.path)
    return pl.scan_parquet(ds.path)


@functools.lru_cache(maxsize=256)
def schema(ds: DatasetConfig) -> pl.Schema:
    """The dataset's columns and types, read once per process (file metadata only, no rows).

    Every reference to a dataset name, every completion request and the startup
    check need it; reading Parquet footers again each time is wasted I/O.
    """
    return scan(ds).collect_schema()
