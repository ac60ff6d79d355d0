"""A synthetic hospital for demos, tutorials and tests.

Why synthetic: Bastion's whole point is that real sensitive data never leaves
the owner, so the demo must not ship any. This module writes a small but
realistic pair of tables (patients and their visits) plus a deployment file,
so `bastion` can be tried end to end in seconds.

Why these particular shapes:

* ``name`` and ``ssn`` look like real identifiers, so the demo shows masking
  (``*``) doing visible work.
* Regions have uneven sizes and one tiny region ("Islands", exactly three
  patients), so a ``group_by("region")`` shows a small group being withheld
  while the large ones are released.
* Visits per patient are skewed (many patients with few visits, a few with
  many), so counting *rows* and counting *distinct patients* differ -- the
  reason the policy counts individuals via ``privacy_unit``.

Why only ``random`` and polars: the generator must be deterministic for a seed
(tests compare files byte for byte) and must not pull in numpy just for a demo.
"""

from __future__ import annotations

import datetime as dt
import os
import random
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import polars as pl

__all__ = ["generate", "REGIONS", "SMALL_REGION", "SMALL_REGION_SIZE", "CONFIG_NAME"]

CONFIG_NAME = "bastion.toml"

# Name of the deliberately tiny region, and its exact size: below the demo's
# min_group_size of 10, so any per-region aggregate withholds it.
SMALL_REGION = "Islands"
SMALL_REGION_SIZE = 3

# Region -> (relative weight, ZIP prefix). Uneven weights so group sizes differ
# visibly; ZIP prefixes keep zip codes plausible and consistent with region.
REGIONS: dict[str, tuple[float, str]] = {
    "North": (0.34, "1"),
    "South": (0.26, "3"),
    "East": (0.18, "0"),
    "West": (0.14, "9"),
    "Central": (0.08, "6"),
}
_SMALL_REGION_ZIP_PREFIX = "96"

_FIRST_NAMES_F: Sequence[str] = (
    "Mary", "Patricia", "Jennifer", "Linda", "Elizabeth", "Barbara", "Susan", "Jessica",
    "Sarah", "Karen", "Lisa", "Nancy", "Sandra", "Ashley", "Emily", "Donna", "Michelle",
    "Amanda", "Melissa", "Laura", "Rebecca", "Sofia", "Amara", "Mei", "Priya", "Fatima",
    "Ingrid", "Lucia", "Chloe", "Hannah", "Olivia", "Zoe",
)
_FIRST_NAMES_M: Sequence[str] = (
    "James", "Robert", "John", "Michael", "David", "William", "Richard", "Joseph", "Thomas",
    "Charles", "Daniel", "Matthew", "Anthony", "Mark", "Steven", "Paul", "Andrew", "Joshua",
    "Kevin", "Brian", "George", "Omar", "Wei", "Arjun", "Mateo", "Lars", "Kofi", "Hiroshi",
    "Noah", "Liam", "Ethan", "Samuel",
)
_LAST_NAMES: Sequence[str] = (
    "Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis",
    "Rodriguez", "Martinez", "Hernandez", "Lopez", "Gonzalez", "Wilson", "Anderson",
    "Thomas", "Taylor", "Moore", "Jackson", "Martin", "Lee", "Perez", "Thompson", "White",
    "Harris", "Sanchez", "Clark", "Ramirez", "Lewis", "Robinson", "Walker", "Young",
    "Allen", "King", "Wright", "Scott", "Nguyen", "Hill", "Flores", "Green", "Adams",
    "Nelson", "Baker", "Hall", "Rivera", "Campbell", "Mitchell", "Carter", "Roberts",
    "Chen", "Patel", "Kim", "Okafor", "Novak", "Larsen", "Rossi", "Schmidt", "Dubois",
)

# Diagnosis -> relative weight.
DIAGNOSES: dict[str, float] = {
    "Hypertension": 0.27,
    "Type 2 diabetes": 0.18,
    "Asthma": 0.15,
    "Depression": 0.14,
    "Osteoarthritis": 0.16,
    "COPD": 0.10,
}

# Department -> (relative weight, median cost). Costs are log-normal around the
# median so averages and sums look like real billing data.
DEPARTMENTS: dict[str, tuple[float, float]] = {
    "General practice": (0.38, 120.0),
    "Emergency": (0.14, 950.0),
    "Cardiology": (0.12, 640.0),
    "Radiology": (0.13, 410.0),
    "Orthopedics": (0.10, 780.0),
    "Psychiatry": (0.08, 260.0),
    "Pulmonology": (0.05, 520.0),
}

# Weights for 0..12 visits per patient: most patients come a few times, a long
# tail comes often. Mean is about 3.
_VISIT_COUNT_WEIGHTS: Sequence[float] = (
    0.08, 0.17, 0.19, 0.16, 0.12, 0.09, 0.06, 0.045, 0.03, 0.02, 0.015, 0.01, 0.01,
)

_FIRST_DAY = dt.date(2024, 1, 1)
_LAST_DAY = dt.date(2025, 12, 31)

_CONFIG_TEMPLATE = """\
# Bastion deployment file for the synthetic demo hospital.
# Written by `bastion_kernel.demo.generate`; regenerating overwrites it.
# Relative paths are resolved against the folder holding this file.

[bastion]
# Where Bastion keeps its own state (review queue, audit log). Kept across
# regenerations of the demo data.
state_dir = "state"
# An aggregate is released only if every group in it covers at least this many
# distinct individuals (distinct values of the dataset's privacy_unit).
min_group_size = 10
# What happens to a result the policy does not release automatically:
# "review" queues it for the owner to approve or deny; "reject" refuses it.
on_violation = "review"

# One table per dataset; the name after "datasets." is the variable the data
# scientist uses in a cell.
[datasets.patients]
# A Parquet file (or folder, glob, or .csv file) holding the data.
path = "data/patients.parquet"
# The column that identifies an individual: groups are sized by distinct values.
privacy_unit = "patient_id"
# Columns that are never shown; they appear as `*` in any result.
masked = ["name", "ssn"]

[datasets.visits]
path = "data/visits.parquet"
# Several visits belong to one patient, so individuals are counted by patient_id.
privacy_unit = "patient_id"
"""


def generate(folder: Path, *, patients: int = 5000, seed: int = 7) -> Path:
    """Write the demo data and deployment file under `folder`; return the file's path.

    Layout::

        folder/bastion.toml
        folder/data/patients.parquet
        folder/data/visits.parquet
        folder/state/            (never created or touched here)

    Deterministic for a given (`patients`, `seed`): two runs produce identical
    files. Idempotent: regenerating into the same folder replaces data and
    config but keeps ``state/`` so a demo's review queue and audit log survive.
    """
    if isinstance(patients, bool) or not isinstance(patients, int):
        raise TypeError("patients must be an int")
    if patients < SMALL_REGION_SIZE:
        raise ValueError(f"patients must be at least {SMALL_REGION_SIZE} (the size of region {SMALL_REGION!r})")
    folder = Path(folder)
    data_dir = folder / "data"
    data_dir.mkdir(parents=True, exist_ok=True)

    rng = random.Random(seed)
    patient_frame = _patients(rng, patients)
    visit_frame = _visits(rng, patient_frame["patient_id"].to_list())

    _write_parquet(patient_frame, data_dir / "patients.parquet")
    _write_parquet(visit_frame, data_dir / "visits.parquet")
    config = folder / CONFIG_NAME
    _write_text(config, _CONFIG_TEMPLATE)
    return config


def _patients(rng: random.Random, n: int) -> pl.DataFrame:
    """One row per patient; ids unique and non-sequential so row order leaks nothing."""
    ids = rng.sample(range(100_000, 1_000_000), n)
    regions = _regions(rng, n)
    diag_names = list(DIAGNOSES)
    diag_weights = list(DIAGNOSES.values())

    names: list[str] = []
    ssns: list[str] = []
    ages: list[int] = []
    sexes: list[str] = []
    zips: list[str] = []
    incomes: list[float] = []
    diagnoses: list[str] = []
    seen_ssn: set[str] = set()
    for region in regions:
        sex = "F" if rng.random() < 0.52 else "M"
        first = rng.choice(_FIRST_NAMES_F if sex == "F" else _FIRST_NAMES_M)
        names.append(f"{first} {rng.choice(_LAST_NAMES)}")
        ssns.append(_unique_ssn(rng, seen_ssn))
        age = min(95, max(18, round(rng.triangular(18, 95, 52))))
        ages.append(age)
        sexes.append(sex)
        if region == SMALL_REGION:
            zips.append(f"{_SMALL_REGION_ZIP_PREFIX}{rng.randrange(1000):03d}")
        else:
            zips.append(f"{REGIONS[region][1]}{rng.randrange(10_000):04d}")
        # Income peaks in mid-career and is log-normal like real incomes.
        career = 1.0 - abs(age - 50) / 60
        incomes.append(round(rng.lognormvariate(10.6, 0.5) * (0.6 + 0.6 * career), 2))
        diagnoses.append(rng.choices(diag_names, weights=diag_weights)[0])

    return pl.DataFrame(
        {
            "patient_id": ids,
            "name": names,
            "ssn": ssns,
            "age": ages,
            "sex": sexes,
            "region": regions,
            "zip": zips,
            "income": incomes,
            "diagnosis": diagnoses,
        },
        schema={
            "patient_id": pl.Int64,
            "name": pl.String,
            "ssn": pl.String,
            "age": pl.Int64,
            "sex": pl.String,
            "region": pl.String,
            "zip": pl.String,
            "income": pl.Float64,
            "diagnosis": pl.String,
        },
    )


def _regions(rng: random.Random, n: int) -> list[str]:
    """Uneven regions, with exactly `SMALL_REGION_SIZE` patients in `SMALL_REGION`."""
    names = list(REGIONS)
    weights = [w for w, _ in REGIONS.values()]
    out = rng.choices(names, weights=weights, k=n)
    for i in rng.sample(range(n), SMALL_REGION_SIZE):
        out[i] = SMALL_REGION
    return out


def _unique_ssn(rng: random.Random, seen: set[str]) -> str:
    """A plausible, unique "NNN-NN-NNNN" (area never 000, 666 or 9xx; group/serial never 0)."""
    while True:
        area = rng.randrange(1, 900)
        if area == 666:
            continue
        ssn = f"{area:03d}-{rng.randrange(1, 100):02d}-{rng.randrange(1, 10_000):04d}"
        if ssn not in seen:
            seen.add(ssn)
            return ssn


def _visits(rng: random.Random, patient_ids: list[int]) -> pl.DataFrame:
    """0-12 visits per patient (skewed), sorted by date, with sequential visit ids."""
    dept_names = list(DEPARTMENTS)
    dept_weights = [w for w, _ in DEPARTMENTS.values()]
    span = (_LAST_DAY - _FIRST_DAY).days
    counts = rng.choices(range(len(_VISIT_COUNT_WEIGHTS)), weights=_VISIT_COUNT_WEIGHTS, k=len(patient_ids))

    rows: list[tuple[dt.date, int, str, float]] = []
    for pid, count in zip(patient_ids, counts):
        for _ in range(count):
            day = _FIRST_DAY + dt.timedelta(days=rng.randrange(span + 1))
            dept = rng.choices(dept_names, weights=dept_weights)[0]
            median = DEPARTMENTS[dept][1]
            cost = round(median * rng.lognormvariate(0.0, 0.45), 2)
            rows.append((day, pid, dept, cost))
    rows.sort(key=lambda r: (r[0], r[1]))

    return pl.DataFrame(
        {
            "visit_id": list(range(1, len(rows) + 1)),
            "patient_id": [r[1] for r in rows],
            "date": [r[0] for r in rows],
            "department": [r[2] for r in rows],
            "cost": [r[3] for r in rows],
        },
        schema={
            "visit_id": pl.Int64,
            "patient_id": pl.Int64,
            "date": pl.Date,
            "department": pl.String,
            "cost": pl.Float64,
        },
    )


def _write_parquet(frame: pl.DataFrame, target: Path) -> None:
    """Write via a temporary file and rename, so a running kernel never sees half a file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        frame.write_parquet(tmp, statistics=True)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_text(target: Path, text: str) -> None:
    """Atomic text write, for the same reason as `_write_parquet`."""
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(text)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m bastion_kernel.demo [FOLDER]`: generate the demo and print the config path."""
    args = list(sys.argv[1:] if argv is None else argv)
    folder = Path(args[0]) if args else Path("demo")
    print(generate(folder))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
