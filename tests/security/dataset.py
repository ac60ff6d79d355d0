"""The attack suite's synthetic data: ordinary people plus planted canaries.

Why canaries: an attack succeeds when the analyst learns something about one
individual, and the simplest proof that nothing was learnt is that a value
only that individual has never reaches the client. Each canary is a value no
one else has, written so it cannot occur by accident in an aggregate:

* ``CANARY_ID`` (42424) is one person with a unique name (masked), a unique
  SSN (masked), an outlier income and the only person in zip code ``97999``;
* ``HEAVY_ID`` (31337) is one person with ``HEAVY_ROWS`` visits, all of them
  in a ward nobody else visits and at a cost nobody else pays, so counting
  *rows* there looks like a big group while it is one individual.

Every other person has a name and an SSN too (masked): none of those may
appear either. Generated with polars only, deterministically.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import dataclass
from pathlib import Path

import polars as pl

K = 10
N_PEOPLE = 600
CANARY_ID = 42424
CANARY_NAME = "Zebulon Quixote-Vandermeer"
CANARY_SSN = "987-65-4329"
CANARY_INCOME = 8675309
CANARY_ZIP = "97999"
CANARY_AGE = 103
HEAVY_ID = 31337
HEAVY_ROWS = 437
HEAVY_WARD = "Oubliette"
HEAVY_COST = 2718.28

REGIONS = ("North", "South", "East", "West")
ZIPS = tuple(f"{10100 + 7 * i}" for i in range(20))  # 30 people each
WARDS = ("Cardiology", "Oncology", "Maternity", "Emergency")

# The strings that would prove a leak, each with the ways polars or JSON may render it.
CANARY_STRINGS: dict[str, tuple[str, ...]] = {
    "name": (CANARY_NAME, "Zebulon", "Vandermeer"),
    "ssn": (CANARY_SSN, "987654329"),
    "income": (str(CANARY_INCOME), "8.675309e6", "8.675309e+06", "8,675,309", "8_675_309", "8675309.0"),
    "zip": (CANARY_ZIP,),
    "ward": (HEAVY_WARD,),
    "cost": (str(HEAVY_COST), "2718.28"),
}
# As whole tokens: a mean such as 52917.979990 must not count as the zip 97999.
_TOKEN = r"(?<![\w.]){}(?![\w])"
# What every masked value looks like (see make_people), so a text is scanned once per shape.
_MASKED_SHAPES = (re.compile(r"Person\d{4} Quorr"), re.compile(r"\d{3}-\d{2}-\d{4}"),
                  re.compile(re.escape(CANARY_NAME)))


@dataclass(frozen=True)
class Dataset:
    """Where the data lives and what must never leave it."""

    root: Path
    data: Path
    people: pl.DataFrame
    visits: pl.DataFrame

    @property
    def masked_values(self) -> set[str]:
        """Every masked value of every person (names and SSNs): all secrets."""
        return set(self.people["name"].to_list()) | set(self.people["ssn"].to_list())


def make_people() -> pl.DataFrame:
    ids = [1000 + 3 * i for i in range(N_PEOPLE - 1)] + [CANARY_ID]
    n = len(ids)
    rows = range(n)
    df = pl.DataFrame({
        "person_id": ids,
        "name": [f"Person{i:04d} Quorr" for i in rows],
        "ssn": [f"{500 + i % 97:03d}-{11 + i % 83:02d}-{2000 + i:04d}" for i in rows],
        "age": [18 + (i * 7) % 70 for i in rows],
        "sex": ["F" if i % 2 else "M" for i in rows],
        "income": [20_000 + (i * 137) % 60_000 for i in rows],
        "zip": [ZIPS[i % len(ZIPS)] for i in rows],
        "region": [REGIONS[i % len(REGIONS)] for i in rows],
        "birth_date": [dt.date(1930, 1, 1) + dt.timedelta(days=(i * 311) % 25_000) for i in rows],
        "score": [round(((i * 53) % 1000) / 10, 1) for i in rows],
    }, schema_overrides={"income": pl.Int64})
    canary = pl.col("person_id") == CANARY_ID
    return df.with_columns(
        name=pl.when(canary).then(pl.lit(CANARY_NAME)).otherwise("name"),
        ssn=pl.when(canary).then(pl.lit(CANARY_SSN)).otherwise("ssn"),
        income=pl.when(canary).then(pl.lit(CANARY_INCOME)).otherwise("income"),
        zip=pl.when(canary).then(pl.lit(CANARY_ZIP)).otherwise("zip"),
        age=pl.when(canary).then(pl.lit(CANARY_AGE)).otherwise("age"),
    )


def make_visits(people: pl.DataFrame) -> pl.DataFrame:
    pid: list[int] = []
    ward: list[str] = []
    cost: list[float] = []
    day: list[dt.date] = []
    ids = people["person_id"].to_list()
    for i, p in enumerate(ids[:-1]):  # the canary person has no visits
        for j in range(i % 4):
            pid.append(p)
            ward.append(WARDS[(i + j) % len(WARDS)])
            cost.append(float(50 + (i * 31 + j * 17) % 900))
            day.append(dt.date(2023, 1, 1) + dt.timedelta(days=(i * 13 + j * 29) % 700))
    for j in range(HEAVY_ROWS):
        pid.append(HEAVY_ID)
        ward.append(HEAVY_WARD)
        cost.append(HEAVY_COST)
        day.append(dt.date(2023, 1, 1) + dt.timedelta(days=j))
    return pl.DataFrame({"person_id": pid, "ward": ward, "cost": cost, "visit_date": day},
                        schema={"person_id": pl.Int64, "ward": pl.String, "cost": pl.Float64,
                                "visit_date": pl.Date})


def generate(root: Path) -> Dataset:
    """Write people.parquet and visits.parquet under root/data."""
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    people = make_people()
    visits = make_visits(people)
    people.write_parquet(data / "people.parquet")
    visits.write_parquet(data / "visits.parquet")
    return Dataset(root, data, people, visits)


def write_deployment(ds: Dataset, folder: Path, *, on_violation: str = "review", extra: str = "") -> Path:
    """A deployment over the dataset with its own state folder (so release histories never mix)."""
    folder.mkdir(parents=True, exist_ok=True)
    text = (
        "[bastion]\n"
        'state_dir = "state"\n'
        f"min_group_size = {K}\n"
        f'on_violation = "{on_violation}"\n'
        "\n[datasets.people]\n"
        f"path = {json.dumps(str(ds.data / 'people.parquet'))}\n"
        'privacy_unit = "person_id"\n'
        'masked = ["name", "ssn"]\n'
        "\n[datasets.visits]\n"
        f"path = {json.dumps(str(ds.data / 'visits.parquet'))}\n"
        'privacy_unit = "person_id"\n'
        f"{extra}"
    )
    path = folder / "bastion.toml"
    path.write_text(text, encoding="utf-8")
    return path


def leaked(text: str, cell: str, masked_values: set[str] = frozenset()) -> list[str]:  # type: ignore[assignment]
    """Canary renderings (and masked values) found in `text`, ignoring what the cell itself typed.

    The cell is echoed back (execute_input, error excerpts, the review widget),
    so a value the analyst typed is not a leak; everything else is.
    """
    found = []
    for renderings in CANARY_STRINGS.values():
        for r in renderings:
            if r in cell:
                continue
            if re.search(_TOKEN.format(re.escape(r)), text):
                found.append(r)
    if masked_values:
        # One pass per shape of masked value (names, SSNs), not one scan per person.
        candidates = set()
        for pattern in _MASKED_SHAPES:
            candidates.update(pattern.findall(text))
        found += sorted(v for v in candidates & set(masked_values) if v not in cell)
    return found
