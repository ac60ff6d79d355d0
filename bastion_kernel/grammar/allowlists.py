"""The explicit allow-lists: every name, method and argument a cell may use.

Why tables: a method absent from these tables does not exist for the user,
whatever polars adds in its next release. Each entry says what the method does
to rows (its *kind*, which is what the policy reads), which arguments it takes
and of what type, and a one-line doc for inspection and error hints.

Kinds of expression methods:
  elem   - one value per row, computed from that row only
  pred   - like elem, but yields a boolean (a condition that can single people out)
  agg    - aggregates that auto-release over enough individuals (sum, mean, ...)
  noauto - aggregates that pick or expose one value (min, max, median, first, ...)
  list   - yields several values per group (implode, value_counts, head, ...)
  shape  - depends on other rows' order (shift, cum_sum, rank, over, sort, ...)
  filter - `expr.filter(cond)`: keeps only the rows where `cond` holds
  name   - renames the output (alias, name.suffix)
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Param:
    name: str
    type: str  # expr | col | cols | str | strs | int | num | bool | dtype | lits | scalar | mapping
    required: bool = False


@dataclass(frozen=True)
class MethodSpec:
    name: str
    kind: str
    params: tuple[Param, ...] = ()
    doc: str = ""
    varargs: str | None = None  # type of *args when the method takes a variable number
    fixed: tuple[tuple[str, object], ...] = ()  # keyword arguments Bastion always sets
    polars_name: str | None = None

    @property
    def target(self) -> str:
        return self.polars_name or self.name


def _params(sig: str) -> tuple[Param, ...]:
    """Parse ``"pattern:str, literal:bool?"`` ('?' marks optional)."""
    out = []
    for part in filter(None, (p.strip() for p in sig.split(","))):
        name, typ = part.split(":")
        optional = typ.endswith("?")
        out.append(Param(name, typ.rstrip("?"), not optional))
    return tuple(out)


def _table(kind: str, entries: dict[str, tuple[str, str]], **extra: object) -> dict[str, MethodSpec]:
    return {n: MethodSpec(n, kind, _params(sig), doc, **extra) for n, (sig, doc) in entries.items()}  # type: ignore[arg-type]


# ------------------------------------------------------------ expression methods

EXPR_METHODS: dict[str, MethodSpec] = {}

EXPR_METHODS |= _table("elem", {
    "abs": ("", "absolute value"),
    "round": ("decimals:int?", "round to the given number of decimals"),
    "floor": ("", "round down"),
    "ceil": ("", "round up"),
    "sqrt": ("", "square root"),
    "cbrt": ("", "cube root"),
    "exp": ("", "e to the power of the value"),
    "log": ("base:num?", "logarithm (natural unless base given)"),
    "log10": ("", "base-10 logarithm"),
    "log1p": ("", "log(1 + x)"),
    "pow": ("exponent:expr", "raise to a power"),
    "sign": ("", "-1, 0 or 1"),
    "clip": ("lower_bound:expr?, upper_bound:expr?", "limit values to a range"),
    "fill_null": ("value:expr", "replace nulls with a value"),
    "fill_nan": ("value:expr", "replace NaN with a value"),
    "add": ("other:expr", "x + other"),
    "sub": ("other:expr", "x - other"),
    "mul": ("other:expr", "x * other"),
    "truediv": ("other:expr", "x / other"),
    "floordiv": ("other:expr", "x // other"),
    "mod": ("other:expr", "x % other"),
    "replace": ("old:scalar, new:scalar?", "replace values (old may be a dict of old -> new)"),
    "cut": ("breaks:lits, labels:strs?, left_closed:bool?", "bin numeric values into labelled intervals"),
    "neg": ("", "negate"),
})
EXPR_METHODS["cast"] = MethodSpec(
    "cast", "elem", _params("dtype:dtype"), "convert to another type (values that do not convert become null)",
    fixed=(("strict", False),),
)
EXPR_METHODS |= _table("pred", {
    "is_null": ("", "true where the value is missing"),
    "is_not_null": ("", "true where the value is present"),
    "is_nan": ("", "true where the value is NaN"),
    "is_not_nan": ("", "true where the value is not NaN"),
    "is_finite": ("", "true where finite"),
    "is_infinite": ("", "true where infinite"),
    "is_in": ("other:lits", "true where the value is in the given list"),
    "is_between": ("lower_bound:expr, upper_bound:expr, closed:str?", "true where lower <= x <= upper"),
    "eq": ("other:expr", "x == other"),
    "ne": ("other:expr", "x != other"),
    "gt": ("other:expr", "x > other"),
    "ge": ("other:expr", "x >= other"),
    "lt": ("other:expr", "x < other"),
    "le": ("other:expr", "x <= other"),
    "eq_missing": ("other:expr", "x == other, nulls equal"),
    "ne_missing": ("other:expr", "x != other, nulls equal"),
    "not_": ("", "logical not"),
    "and_": ("other:expr", "logical and"),
    "or_": ("other:expr", "logical or"),
    "xor": ("other:expr", "logical exclusive or"),
})
EXPR_METHODS |= _table("agg", {
    "sum": ("", "sum of the group (auto-released over enough individuals)"),
    "mean": ("", "mean of the group (auto-released over enough individuals)"),
    "count": ("", "non-null values in the group (auto-released over enough individuals)"),
    "len": ("", "rows in the group, nulls included (auto-released over enough individuals)"),
    "n_unique": ("", "distinct values in the group (auto-released over enough individuals)"),
    "std": ("ddof:int?", "standard deviation (auto-released over enough individuals)"),
    "var": ("ddof:int?", "variance (auto-released over enough individuals)"),
    "null_count": ("", "missing values in the group (auto-released over enough individuals)"),
    "any": ("", "true if any value is true (auto-released over enough individuals)"),
    "all": ("", "true if every value is true (auto-released over enough individuals)"),
})
EXPR_METHODS |= _table("noauto", {
    "min": ("", "smallest value: one individual's value, so it needs owner review"),
    "max": ("", "largest value: one individual's value, so it needs owner review"),
    "median": ("", "middle value: one individual's value, so it needs owner review"),
    "quantile": ("quantile:num, interpolation:str?", "a quantile: picks a value, so it needs owner review"),
    "first": ("", "first value: one individual's value, so it needs owner review"),
    "last": ("", "last value: one individual's value, so it needs owner review"),
    "mode": ("", "most frequent value(s): needs owner review"),
    "top_k": ("k:int?", "k largest values: needs owner review"),
    "bottom_k": ("k:int?", "k smallest values: needs owner review"),
    "arg_min": ("", "position of the smallest value: needs owner review"),
    "arg_max": ("", "position of the largest value: needs owner review"),
    "product": ("", "product of the values: needs owner review"),
    "skew": ("", "skewness: dominated by outliers, needs owner review"),
    "kurtosis": ("", "kurtosis: dominated by outliers, needs owner review"),
})
# Runtime errors are an oracle (error or not, keyed on one person): `get` answers null
# out of bounds, and `item` (which fails unless exactly one value) is not offered.
EXPR_METHODS["get"] = MethodSpec("get", "noauto", _params("index:int"), "the value at a position: needs owner review",
                                 fixed=(("null_on_oob", True),))
EXPR_METHODS |= _table("list", {
    "implode": ("", "all values of the group as a list: needs owner review"),
    "value_counts": ("sort:bool?", "counts per value as a list of structs: use group_by instead"),
    "unique": ("maintain_order:bool?", "distinct values (a list per group; count them with .len())"),
    "head": ("n:int?", "first n values: needs owner review"),
    "tail": ("n:int?", "last n values: needs owner review"),
    "slice": ("offset:int, length:int?", "some values by position: needs owner review"),
    "drop_nulls": ("", "the values without nulls"),
    "drop_nans": ("", "the values without NaN"),
})
EXPR_METHODS |= _table("shape", {
    "sort": ("descending:bool?, nulls_last:bool?", "sort the values"),
    "sort_by": ("by:cols, descending:bool?", "sort the values by other columns"),
    "shift": ("n:int?", "shift values by n rows"),
    "diff": ("n:int?", "difference with the value n rows earlier"),
    "pct_change": ("n:int?", "percentage change from n rows earlier"),
    "cum_sum": ("reverse:bool?", "running sum"),
    "cum_count": ("reverse:bool?", "running count"),
    "cum_max": ("reverse:bool?", "running maximum"),
    "cum_min": ("reverse:bool?", "running minimum"),
    "cum_prod": ("reverse:bool?", "running product"),
    "rank": ("method:str?, descending:bool?", "rank of each value"),
    "reverse": ("", "reverse the order"),
    "over": ("partition_by:cols", "compute per group and broadcast to rows"),
    "is_duplicated": ("", "true where the value occurs more than once"),
    "is_unique": ("", "true where the value occurs once"),
    "is_first_distinct": ("", "true at the first occurrence of each value"),
    "rolling_mean": ("window_size:int", "moving average"),
    "rolling_sum": ("window_size:int", "moving sum"),
})
EXPR_METHODS["filter"] = MethodSpec(
    "filter", "filter", _params("predicate:expr"),
    "keep only values where the condition holds (inside agg: both the kept and the dropped part must hold enough individuals)",
)
EXPR_METHODS["alias"] = MethodSpec("alias", "name", _params("name:str"), "name the output column")

STR_METHODS: dict[str, MethodSpec] = _table("elem", {
    "to_uppercase": ("", "upper case"),
    "to_lowercase": ("", "lower case"),
    "to_titlecase": ("", "title case"),
    "strip_chars": ("characters:str?", "remove leading and trailing characters"),
    "strip_chars_start": ("characters:str?", "remove leading characters"),
    "strip_chars_end": ("characters:str?", "remove trailing characters"),
    "len_chars": ("", "length in characters"),
    "len_bytes": ("", "length in bytes"),
    "slice": ("offset:int, length:int?", "a substring"),
    "head": ("n:int", "the first n characters"),
    "tail": ("n:int", "the last n characters"),
    "replace": ("pattern:str, value:str, literal:bool?, n:int?", "replace the first match"),
    "replace_all": ("pattern:str, value:str, literal:bool?", "replace every match"),
    "zfill": ("length:int", "pad with zeros on the left"),
    "pad_start": ("length:int, fill_char:str?", "pad on the left"),
    "pad_end": ("length:int, fill_char:str?", "pad on the right"),
    "reverse": ("", "reverse the characters"),
    "count_matches": ("pattern:str, literal:bool?", "how many times the pattern occurs"),
    "extract": ("pattern:str, group_index:int?", "the text captured by a regex group"),
    "to_date": ("format:str?", "parse a date (unparseable values become null)"),
    "to_datetime": ("format:str?", "parse a datetime (unparseable values become null)"),
    "to_integer": ("base:int?", "parse an integer (unparseable values become null)"),
}) | _table("pred", {
    "contains": ("pattern:str, literal:bool?", "true where the text matches the pattern"),
    "starts_with": ("prefix:str", "true where the text starts with prefix"),
    "ends_with": ("suffix:str", "true where the text ends with suffix"),
    "contains_any": ("patterns:strs", "true where the text contains any of the patterns"),
})
for _n in ("to_date", "to_datetime", "to_integer"):
    STR_METHODS[_n] = MethodSpec(_n, "elem", STR_METHODS[_n].params, STR_METHODS[_n].doc, fixed=(("strict", False),))

DT_METHODS: dict[str, MethodSpec] = _table("elem", {
    "year": ("", "the year"),
    "iso_year": ("", "the ISO year"),
    "quarter": ("", "the quarter (1-4)"),
    "month": ("", "the month (1-12)"),
    "week": ("", "the ISO week"),
    "weekday": ("", "the ISO weekday (1 = Monday)"),
    "day": ("", "the day of the month"),
    "ordinal_day": ("", "the day of the year"),
    "hour": ("", "the hour"),
    "minute": ("", "the minute"),
    "second": ("", "the second"),
    "date": ("", "the date part"),
    "truncate": ("every:str", "round down to a period such as '1mo' or '1w'"),
    "month_start": ("", "the first day of the month"),
    "month_end": ("", "the last day of the month"),
    "to_string": ("format:str", "format as text"),
    "strftime": ("format:str", "format as text"),
    "epoch": ("time_unit:str?", "time since 1970"),
    "total_days": ("", "a duration in days"),
    "total_hours": ("", "a duration in hours"),
    "total_minutes": ("", "a duration in minutes"),
    "total_seconds": ("", "a duration in seconds"),
})

NAME_METHODS: dict[str, MethodSpec] = _table("name", {
    "suffix": ("suffix:str", "add a suffix to the output name"),
    "prefix": ("prefix:str", "add a prefix to the output name"),
})

NAMESPACES: dict[str, dict[str, MethodSpec]] = {"str": STR_METHODS, "dt": DT_METHODS, "name": NAME_METHODS}

# ------------------------------------------------------------ pl.* functions

PL_FUNCTIONS: dict[str, str] = {
    "col": "a column by name, several names, a regex '^...$' or a dtype",
    "lit": "a literal value",
    "len": "the number of rows (in a group)",
    "all": "every visible column",
    "nth": "columns by position",
    "exclude": "every visible column except some",
    "when": "a conditional: pl.when(cond).then(a).otherwise(b)",
    "concat_str": "join text columns",
    "coalesce": "the first non-null value among columns",
    "max_horizontal": "the largest value across columns, per row",
    "min_horizontal": "the smallest value across columns, per row",
    "sum_horizontal": "the sum across columns, per row",
    "mean_horizontal": "the mean across columns, per row",
    "date": "a date literal: pl.date(2024, 1, 31)",
    "datetime": "a datetime literal",
    "sum": "pl.sum('x') is pl.col('x').sum()",
    "mean": "pl.mean('x') is pl.col('x').mean()",
    "count": "pl.count('x') is pl.col('x').count()",
    "n_unique": "pl.n_unique('x') is pl.col('x').n_unique()",
    "std": "pl.std('x') is pl.col('x').std()",
    "var": "pl.var('x') is pl.col('x').var()",
    "min": "pl.min('x') is pl.col('x').min()",
    "max": "pl.max('x') is pl.col('x').max()",
    "median": "pl.median('x') is pl.col('x').median()",
    "first": "pl.first('x') is pl.col('x').first()",
    "last": "pl.last('x') is pl.col('x').last()",
}
PL_SHORTHAND_AGGS = ("sum", "mean", "count", "n_unique", "std", "var", "min", "max", "median", "first", "last")
HORIZONTAL = ("concat_str", "coalesce", "max_horizontal", "min_horizontal", "sum_horizontal", "mean_horizontal")

DTYPES: dict[str, str] = {
    "Int8": "8-bit integer", "Int16": "16-bit integer", "Int32": "32-bit integer", "Int64": "64-bit integer",
    "UInt8": "unsigned 8-bit integer", "UInt16": "unsigned 16-bit integer", "UInt32": "unsigned 32-bit integer",
    "UInt64": "unsigned 64-bit integer", "Float32": "32-bit float", "Float64": "64-bit float",
    "Boolean": "true/false", "String": "text", "Utf8": "text", "Date": "calendar date",
    "Datetime": "date and time", "Duration": "time span", "Time": "time of day", "Categorical": "category",
}

# ------------------------------------------------------------ frame verbs


@dataclass(frozen=True)
class VerbSpec:
    name: str
    doc: str
    releases: bool = False
    params: tuple[Param, ...] = ()
    varargs: str | None = None
    varkw: bool = False
    extra: dict[str, object] = field(default_factory=dict)


def _verb(name: str, doc: str, sig: str = "", varargs: str | None = None, varkw: bool = False, releases: bool = False) -> VerbSpec:
    return VerbSpec(name, doc, releases, _params(sig), varargs, varkw)


FRAME_VERBS: dict[str, VerbSpec] = {v.name: v for v in [
    _verb("select", "choose or compute columns; aggregates here make one summary row", varargs="exprs", varkw=True),
    _verb("with_columns", "add or replace columns", varargs="exprs", varkw=True),
    _verb("filter", "keep rows where every condition holds", varargs="exprs", varkw=True),
    _verb("group_by", "group rows; follow with .agg(...) or .len()", "maintain_order:bool?", varargs="exprs"),
    _verb("join", "combine with another frame on key columns",
          "other:frame, on:cols?, how:str?, left_on:cols?, right_on:cols?, suffix:str?, coalesce:bool?"),
    _verb("sort", "order rows", "descending:bool?, nulls_last:bool?", varargs="exprs"),
    _verb("unique", "distinct rows (of all columns, or of a subset)", "subset:cols?, maintain_order:bool?, keep:str?"),
    _verb("head", "the first n rows", "n:int?"),
    _verb("tail", "the last n rows", "n:int?"),
    _verb("limit", "the first n rows", "n:int?"),
    _verb("slice", "rows by position", "offset:int, length:int?"),
    _verb("rename", "rename columns with a dict old -> new", "mapping:mapping"),
    _verb("drop", "remove columns", varargs="cols"),
    _verb("describe", "summary statistics per column (count, null_count, mean, std)", releases=True),
    _verb("collect", "run the query and ask the policy for a release", releases=True),
    _verb("collect_schema", "the column names and types (no data)"),
    _verb("sum", "sum of every column (one summary row)"),
    _verb("mean", "mean of every column (one summary row)"),
    _verb("std", "standard deviation of every column (one summary row)"),
    _verb("var", "variance of every column (one summary row)"),
    _verb("count", "non-null values of every column (one summary row)"),
    _verb("null_count", "missing values of every column (one summary row)"),
    _verb("n_unique", "distinct values of every column (one summary row)"),
    _verb("min", "smallest value of every column (needs owner review)"),
    _verb("max", "largest value of every column (needs owner review)"),
    _verb("median", "median of every column (needs owner review)"),
]}
FRAME_PROPERTIES: dict[str, str] = {
    "columns": "the column names (no data)",
    "schema": "the column names and types (no data)",
    "dtypes": "the column types (no data)",
    "width": "the number of columns (no data)",
    "height": "the number of rows: a count, released over enough individuals",
}
GROUPBY_VERBS: dict[str, str] = {
    "agg": "aggregate each group: .agg(pl.len(), pl.col('x').mean(), ...)",
    "len": "rows per group",
    "sum": "sum of every other column per group",
    "mean": "mean of every other column per group",
    "count": "non-null values of every other column per group",
    "n_unique": "distinct values of every other column per group",
    "std": "standard deviation of every other column per group",
    "var": "variance of every other column per group",
    "min": "min per group (needs owner review)",
    "max": "max per group (needs owner review)",
    "median": "median per group (needs owner review)",
    "first": "first row per group (needs owner review)",
    "last": "last row per group (needs owner review)",
}
FRAME_AGG_VERBS = ("sum", "mean", "std", "var", "count", "null_count", "n_unique", "min", "max", "median")

# Released results are plain data the user already holds: a few pure helpers.
RELEASED_METHODS: dict[str, str] = {
    "item": "the single value of a 1x1 result",
    "head": "the first n rows of the released table",
    "tail": "the last n rows of the released table",
    "sort": "sort the released table by column names",
    "to_dicts": "the released rows as a list of dicts",
}
RELEASED_PROPERTIES: dict[str, str] = {
    "columns": "column names", "shape": "(rows, columns)", "height": "rows", "width": "columns",
    "plot": "charts of this released table: .plot.bar / .line / .point(x=..., y=...)",
}

# Charts (see charts.py). On a released result they draw the released table only;
# on a frame `.plot.hist` is itself an aggregate and goes through the policy.
# Every argument is a column name or a literal: nothing here builds expressions.
PLOT_METHODS: dict[str, MethodSpec] = _table("chart", {
    "bar": ("x:str, y:str, color:str?, title:str?", "bar chart of the released table: .plot.bar(x='region', y='n')"),
    "line": ("x:str, y:str, color:str?, title:str?", "line chart of the released table: .plot.line(x='year', y='n')"),
    "point": ("x:str, y:str, color:str?, title:str?",
              "scatter plot of the released table: .plot.point(x='mean_age', y='mean_income')"),
})
FRAME_PLOT_METHODS: dict[str, MethodSpec] = _table("chart", {
    "hist": ("column:str, bins:int?, range:lits?, title:str?",
             ("histogram: rows per bin, computed as an aggregate through the policy (bins with too few "
              "individuals are withheld); range=[lo, hi] fixes the bins, else mean ± 3 std (released) does")),
})
FRAME_NAMESPACES: dict[str, str] = {
    "plot": "charts computed through the policy: .plot.hist('age', bins=20)",
}

SESSION_FUNCTIONS: dict[str, str] = {
    "fetch": 'fetch("R1234abcd"): show a result the owner approved',
    "requests": "requests(): your review requests and their status",
    "cancel": 'cancel("R1234abcd"): withdraw one of your pending review requests',
    "datasets": "datasets(): the datasets you may query",
    "policy": 'policy("patients"): the rules that apply to a dataset',
    "len": "len(x): the number of items of a list or released table",
}


def all_frame_names() -> list[str]:
    return sorted([*FRAME_VERBS, *FRAME_PROPERTIES])


def all_expr_names() -> list[str]:
    return sorted([*EXPR_METHODS, *NAMESPACES])
