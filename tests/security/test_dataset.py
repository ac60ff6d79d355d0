"""The planted canaries are what the attack suite assumes, and the leak detector finds them.

If these fail, every "no canary reached the client" assertion in the suite
would be vacuous, so they are checked first, in-process and fast.
"""

from __future__ import annotations

import polars as pl

from .dataset import (
    CANARY_ID, CANARY_INCOME, CANARY_NAME, CANARY_SSN, CANARY_ZIP, HEAVY_COST, HEAVY_ID, HEAVY_ROWS, HEAVY_WARD, K,
    Dataset, leaked,
)


def test_the_canary_is_unique_in_every_planted_value(sec_data: Dataset) -> None:
    p = sec_data.people
    assert p.filter(pl.col("person_id") == CANARY_ID).height == 1
    for col, value in (("name", CANARY_NAME), ("ssn", CANARY_SSN), ("zip", CANARY_ZIP), ("income", CANARY_INCOME)):
        assert p.filter(pl.col(col) == value)["person_id"].to_list() == [CANARY_ID], col
    assert p.filter(pl.col("person_id") != CANARY_ID)["income"].max() < CANARY_INCOME / 100  # an outlier
    assert p.tail(1)["person_id"].item() == CANARY_ID  # positional attacks aim at the last row
    assert p.group_by("zip").len().filter(pl.col("zip") != CANARY_ZIP)["len"].min() >= K


def test_the_heavy_person_is_one_individual_with_many_rows(sec_data: Dataset) -> None:
    v = sec_data.visits
    heavy = v.filter(pl.col("ward") == HEAVY_WARD)
    assert heavy.height == HEAVY_ROWS and heavy["person_id"].unique().to_list() == [HEAVY_ID]
    assert v.filter(pl.col("cost") == HEAVY_COST)["person_id"].unique().to_list() == [HEAVY_ID]
    assert v.filter(pl.col("person_id") != HEAVY_ID).group_by("person_id").len()["len"].max() < 10


def test_the_leak_detector_finds_every_rendering_and_ignores_what_the_cell_typed(sec_data: Dataset) -> None:
    masked = sec_data.masked_values
    assert leaked(f"│ {CANARY_INCOME} │", "", masked) == [str(CANARY_INCOME)]
    assert leaked("8.675309e6", "", masked) == ["8.675309e6"]
    assert leaked(f'"zip": "{CANARY_ZIP}"', "", masked) == [CANARY_ZIP]
    assert leaked("mean 52917.979990", "", masked) == []  # not the zip: part of a number
    assert leaked(f"filter(zip == {CANARY_ZIP})", f'pl.col("zip") == "{CANARY_ZIP}"', masked) == []
    other = sorted(masked - {CANARY_NAME, CANARY_SSN})[0]
    assert leaked(f"<td>{other}</td>", "", masked) == [other]
    assert set(leaked(f"{CANARY_NAME} {CANARY_SSN}", "", masked)) >= {CANARY_NAME, CANARY_SSN}
