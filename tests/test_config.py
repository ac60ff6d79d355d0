"""Specification of the deployment-file loader, `bastion_kernel.config.load`.

Why table-driven: the loader's promise is that *every* mistake an owner can
make in the deployment file stops the kernel with a `ConfigError` naming the
offending key. A table of (broken file, key the message must name) makes each
promise one line, and makes a missing one easy to spot in review.
"""

from __future__ import annotations

import dataclasses
import getpass
import hashlib
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest

from bastion_kernel import config
from bastion_kernel.errors import ConfigError

# The documented shape, as an owner would write it. `people` is a small Parquet
# file created by the `site` fixture; `pid` identifies a person.
BASE = """\
[bastion]
state_dir = "state"
min_group_size = 10
on_violation = "review"

[datasets.people]
path = "data/people.parquet"
privacy_unit = "pid"
masked = ["name"]
"""

PEOPLE = pl.DataFrame(
    {
        "pid": [1, 1, 2, 3],
        "name": ["Ann", "Ann", "Bob", "Cy"],
        "age": [31, 31, 45, 52],
    }
)


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A folder holding every kind of source the loader accepts, plus broken ones."""
    data = tmp_path / "data"
    data.mkdir()
    PEOPLE.write_parquet(data / "people.parquet")
    PEOPLE.write_csv(data / "people.csv")
    PEOPLE.write_csv(data / "people.txt")
    parts = data / "parts"
    parts.mkdir()
    PEOPLE.head(2).write_parquet(parts / "part-0.parquet")
    PEOPLE.tail(2).write_parquet(parts / "part-1.parquet")
    (data / "empty").mkdir()
    PEOPLE.with_columns(pl.lit(1).alias("__bastion_row")).write_parquet(data / "reserved.parquet")
    (data / "garbage.parquet").write_bytes(b"this is not parquet")
    return tmp_path


def _write(folder: Path, text: str, name: str = "bastion.toml") -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def _replace(old: str, new: str) -> Callable[[str], str]:
    """A transform of BASE that must change it (guards against typos in the table)."""

    def apply(text: str) -> str:
        assert old in text, f"{old!r} not in BASE"
        return text.replace(old, new, 1)

    return apply


def _append(extra: str) -> Callable[[str], str]:
    return lambda text: text + "\n" + extra + "\n"


def _whole(doc: str) -> Callable[[str], str]:
    return lambda _text: doc


# --------------------------------------------------------------------------
# The documented shape
# --------------------------------------------------------------------------


def test_documented_shape_loads(site: Path) -> None:
    path = _write(site, BASE)
    dep = config.load(path)

    assert dep.path == path.resolve()
    assert dep.digest == hashlib.sha256(path.read_bytes()).hexdigest()
    assert dep.state_dir == site / "state"
    assert dep.min_group_size == 10
    assert dep.on_violation == "review"
    assert dep.limits == config.Limits()
    assert list(dep.datasets) == ["people"]
    ds = dep.datasets["people"]
    assert ds == config.DatasetConfig(
        name="people",
        path=str(site / "data" / "people.parquet"),
        format="parquet",
        privacy_unit="pid",
        masked=("name",),
        min_group_size=10,
        on_violation="review",
        users=None,
    )


def test_loading_reads_no_state(site: Path) -> None:
    """Loading validates; it must not create state_dir (the kernel does that when it starts)."""
    config.load(_write(site, BASE))
    assert not (site / "state").exists()


def test_defaults_when_bastion_table_is_empty(site: Path) -> None:
    dep = config.load(_write(site, '[bastion]\n[datasets.people]\npath = "data/people.parquet"\n'))
    assert dep.state_dir == site / "state"
    assert dep.min_group_size == 10
    assert dep.on_violation == "review"
    ds = dep.datasets["people"]
    assert (ds.privacy_unit, ds.masked, ds.users) == (None, (), None)


def test_dataset_inherits_and_overrides_policy(site: Path) -> None:
    text = BASE.replace("min_group_size = 10", "min_group_size = 7").replace(
        'on_violation = "review"', 'on_violation = "reject"'
    ) + (
        "\n[datasets.strict]\n"
        'path = "data/people.csv"\n'
        'privacy_unit = "pid"\n'
        "min_group_size = 30\n"
        'on_violation = "review"\n'
    )
    dep = config.load(_write(site, text))
    assert (dep.datasets["people"].min_group_size, dep.datasets["people"].on_violation) == (7, "reject")
    assert (dep.datasets["strict"].min_group_size, dep.datasets["strict"].on_violation) == (30, "review")


def test_limits_partial_override_keeps_other_defaults(site: Path) -> None:
    dep = config.load(_write(site, BASE + "\n[limits]\nmax_nodes = 500\nquery_timeout_s = 30\n"))
    assert dep.limits == dataclasses.replace(config.Limits(), max_nodes=500, query_timeout_s=30.0)
    assert isinstance(dep.limits.query_timeout_s, float)
    assert isinstance(dep.limits.max_nodes, int)


def test_deployment_is_frozen(site: Path) -> None:
    dep = config.load(_write(site, BASE))
    with pytest.raises(dataclasses.FrozenInstanceError):
        dep.min_group_size = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        dep.datasets["people"].masked = ()  # type: ignore[misc]


def test_digest_tracks_file_content(site: Path) -> None:
    first = config.load(_write(site, BASE)).digest
    assert config.load(_write(site, BASE)).digest == first
    assert config.load(_write(site, BASE + "# a comment\n")).digest != first


# --------------------------------------------------------------------------
# Paths and sources
# --------------------------------------------------------------------------


def test_relative_paths_resolve_against_the_files_folder(
    site: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf_dir = site / "conf"
    conf_dir.mkdir()
    text = BASE.replace('"data/people.parquet"', '"../data/people.parquet"').replace(
        'state_dir = "state"', 'state_dir = "../var/state"'
    )
    _write(conf_dir, text)
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    dep = config.load(conf_dir / "bastion.toml")
    assert Path(dep.datasets["people"].path).resolve() == (site / "data" / "people.parquet").resolve()
    assert dep.state_dir.resolve() == (site / "var" / "state").resolve()


def test_relative_config_path_is_resolved_against_cwd(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(site, BASE)
    monkeypatch.chdir(site / "data")
    dep = config.load("../bastion.toml")
    assert dep.path == (site / "bastion.toml").resolve()
    assert dep.path.is_absolute()


def test_absolute_and_home_paths(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = site / "home"
    home.mkdir()
    PEOPLE.write_parquet(home / "mine.parquet")
    monkeypatch.setenv("HOME", str(home))
    absolute = site / "data" / "people.parquet"
    text = (
        f'[bastion]\nstate_dir = "{site / "abs-state"}"\n'
        f'[datasets.a]\npath = "{absolute}"\n'
        '[datasets.h]\npath = "~/mine.parquet"\n'
    )
    conf_dir = site / "conf"
    conf_dir.mkdir()
    dep = config.load(_write(conf_dir, text))
    assert dep.state_dir == site / "abs-state"
    assert dep.datasets["a"].path == str(absolute)
    assert dep.datasets["h"].path == str(home / "mine.parquet")


@pytest.mark.parametrize(
    ("raw_path", "expected", "fmt", "rows"),
    [
        pytest.param("data/people.parquet", "data/people.parquet", "parquet", 4, id="parquet-file"),
        pytest.param("data/parts", "data/parts/*.parquet", "parquet", 4, id="parquet-folder"),
        pytest.param("data/parts/", "data/parts/*.parquet", "parquet", 4, id="parquet-folder-slash"),
        pytest.param("data/parts/part-*.parquet", "data/parts/part-*.parquet", "parquet", 4, id="parquet-glob"),
        pytest.param("data/parts/part-[01].parquet", "data/parts/part-[01].parquet", "parquet", 4, id="parquet-glob-class"),
        pytest.param("data/people.csv", "data/people.csv", "csv", 4, id="csv-file"),
        pytest.param("data/people.CSV", "data/people.CSV", "csv", 4, id="csv-upper-suffix"),
    ],
)
def test_sources(site: Path, raw_path: str, expected: str, fmt: str, rows: int) -> None:
    from bastion_kernel.sources import scan

    if raw_path.endswith(".CSV"):
        PEOPLE.write_csv(site / raw_path)
    dep = config.load(_write(site, BASE.replace('"data/people.parquet"', f'"{raw_path}"')))
    ds = dep.datasets["people"]
    assert ds.format == fmt
    assert Path(ds.path) == site / expected
    frame = scan(ds).collect()
    assert frame.height == rows
    assert set(frame.columns) == set(PEOPLE.columns)


def test_explicit_format_overrides_suffix(site: Path) -> None:
    text = BASE.replace('"data/people.parquet"', '"data/people.txt"\nformat = "csv"')
    ds = config.load(_write(site, text)).datasets["people"]
    assert (ds.format, ds.path) == ("csv", str(site / "data" / "people.txt"))


def test_csv_columns_are_checked_too(site: Path) -> None:
    text = BASE.replace('"data/people.parquet"', '"data/people.csv"').replace('["name"]', '["nme"]')
    with pytest.raises(ConfigError, match=r"datasets\.people\.masked"):
        config.load(_write(site, text))


# --------------------------------------------------------------------------
# Every mistake is a ConfigError naming the key
# --------------------------------------------------------------------------

# (id, transform of BASE, substrings the message must contain)
ERRORS: list[tuple[str, Callable[[str], str], tuple[str, ...]]] = [
    # -- the file itself
    ("malformed-toml", _replace("min_group_size = 10", "min_group_size = = 10"), ("not valid TOML", "line 3")),
    ("unclosed-table", _append("[datasets.other"), ("not valid TOML", "line")),
    ("duplicate-key", _replace("min_group_size = 10", "min_group_size = 10\nmin_group_size = 11"), ("not valid TOML", "line 4")),
    # -- top level
    ("unknown-top-level-table", _append("[extra]\nx = 1"), ("unknown key extra",)),
    ("unknown-top-level-scalar", lambda t: "oops = 1\n" + t, ("unknown key oops",)),
    ("top-level-misspelt-datasets", _replace("[datasets.people]", "[dataset.people]"), ("unknown key dataset",)),
    ("missing-bastion-table", lambda t: t[t.index("[datasets.people]"):], ("[bastion]",)),
    ("bastion-not-a-table", _whole('bastion = 1\n[datasets.people]\npath = "data/people.parquet"\n'), ("bastion",)),
    # -- [bastion]
    ("unknown-bastion-key", _replace('on_violation = "review"', 'on_violaton = "review"'), ("bastion.on_violaton",)),
    ("state-dir-not-string", _replace('state_dir = "state"', "state_dir = 5"), ("bastion.state_dir",)),
    ("on-violation-unknown", _replace('on_violation = "review"', 'on_violation = "allow"'), ("bastion.on_violation", "allow")),
    ("on-violation-case", _replace('on_violation = "review"', 'on_violation = "Review"'), ("bastion.on_violation",)),
    ("on-violation-not-string", _replace('on_violation = "review"', "on_violation = true"), ("bastion.on_violation",)),
    ("min-group-size-zero", _replace("min_group_size = 10", "min_group_size = 0"), ("bastion.min_group_size",)),
    ("min-group-size-negative", _replace("min_group_size = 10", "min_group_size = -5"), ("bastion.min_group_size",)),
    ("min-group-size-string", _replace("min_group_size = 10", 'min_group_size = "10"'), ("bastion.min_group_size",)),
    ("min-group-size-float", _replace("min_group_size = 10", "min_group_size = 10.0"), ("bastion.min_group_size",)),
    ("min-group-size-bool", _replace("min_group_size = 10", "min_group_size = true"), ("bastion.min_group_size",)),
    # -- datasets
    ("no-datasets", lambda t: t.split("[datasets.people]")[0], ("datasets",)),
    ("empty-datasets-table", lambda t: t.split("[datasets.people]")[0] + "[datasets]\n", ("datasets",)),
    ("dataset-not-a-table", lambda t: t.split("[datasets.people]")[0] + "[datasets]\npeople = 5\n", ("datasets.people",)),
    ("dataset-name-not-identifier", _replace("[datasets.people]", '[datasets."my-people"]'), ("datasets.my-people",)),
    ("dataset-name-underscore", _replace("[datasets.people]", "[datasets._people]"), ("datasets._people",)),
    ("unknown-dataset-key", _replace('masked = ["name"]', 'maskd = ["name"]'), ("datasets.people.maskd",)),
    ("path-missing", _replace('path = "data/people.parquet"\n', ""), ("datasets.people.path",)),
    ("path-not-string", _replace('"data/people.parquet"', '["data/people.parquet"]'), ("datasets.people.path",)),
    ("dataset-file-missing", _replace('"data/people.parquet"', '"data/nobody.parquet"'), ("datasets.people.path", "nobody.parquet")),
    ("dataset-folder-empty", _replace('"data/people.parquet"', '"data/empty"'), ("datasets.people.path", "empty")),
    ("dataset-glob-matches-nothing", _replace('"data/people.parquet"', '"data/parts/none-*.parquet"'), ("datasets.people.path",)),
    ("dataset-file-unreadable", _replace('"data/people.parquet"', '"data/garbage.parquet"'), ("datasets.people.path",)),
    ("reserved-column-prefix", _replace('"data/people.parquet"', '"data/reserved.parquet"'), ("datasets.people.path", "__bastion")),
    ("format-unknown", _replace('masked = ["name"]', 'masked = ["name"]\nformat = "json"'), ("datasets.people.format",)),
    ("masked-column-missing", _replace('["name"]', '["name", "ssn"]'), ("datasets.people.masked", "'ssn'")),
    ("masked-not-list", _replace('["name"]', '"name"'), ("datasets.people.masked",)),
    ("masked-not-strings", _replace('["name"]', "[1]"), ("datasets.people.masked",)),
    ("privacy-unit-missing-column", _replace('privacy_unit = "pid"', 'privacy_unit = "patient_id"'), ("datasets.people.privacy_unit", "'patient_id'")),
    ("privacy-unit-not-string", _replace('privacy_unit = "pid"', 'privacy_unit = ["pid"]'), ("datasets.people.privacy_unit",)),
    ("dataset-on-violation", _replace('masked = ["name"]', 'masked = ["name"]\non_violation = "ignore"'), ("datasets.people.on_violation",)),
    ("dataset-min-group-size-zero", _replace('masked = ["name"]', 'masked = ["name"]\nmin_group_size = 0'), ("datasets.people.min_group_size",)),
    ("dataset-min-group-size-string", _replace('masked = ["name"]', 'masked = ["name"]\nmin_group_size = "5"'), ("datasets.people.min_group_size",)),
    ("users-not-list", _replace('masked = ["name"]', 'masked = ["name"]\nusers = "alice"'), ("datasets.people.users",)),
    ("users-not-strings", _replace('masked = ["name"]', 'masked = ["name"]\nusers = [1, 2]'), ("datasets.people.users",)),
    # -- [limits]
    ("unknown-limits-key", _append("[limits]\nmax_rows = 5"), ("limits.max_rows",)),
    ("limits-not-a-table", lambda t: "limits = 5\n" + t, ("limits",)),
    ("limit-zero", _append("[limits]\nmax_nodes = 0"), ("limits.max_nodes",)),
    ("limit-negative", _append("[limits]\nquery_timeout_s = -1.0"), ("limits.query_timeout_s",)),
    ("limit-string", _append('[limits]\nmax_depth = "60"'), ("limits.max_depth",)),
    ("limit-bool", _append("[limits]\nquery_memory_mb = true"), ("limits.query_memory_mb",)),
]


@pytest.mark.parametrize(("transform", "needles"), [pytest.param(t, n, id=i) for i, t, n in ERRORS])
def test_mistake_is_config_error_naming_the_key(
    site: Path, transform: Callable[[str], str], needles: tuple[str, ...]
) -> None:
    text = transform(BASE)
    assert text != BASE
    with pytest.raises(ConfigError) as info:
        config.load(_write(site, text))
    err = info.value
    assert err.kind == "config"
    for needle in needles:
        assert needle in err.message, f"{needle!r} not in {err.message!r}"
    assert "Traceback" not in err.render()


def test_unknown_key_hint_lists_allowed_keys(site: Path) -> None:
    with pytest.raises(ConfigError) as info:
        config.load(_write(site, BASE.replace('masked = ["name"]', 'maskd = ["name"]')))
    assert info.value.hint is not None
    assert "masked" in info.value.hint and "privacy_unit" in info.value.hint


def test_non_utf8_file_is_config_error(site: Path) -> None:
    path = site / "bastion.toml"
    path.write_bytes(BASE.encode("utf-8") + b"# \xff\xfe\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        config.load(path)


def test_missing_deployment_file_is_config_error(site: Path) -> None:
    with pytest.raises(ConfigError, match="nowhere.toml"):
        config.load(site / "nowhere.toml")


# Regression: fractional and non-finite limits were once truncated or crashed.
@pytest.mark.parametrize("value", ["0.5", "2.5"])
def test_fractional_integer_limit_is_config_error(site: Path, value: str) -> None:
    with pytest.raises(ConfigError, match=r"limits\.max_nodes"):
        config.load(_write(site, BASE + f"\n[limits]\nmax_nodes = {value}\n"))


@pytest.mark.parametrize("line", ["max_nodes = inf", "max_nodes = nan", "query_timeout_s = nan"])
def test_non_finite_limit_is_config_error(site: Path, line: str) -> None:
    key = line.split(" ")[0]
    with pytest.raises(ConfigError, match=rf"limits\.{key}"):
        config.load(_write(site, BASE + f"\n[limits]\n{line}\n"))


# --------------------------------------------------------------------------
# BASTION_CONFIG
# --------------------------------------------------------------------------


def test_bastion_config_env_is_used(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(site, BASE)
    monkeypatch.setenv(config.ENV_VAR, str(path))
    assert config.load().path == path.resolve()


def test_explicit_path_wins_over_env(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(site, BASE)
    monkeypatch.setenv(config.ENV_VAR, str(site / "other.toml"))
    assert config.load(path).path == path.resolve()


@pytest.mark.parametrize("value", [None, ""], ids=["unset", "empty"])
def test_bastion_config_unset_is_config_error(monkeypatch: pytest.MonkeyPatch, value: str | None) -> None:
    if value is None:
        monkeypatch.delenv(config.ENV_VAR, raising=False)
    else:
        monkeypatch.setenv(config.ENV_VAR, value)
    with pytest.raises(ConfigError) as info:
        config.load()
    assert "BASTION_CONFIG" in info.value.message
    assert info.value.hint is not None and "policies/" in info.value.hint


# --------------------------------------------------------------------------
# Who sees what
# --------------------------------------------------------------------------

USERS_DOC = BASE + (
    '\n[datasets.team]\npath = "data/people.csv"\nprivacy_unit = "pid"\nusers = ["alice", "bob"]\n'
    '\n[datasets.nobody]\npath = "data/people.csv"\nusers = []\n'
)


@pytest.mark.parametrize(
    ("user", "visible"),
    [
        ("alice", ["people", "team"]),
        ("bob", ["people", "team"]),
        ("mallory", ["people"]),
        ("Alice", ["people"]),  # names are compared exactly
        ("", ["people"]),
    ],
)
def test_datasets_for_hides_datasets_not_listing_the_user(site: Path, user: str, visible: list[str]) -> None:
    dep = config.load(_write(site, USERS_DOC))
    assert list(dep.datasets_for(user)) == visible
    assert set(dep.datasets) == {"people", "team", "nobody"}  # the full set is still known to the owner
    assert dep.datasets["team"].users == ("alice", "bob")
    assert dep.datasets["nobody"].users == ()


def test_current_user_prefers_jupyterhub_user(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JUPYTERHUB_USER", "hub-alice")
    monkeypatch.setenv("USER", "os-bob")
    monkeypatch.setattr(getpass, "getuser", lambda: "os-bob")
    assert config.current_user() == "hub-alice"


@pytest.mark.parametrize("hub", [None, ""], ids=["unset", "empty"])
def test_current_user_falls_back_to_os_login(monkeypatch: pytest.MonkeyPatch, hub: str | None) -> None:
    if hub is None:
        monkeypatch.delenv("JUPYTERHUB_USER", raising=False)
    else:
        monkeypatch.setenv("JUPYTERHUB_USER", hub)
    monkeypatch.setattr(getpass, "getuser", lambda: "os-bob")
    assert config.current_user() == "os-bob"


def test_current_user_without_passwd_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_passwd() -> str:
        raise KeyError("getpwuid(): uid not found")

    monkeypatch.delenv("JUPYTERHUB_USER", raising=False)
    monkeypatch.setattr(getpass, "getuser", no_passwd)
    monkeypatch.setenv("USER", "container")
    assert config.current_user() == "container"
    monkeypatch.delenv("USER")
    assert config.current_user() == "unknown"
