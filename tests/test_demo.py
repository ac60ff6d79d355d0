"""The synthetic demo hospital: loadable, consistent, deterministic.

Why these checks: the demo is the first thing a newcomer runs, and other
tests use it as a fixture. It must load with the strict config loader, its
tables must join cleanly, and it must contain the tiny "Islands" region that
makes the small-group rule visible. Determinism lets tests and docs quote
exact numbers.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from pathlib import Path

import polars as pl
import pytest

from bastion_kernel import config, demo


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One default-size demo shared by the read-only checks below."""
    return demo.generate(tmp_path_factory.mktemp("demo"))


def _patients(cfg: Path) -> pl.DataFrame:
    return pl.read_parquet(cfg.parent / "data" / "patients.parquet")


def _visits(cfg: Path) -> pl.DataFrame:
    return pl.read_parquet(cfg.parent / "data" / "visits.parquet")


def test_returns_config_path_that_loads(generated: Path) -> None:
    assert generated.name == "bastion.toml"
    dep = config.load(generated)
    assert dep.min_group_size == 10
    assert dep.on_violation == "review"
    assert dep.state_dir == generated.parent / "state"
    assert set(dep.datasets) == {"patients", "visits"}
    assert dep.datasets["patients"].masked == ("name", "ssn")
    assert dep.datasets["patients"].privacy_unit == "patient_id"
    assert dep.datasets["visits"].privacy_unit == "patient_id"
    assert dep.datasets["visits"].masked == ()
    assert Path(dep.datasets["patients"].path) == generated.parent / "data" / "patients.parquet"


def test_config_uses_relative_paths(generated: Path) -> None:
    """Relative paths let the demo folder be moved or mounted elsewhere."""
    text = generated.read_text(encoding="utf-8")
    assert 'path = "data/patients.parquet"' in text
    assert 'path = "data/visits.parquet"' in text
    assert 'state_dir = "state"' in text
    assert str(generated.parent) not in text


def test_patients_schema_and_values(generated: Path) -> None:
    p = _patients(generated)
    assert p.height == 5000
    assert p.schema == pl.Schema(
        {
            "patient_id": pl.Int64,
            "name": pl.String,
            "ssn": pl.String,
            "age": pl.Int64,
            "sex": pl.String,
            "region": pl.String,
            "zip": pl.String,
            "income": pl.Float64,
            "diagnosis": pl.String,
        }
    )
    assert p.null_count().sum_horizontal().item() == 0
    assert p["patient_id"].n_unique() == p.height
    assert p["age"].min() >= 18 and p["age"].max() <= 95
    assert set(p["sex"].unique()) == {"F", "M"}
    assert all(re.fullmatch(r"\d{3}-\d{2}-\d{4}", s) for s in p["ssn"])
    assert all(re.fullmatch(r"\d{5}", z) for z in p["zip"])
    assert all(re.fullmatch(r"[A-Z][a-z]+ [A-Z][a-z]+", n) for n in p["name"])
    assert p["income"].min() > 0
    assert 3 <= p["diagnosis"].n_unique() <= 10


def test_regions_are_uneven_with_tiny_islands(generated: Path) -> None:
    sizes = dict(_patients(generated).group_by("region").len().iter_rows())
    assert sizes.pop("Islands") == 3
    assert len(sizes) == 5
    big = sorted(sizes.values())
    assert big[0] >= 10, "every other region must be releasable"
    assert big[-1] > 2 * big[0], "regions should differ visibly in size"


def test_visits_reference_existing_patients(generated: Path) -> None:
    p, v = _patients(generated), _visits(generated)
    orphans = v.join(p.select("patient_id"), on="patient_id", how="anti")
    assert orphans.height == 0


def test_visits_schema_and_values(generated: Path) -> None:
    p, v = _patients(generated), _visits(generated)
    assert v.schema == pl.Schema(
        {
            "visit_id": pl.Int64,
            "patient_id": pl.Int64,
            "date": pl.Date,
            "department": pl.String,
            "cost": pl.Float64,
        }
    )
    assert v["visit_id"].n_unique() == v.height
    assert v["date"].min() >= dt.date(2024, 1, 1)
    assert v["date"].max() <= dt.date(2025, 12, 31)
    assert v["cost"].min() > 0
    per_patient = p.select("patient_id").join(
        v.group_by("patient_id").len(), on="patient_id", how="left"
    ).fill_null(0)["len"]
    assert per_patient.min() == 0
    assert per_patient.max() <= 12
    # Skewed: the median patient has fewer visits than the busiest ones by far.
    assert per_patient.median() < per_patient.max() / 2
    # Rows and individuals differ, which is why privacy_unit matters.
    assert v.height > v["patient_id"].n_unique()


def test_same_seed_gives_identical_files(tmp_path: Path) -> None:
    a = demo.generate(tmp_path / "a", patients=400, seed=11)
    b = demo.generate(tmp_path / "b", patients=400, seed=11)
    for rel in ("bastion.toml", "data/patients.parquet", "data/visits.parquet"):
        assert (a.parent / rel).read_bytes() == (b.parent / rel).read_bytes(), rel


def test_different_seed_gives_different_data(tmp_path: Path) -> None:
    a = demo.generate(tmp_path / "a", patients=400, seed=1)
    b = demo.generate(tmp_path / "b", patients=400, seed=2)
    assert not _patients(a).equals(_patients(b))


def test_regenerating_overwrites_data_and_keeps_state(tmp_path: Path) -> None:
    cfg = demo.generate(tmp_path, patients=200, seed=3)
    state = tmp_path / "state"
    state.mkdir()
    (state / "audit.log").write_text("keep me", encoding="utf-8")
    cfg.write_text("# edited by hand\n", encoding="utf-8")

    again = demo.generate(tmp_path, patients=300, seed=3)
    assert again == cfg
    assert (state / "audit.log").read_text(encoding="utf-8") == "keep me"
    assert _patients(cfg).height == 300
    config.load(cfg)  # the hand edit was replaced
    leftovers = [p.name for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []


def test_small_population_still_has_islands(tmp_path: Path) -> None:
    cfg = demo.generate(tmp_path, patients=3)
    assert _patients(cfg)["region"].to_list() == ["Islands"] * 3
    config.load(cfg)


@pytest.mark.parametrize("bad", [0, 2, -1])
def test_too_few_patients_is_refused(tmp_path: Path, bad: int) -> None:
    with pytest.raises(ValueError, match="at least 3"):
        demo.generate(tmp_path, patients=bad)


def test_fast_enough(tmp_path: Path) -> None:
    start = time.perf_counter()
    demo.generate(tmp_path)
    assert time.perf_counter() - start < 2.0
