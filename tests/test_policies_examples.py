"""The example deployment files in policies/ must stay loadable.

Why: owners start by copying an example. If the loader grows stricter, or an
example drifts (a key renamed, a column list edited), the first thing a new
owner sees would be a ConfigError in our own documentation. Each test copies
an example into a temporary folder, creates tiny data files with exactly the
columns the example names at exactly the paths it names, and loads it.
"""

from __future__ import annotations

import dataclasses
import shutil
import tomllib
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pytest

from bastion_kernel import config
from bastion_kernel.errors import ConfigError

POLICIES = Path(__file__).resolve().parent.parent / "policies"


@dataclass(frozen=True)
class Expect:
    """What one dataset of an example must load as, and how to fake its data."""

    layout: str  # "file" | "folder" | "glob" | "csv"
    privacy_unit: str
    masked: tuple[str, ...]
    extra_columns: tuple[str, ...]
    min_group_size: int
    on_violation: str
    users: tuple[str, ...] | None = None


EXAMPLES: dict[str, dict[str, Expect]] = {
    "hospital.toml": {
        "patients": Expect(
            layout="file",
            privacy_unit="patient_id",
            masked=("name", "ssn", "phone", "address"),
            extra_columns=("age", "zip", "diagnosis"),
            min_group_size=11,
            on_violation="review",
        ),
        "visits": Expect(
            layout="folder",
            privacy_unit="patient_id",
            masked=("attending_physician",),
            extra_columns=("visit_id", "department", "cost"),
            min_group_size=11,
            on_violation="review",
        ),
        "lab_results": Expect(
            layout="csv",
            privacy_unit="patient_id",
            masked=("sample_barcode",),
            extra_columns=("test", "value"),
            min_group_size=20,
            on_violation="reject",
            users=("alice", "bob"),
        ),
    },
    "bank.toml": {
        "customers": Expect(
            layout="file",
            privacy_unit="customer_id",
            masked=("full_name", "email", "phone", "iban", "date_of_birth"),
            extra_columns=("segment", "branch"),
            min_group_size=25,
            on_violation="reject",
        ),
        "transactions": Expect(
            layout="glob",
            privacy_unit="customer_id",
            masked=("counterparty_iban",),
            extra_columns=("amount", "category"),
            min_group_size=25,
            on_violation="review",
        ),
        "credit_scores": Expect(
            layout="csv",
            privacy_unit="customer_id",
            masked=(),
            extra_columns=("score",),
            min_group_size=50,
            on_violation="reject",
            users=("risk-analyst-1", "risk-analyst-2"),
        ),
    },
}


def _frame(expect: Expect, offset: int = 0) -> pl.DataFrame:
    """Three rows with the unit as an integer and every other named column as text."""
    data: dict[str, list[object]] = {expect.privacy_unit: [offset + 1, offset + 2, offset + 3]}
    for col in (*expect.masked, *expect.extra_columns):
        data[col] = [f"{col}-{offset + i}" for i in range(3)]
    return pl.DataFrame(data)


def _materialise(base: Path, raw_path: str, expect: Expect) -> None:
    """Create data at the path the example names, in the layout it describes."""
    target = base / raw_path
    if expect.layout == "file":
        assert raw_path.endswith(".parquet"), raw_path
        target.parent.mkdir(parents=True, exist_ok=True)
        _frame(expect).write_parquet(target)
    elif expect.layout == "csv":
        assert raw_path.endswith(".csv"), raw_path
        target.parent.mkdir(parents=True, exist_ok=True)
        _frame(expect).write_csv(target)
    elif expect.layout == "folder":
        target.mkdir(parents=True, exist_ok=True)
        _frame(expect, 0).write_parquet(target / "part-0.parquet")
        _frame(expect, 3).write_parquet(target / "part-1.parquet")
    elif expect.layout == "glob":
        assert raw_path.count("*") == 1, raw_path
        for i, stem in enumerate(("2025-01", "2025-02")):
            file = base / raw_path.replace("*", stem)
            file.parent.mkdir(parents=True, exist_ok=True)
            _frame(expect, 3 * i).write_parquet(file)
    else:  # pragma: no cover - table typo
        raise AssertionError(expect.layout)


def _install(example: str, tmp_path: Path) -> tuple[Path, dict[str, object]]:
    """Copy the example into tmp_path and create its data; return the copy and its TOML."""
    copy = tmp_path / example
    shutil.copyfile(POLICIES / example, copy)
    doc = tomllib.loads(copy.read_text(encoding="utf-8"))
    datasets = doc["datasets"]
    assert set(datasets) == set(EXAMPLES[example]), "update EXAMPLES to match the example file"
    for name, expect in EXAMPLES[example].items():
        raw_path = datasets[name]["path"]
        assert not Path(raw_path).is_absolute() and raw_path.startswith("data/"), raw_path
        _materialise(tmp_path, raw_path, expect)
    return copy, doc


@pytest.mark.parametrize("example", sorted(EXAMPLES))
def test_example_loads_with_stated_policy(example: str, tmp_path: Path) -> None:
    copy, _ = _install(example, tmp_path)
    dep = config.load(copy)
    assert set(dep.datasets) == set(EXAMPLES[example])
    for name, expect in EXAMPLES[example].items():
        ds = dep.datasets[name]
        assert ds.privacy_unit == expect.privacy_unit, name
        assert ds.masked == expect.masked, name
        assert ds.min_group_size == expect.min_group_size, name
        assert ds.on_violation == expect.on_violation, name
        assert ds.users == expect.users, name
        assert ds.format == ("csv" if expect.layout == "csv" else "parquet"), name


@pytest.mark.parametrize("example", sorted(EXAMPLES))
def test_example_data_is_readable_through_the_loaded_paths(example: str, tmp_path: Path) -> None:
    """Folder and glob paths must reach every file, not just the first."""
    from bastion_kernel.sources import scan

    copy, _ = _install(example, tmp_path)
    dep = config.load(copy)
    for name, expect in EXAMPLES[example].items():
        rows = scan(dep.datasets[name]).select(pl.len()).collect().item()
        assert rows == (6 if expect.layout in ("folder", "glob") else 3), name


@pytest.mark.parametrize("example", sorted(EXAMPLES))
def test_example_limits_are_the_ones_written(example: str, tmp_path: Path) -> None:
    copy, doc = _install(example, tmp_path)
    dep = config.load(copy)
    written = doc["limits"]
    assert isinstance(written, dict)
    # Every limit is spelled out, so owners see all the knobs that exist.
    assert set(written) == {f.name for f in dataclasses.fields(config.Limits)}
    for key, value in written.items():
        assert getattr(dep.limits, key) == value, key


def test_hospital_limits_are_the_defaults(tmp_path: Path) -> None:
    """hospital.toml documents the defaults; it must not drift from config.Limits."""
    copy, _ = _install("hospital.toml", tmp_path)
    assert config.load(copy).limits == config.Limits()


@pytest.mark.parametrize(
    ("example", "user", "visible"),
    [
        ("hospital.toml", "alice", {"patients", "visits", "lab_results"}),
        ("hospital.toml", "mallory", {"patients", "visits"}),
        ("bank.toml", "risk-analyst-2", {"customers", "transactions", "credit_scores"}),
        ("bank.toml", "intern", {"customers", "transactions"}),
    ],
)
def test_example_users_lists(example: str, user: str, visible: set[str], tmp_path: Path) -> None:
    copy, _ = _install(example, tmp_path)
    assert set(config.load(copy).datasets_for(user)) == visible


@pytest.mark.parametrize("example", sorted(EXAMPLES))
def test_example_as_shipped_refuses_to_start(example: str, tmp_path: Path) -> None:
    """Without the owner's data the example is an error naming a dataset path, never a kernel."""
    copy = tmp_path / example
    shutil.copyfile(POLICIES / example, copy)
    with pytest.raises(ConfigError) as info:
        config.load(copy)
    assert ".path" in info.value.message
