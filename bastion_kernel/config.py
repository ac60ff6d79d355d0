"""The owner's deployment file: loaded once, validated strictly, then frozen.

Why strict: a typo in a privacy setting (``maskd = [...]``) must not silently
yield a kernel that releases a column the owner meant to hide. Every unknown
key, wrong type, missing file or unknown column is a `ConfigError` naming the
key, raised before the kernel accepts a single cell.
"""

from __future__ import annotations

import getpass
import glob
import hashlib
import math
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError

ENV_VAR = "BASTION_CONFIG"
RESERVED_PREFIX = "__bastion"
ON_VIOLATION = ("review", "reject")


@dataclass(frozen=True)
class Limits:
    """Named resource limits; each has a sane default and a key under ``[limits]``."""

    max_cell_chars: int = 20_000
    max_nodes: int = 2_000
    max_depth: int = 60
    max_release_rows: int = 10_000
    query_timeout_s: float = 120.0
    query_memory_mb: int = 4_096


@dataclass(frozen=True)
class DatasetConfig:
    name: str
    path: str
    format: str  # "parquet" | "csv"
    privacy_unit: str | None
    masked: tuple[str, ...]
    min_group_size: int
    on_violation: str
    users: tuple[str, ...] | None
    max_share: float = 0.5  # dominance rule (`policy.rules.dominated`); 1 disables it

    def visible_to(self, user: str) -> bool:
        return self.users is None or user in self.users


@dataclass(frozen=True)
class Deployment:
    path: Path
    digest: str
    state_dir: Path
    min_group_size: int
    on_violation: str
    datasets: dict[str, DatasetConfig] = field(default_factory=dict)
    limits: Limits = field(default_factory=Limits)
    max_share: float = 0.5

    def datasets_for(self, user: str) -> dict[str, DatasetConfig]:
        """Only the datasets this user may see; the others do not exist for them."""
        return {n: d for n, d in self.datasets.items() if d.visible_to(user)}


_BASTION_KEYS = {"state_dir", "min_group_size", "max_share", "on_violation"}
_DATASET_KEYS = {"path", "privacy_unit", "masked", "min_group_size", "max_share", "on_violation", "users", "format"}
_TOP_KEYS = {"bastion", "datasets", "limits"}


def current_user() -> str:
    """`JUPYTERHUB_USER` when set (the hub says who is at the notebook), else the OS login."""
    user = os.environ.get("JUPYTERHUB_USER")
    if user:
        return user
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry in some containers
        return os.environ.get("USER", "unknown")


def config_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The deployment file named by `--config` or `BASTION_CONFIG`."""
    raw = explicit if explicit is not None else os.environ.get(ENV_VAR)
    if not raw:
        raise ConfigError(
            f"no deployment file: set {ENV_VAR} or pass --config PATH",
            hint="see policies/ for commented examples",
        )
    return Path(raw).expanduser().resolve()


def load(explicit: str | os.PathLike[str] | None = None, *, check_data: bool = True) -> Deployment:
    """Load and validate the deployment file; raise `ConfigError` naming the bad key.

    `check_data=False` skips reading each dataset's schema (masked columns and
    the privacy unit must exist): the kernel process, which never reads data,
    starts without importing polars; its query worker loads with the check.
    """
    path = config_path(explicit)
    try:
        raw_bytes = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read deployment file {path}: {exc.strerror}") from None
    try:
        doc = tomllib.loads(raw_bytes.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    return _build(doc, path, hashlib.sha256(raw_bytes).hexdigest(), check_data)


def _build(doc: dict[str, Any], path: Path, digest: str, check_data: bool = True) -> Deployment:
    base = path.parent
    _unknown(doc, _TOP_KEYS, "")
    top = _table(doc, "bastion", required=True)
    _unknown(top, _BASTION_KEYS, "bastion.")
    state_raw = _typed(top, "state_dir", str, "bastion.", default="state")
    state_dir = _resolve(base, state_raw)
    k_default = _positive_int(top, "min_group_size", "bastion.", default=10)
    share_default = _share(top, "max_share", "bastion.", default=0.5)
    onv_default = _choice(top, "on_violation", "bastion.", default="review")
    limits = _limits(_table(doc, "limits", required=False))
    raw_datasets = _table(doc, "datasets", required=False)
    if not raw_datasets:
        raise ConfigError("no [datasets.NAME] table: the deployment serves no data", hint="add at least one dataset")
    datasets: dict[str, DatasetConfig] = {}
    for name, table in raw_datasets.items():
        prefix = f"datasets.{name}."
        if not isinstance(table, dict):
            raise ConfigError(f"datasets.{name} must be a table")
        if not name.isidentifier() or name.startswith("_"):
            raise ConfigError(f"datasets.{name}: a dataset name must be a Python identifier not starting with '_'")
        _unknown(table, _DATASET_KEYS, prefix)
        datasets[name] = _dataset(name, table, base, prefix, k_default, onv_default, check_data, share_default)
    return Deployment(
        path=path,
        digest=digest,
        state_dir=state_dir,
        min_group_size=k_default,
        on_violation=onv_default,
        datasets=datasets,
        limits=limits,
        max_share=share_default,
    )


def _dataset(
    name: str, table: dict[str, Any], base: Path, prefix: str, k_default: int, onv_default: str,
    check_data: bool = True, share_default: float = 0.5,
) -> DatasetConfig:
    raw_path = _typed(table, "path", str, prefix)
    if raw_path is None:
        raise ConfigError(f"{prefix}path is required")
    resolved = _resolve(base, raw_path)
    fmt = _typed(table, "format", str, prefix, default=None)
    if fmt is None:
        fmt = "csv" if resolved.suffix.lower() == ".csv" else "parquet"
    if fmt not in ("csv", "parquet"):
        raise ConfigError(f"{prefix}format must be 'csv' or 'parquet', not {fmt!r}")
    if resolved.is_dir():
        if not any(resolved.glob("*.parquet")):
            raise ConfigError(f"{prefix}path: folder {resolved} holds no .parquet files")
        source = str(resolved / "*.parquet")
    elif any(ch in raw_path for ch in "*?["):
        if not glob.glob(str(resolved)):
            raise ConfigError(f"{prefix}path: no file matches {resolved}")
        source = str(resolved)
    else:
        if not resolved.is_file():
            raise ConfigError(f"{prefix}path: dataset file {resolved} does not exist")
        source = str(resolved)
    masked = _typed(table, "masked", list, prefix, default=[])
    if not all(isinstance(m, str) for m in masked):
        raise ConfigError(f"{prefix}masked must be a list of column names")
    users = _typed(table, "users", list, prefix, default=None)
    if users is not None and not all(isinstance(u, str) for u in users):
        raise ConfigError(f"{prefix}users must be a list of user names")
    unit = _typed(table, "privacy_unit", str, prefix, default=None)
    ds = DatasetConfig(
        name=name,
        path=source,
        format=fmt,
        privacy_unit=unit,
        masked=tuple(masked),
        min_group_size=_positive_int(table, "min_group_size", prefix, default=k_default),
        on_violation=_choice(table, "on_violation", prefix, default=onv_default),
        users=tuple(users) if users is not None else None,
        max_share=_share(table, "max_share", prefix, default=share_default),
    )
    if check_data:
        _check_columns(ds, prefix)
    return ds


def _check_columns(ds: DatasetConfig, prefix: str) -> None:
    """Masked columns and the privacy unit must exist: read the schema (no rows)."""
    from .sources import schema as read_schema  # local import: config must load without touching data

    try:
        schema = read_schema(ds)
    except Exception as exc:  # noqa: BLE001 - any reader failure is a config problem
        raise ConfigError(f"{prefix}path: cannot read {ds.path} ({type(exc).__name__})") from None
    names = set(schema.names())
    for col in names:
        if col.startswith(RESERVED_PREFIX):
            raise ConfigError(f"{prefix}path: column {col!r} uses the reserved prefix {RESERVED_PREFIX!r}")
    for col in ds.masked:
        if col not in names:
            raise ConfigError(f"{prefix}masked: column {col!r} does not exist in {ds.name}")
    if ds.privacy_unit is not None and ds.privacy_unit not in names:
        raise ConfigError(f"{prefix}privacy_unit: column {ds.privacy_unit!r} does not exist in {ds.name}")


def _limits(table: dict[str, Any] | None) -> Limits:
    if not table:
        return Limits()
    defaults = Limits()
    allowed = set(defaults.__dataclass_fields__)
    _unknown(table, allowed, "limits.")
    values: dict[str, Any] = {}
    for key, value in table.items():
        want = type(getattr(defaults, key))
        if want is int:
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"limits.{key} must be a positive integer")
        elif isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise ConfigError(f"limits.{key} must be a positive finite number")
        values[key] = want(value)
    return Limits(**values)


def _table(doc: dict[str, Any], key: str, *, required: bool) -> dict[str, Any]:
    value = doc.get(key)
    if value is None:
        if required:
            raise ConfigError(f"missing [{key}] table")
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{key} must be a table")
    return value


def _unknown(table: dict[str, Any], allowed: set[str], prefix: str) -> None:
    for key in table:
        if key not in allowed:
            raise ConfigError(
                f"unknown key {prefix}{key}",
                hint=f"allowed here: {', '.join(sorted(allowed))}",
            )


_MISSING = object()


def _typed(table: dict[str, Any], key: str, typ: type, prefix: str, default: Any = _MISSING) -> Any:
    if key not in table:
        return None if default is _MISSING else default
    value = table[key]
    if not isinstance(value, typ) or isinstance(value, bool) and typ is not bool:
        raise ConfigError(f"{prefix}{key} must be a {typ.__name__}")
    return value


def _positive_int(table: dict[str, Any], key: str, prefix: str, default: int) -> int:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{prefix}{key} must be a positive integer")
    return value


def _share(table: dict[str, Any], key: str, prefix: str, default: float) -> float:
    """A dominance share: a number in (0, 1]; 1 switches the rule off (no one can hold more than all of it)."""
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not 0 < value <= 1:
        raise ConfigError(f"{prefix}{key} must be a number greater than 0 and at most 1, not {value!r}",
                          hint="0.5 suppresses a value when one individual accounts for more than half of it; "
                               "1 turns the dominance rule off")
    return float(value)


def _choice(table: dict[str, Any], key: str, prefix: str, default: str) -> str:
    value = table.get(key, default)
    if value not in ON_VIOLATION:
        raise ConfigError(f"{prefix}{key} must be one of {', '.join(ON_VIOLATION)}, not {value!r}")
    return value


def _resolve(base: Path, raw: str) -> Path:
    p = Path(raw).expanduser()
    return p if p.is_absolute() else (base / p)
