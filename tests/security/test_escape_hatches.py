"""Attack class: polars' own escape hatches.

Polars can run Python (UDFs), read and write files in every format, run SQL
whose table functions read files, rebuild plans from bytes, load native
plugins, change global settings, hold arbitrary Python objects, and convert
data to pandas or Python rows. None of these names exists in Bastion's
tables, so each attack is a GrammarError (or a QueryError when a non-literal
is passed where a literal is required) before anything runs; file attacks
aim at TARGET/, which the arena checks stays empty.
"""

from __future__ import annotations

import pytest

from .conftest import Arena, assert_no_late_leak

DATA = "TARGET/../../security_data0/data/people.parquet"  # a relative walk towards the owner's file
AGG = 'people.group_by("region").agg(pl.len()).collect()'  # an auto-released result


def cases(*rows: tuple[str, str]) -> list:
    return [pytest.param(code, id=name) for name, code in rows]


UDFS = cases(
    ("map-elements", 'people.select(pl.col("income").map_elements(print)).collect()'),
    ("map-batches-expr", 'pl.col("income").map_batches(print)'),
    ("map-batches-frame", "people.map_batches(print)"),
    ("pipe-frame", "people.pipe(print)"),
    ("pipe-expr", 'pl.col("income").pipe(print)'),
    ("apply", 'pl.col("income").apply(print)'),
    ("map-groups", 'people.group_by("region").map_groups(print)'),
    ("rolling-map", 'pl.col("income").rolling_map(print, 3)'),
    ("pl-map-batches", 'pl.map_batches(["income"], print)'),
    ("fold", "pl.fold(0, print, pl.all())"),
    ("reduce", "pl.reduce(print, pl.all())"),
    ("cum-fold", "pl.cum_fold(0, print, pl.all())"),
    ("map-elements-with-builtin", 'pl.col("zip").map_elements(len, return_dtype=pl.Int64)'),
)

READS = cases(
    ("read-parquet", f'pl.read_parquet("{DATA}")'),
    ("read-csv-passwd", 'pl.read_csv("/etc/passwd")'),
    ("read-json", 'pl.read_json("TARGET/x.json")'),
    ("read-ipc", 'pl.read_ipc("TARGET/x.arrow")'),
    ("read-excel", 'pl.read_excel("TARGET/x.xlsx")'),
    ("read-database", 'pl.read_database("select 1", "sqlite:///TARGET/x.db")'),
    ("read-delta", 'pl.read_delta("TARGET/delta")'),
    ("scan-parquet", f'pl.scan_parquet("{DATA}")'),
    ("scan-csv", 'pl.scan_csv("/etc/passwd")'),
    ("scan-ndjson", 'pl.scan_ndjson("TARGET/x.ndjson")'),
    ("scan-ipc", 'pl.scan_ipc("TARGET/x.arrow")'),
    ("scan-iceberg", 'pl.scan_iceberg("TARGET/ice")'),
    ("scan-pyarrow-dataset", "pl.scan_pyarrow_dataset(people)"),
    ("scan-on-a-frame", f'people.scan_parquet("{DATA}")'),
    ("read-ipc-schema", 'pl.read_ipc_schema("TARGET/x.arrow")'),
    ("read-parquet-schema", f'pl.read_parquet_schema("{DATA}")'),
)

WRITES = cases(
    ("write-parquet", 'people.write_parquet("TARGET/x.parquet")'),
    ("write-csv-relative", 'people.write_csv("x.csv")'),
    ("write-json", 'people.write_json("TARGET/x.json")'),
    ("write-ipc", 'people.write_ipc("TARGET/x.arrow")'),
    ("write-database", 'people.write_database("t", "sqlite:///TARGET/x.db")'),
    ("write-delta", 'people.write_delta("TARGET/delta")'),
    ("write-excel", 'people.write_excel("TARGET/x.xlsx")'),
    ("sink-parquet", 'people.sink_parquet("TARGET/x.parquet")'),
    ("sink-csv", 'people.sink_csv("x.csv")'),
    ("sink-ipc", 'people.sink_ipc("TARGET/x.arrow")'),
    ("sink-ndjson", 'people.sink_ndjson("TARGET/x.ndjson")'),
    ("write-a-released-result", f'{AGG}.write_csv("TARGET/x.csv")'),
    ("write-requests-table", 'requests().write_csv("TARGET/x.csv")'),
    ("write-datasets-table", 'datasets().write_parquet("TARGET/x.parquet")'),
    ("overwrite-the-owners-file", f'people.sink_parquet("{DATA}")'),
    ("sink-via-collect-kwargs", 'people.collect(path="TARGET/x.parquet")'),
)

SQL = cases(
    ("pl-sql-read-parquet", f"pl.sql(\"SELECT * FROM read_parquet('{DATA}')\")"),
    ("pl-sql-read-csv", "pl.sql(\"SELECT * FROM read_csv('/etc/passwd')\")"),
    ("sql-context", 'pl.SQLContext(frames={"p": people})'),
    ("sql-context-execute", "pl.SQLContext().execute(\"SELECT * FROM read_parquet('x')\")"),
    ("frame-sql", 'people.sql("SELECT * FROM self WHERE person_id = 42424")'),
    ("sql-expr", 'pl.sql_expr("income")'),
    ("sql-expr-table-function", "people.select(pl.sql_expr(\"read_csv('/etc/passwd')\"))"),
    ("released-result-sql", f'{AGG}.sql("SELECT * FROM self")'),
)

PLANS = cases(
    ("lazyframe-deserialize", 'pl.LazyFrame.deserialize("TARGET/plan.bin")'),
    ("dataframe-deserialize", 'pl.DataFrame.deserialize("TARGET/df.bin")'),
    ("expr-deserialize", 'pl.Expr.deserialize("TARGET/expr.bin")'),
    ("frame-serialize", "people.serialize()"),
    ("frame-serialize-to-file", 'people.serialize("TARGET/plan.bin")'),
    ("expr-meta-serialize", 'pl.col("income").meta.serialize()'),
    ("expr-meta", 'pl.col("income").meta.output_name()'),
    ("explain-names-files", "people.explain()"),
    ("show-graph", 'people.show_graph(output_path="TARGET/g.png")'),
    ("profile", "people.profile()"),
    ("collect-async", "people.collect_async()"),
    ("cache", "people.cache()"),
)

PLUGINS = cases(
    ("register-plugin-function",
     'pl.plugins.register_plugin_function(plugin_path="TARGET/lib.so", function_name="f", args=[pl.col("income")])'),
    ("expr-register-plugin", 'pl.col("income").register_plugin(lib="TARGET/lib.so", symbol="f")'),
    ("register-expr-namespace", 'pl.api.register_expr_namespace("x")'),
    ("register-lazyframe-namespace", 'pl.api.register_lazyframe_namespace("x")'),
    ("plugins-module", "pl.plugins"),
    ("io-plugins", "pl.io.plugins.register_io_source(print)"),
)

CONFIG = cases(
    ("config-set-tbl-rows", "pl.Config.set_tbl_rows(-1)"),
    ("config-context", "pl.Config(fmt_str_lengths=1000)"),
    ("config-load-from-file", 'pl.Config.load_from_file("TARGET/cfg.json")'),
    ("config-save-to-file", 'pl.Config.save_to_file("TARGET/cfg.json")'),
    ("string-cache", "pl.enable_string_cache()"),
    ("random-seed", "pl.set_random_seed(1)"),
    ("thread-pool-size", "pl.thread_pool_size()"),
    ("show-versions", "pl.show_versions()"),
    ("polars-version", "pl.__version__"),
)

OBJECTS = cases(
    ("object-dtype", "pl.Object"),
    ("cast-to-object", 'people.select(pl.col("income").cast(pl.Object))'),
    ("select-object-columns", "people.select(pl.col(pl.Object))"),
    ("literal-frame", "people.select(pl.lit(people))"),
    ("literal-builtin", "people.select(pl.lit(print))"),
    ("literal-module", "people.select(pl.lit(pl))"),
    ("series", 'pl.Series("x", [1])'),
    ("list-dtype", 'people.select(pl.col("income").cast(pl.List(pl.Int64)))'),
    ("struct-dtype", 'people.select(pl.struct(["income", "zip"]))'),
    ("decimal-dtype", 'people.select(pl.col("income").cast(pl.Decimal(10, 2)))'),
)

CONVERSIONS = cases(
    ("lazy-to-pandas", "people.to_pandas()"),
    ("released-to-pandas", f"{AGG}.to_pandas()"),
    ("released-rows", f"{AGG}.rows()"),
    ("released-iter-rows", f"{AGG}.iter_rows()"),
    ("released-to-numpy", f"{AGG}.to_numpy()"),
    ("released-to-arrow", f"{AGG}.to_arrow()"),
    ("released-to-dict", f"{AGG}.to_dict()"),
    ("released-row", f"{AGG}.row(0)"),
    ("released-get-column", f'{AGG}.get_column("len")'),
    ("released-df", f"{AGG}.df"),
    ("lazy-rows", "people.rows()"),
    ("lazy-fetch", "people.fetch(5)"),
    ("lazy-lazy", "people.lazy()"),
    ("lazy-to-series", "people.to_series()"),
    ("requests-table-rows", "requests().rows()"),
)


@pytest.mark.parametrize("code", UDFS)
def test_udfs_never_run(arena: Arena, code: str) -> None:
    arena.attack(code, "refused", ename="GrammarError")


@pytest.mark.parametrize("code", READS)
def test_no_file_can_be_read(arena: Arena, code: str) -> None:
    arena.attack(code, "refused", ename="GrammarError")


@pytest.mark.parametrize("code", WRITES)
def test_no_file_can_be_written(arena: Arena, code: str) -> None:
    arena.attack(code, "refused", ename=_writes_ename(code))


@pytest.mark.parametrize("code", SQL)
def test_sql_and_its_table_functions_are_not_available(arena: Arena, code: str) -> None:
    arena.attack(code, "refused", ename="GrammarError")


@pytest.mark.parametrize("code", PLANS)
def test_plans_cannot_be_serialised_deserialised_or_inspected(arena: Arena, code: str) -> None:
    arena.attack(code, "refused", ename="GrammarError")


@pytest.mark.parametrize("code", PLUGINS)
def test_plugins_cannot_be_registered(arena: Arena, code: str) -> None:
    arena.attack(code, "refused", ename="GrammarError")


@pytest.mark.parametrize("code", CONFIG)
def test_polars_global_settings_cannot_change(arena: Arena, code: str) -> None:
    arena.attack(code, "refused", ename="GrammarError")


@pytest.mark.parametrize("code", OBJECTS)
def test_object_and_nested_dtypes_cannot_be_built(arena: Arena, code: str) -> None:
    arena.attack(code, "refused", ename=_objects_ename(code))


@pytest.mark.parametrize("code", CONVERSIONS)
def test_data_cannot_be_converted_to_python_objects(arena: Arena, code: str) -> None:
    arena.attack(code, "refused", ename="GrammarError")


def test_released_rows_are_only_what_the_policy_released(arena: Arena) -> None:
    """`.to_dicts()` exists on a released result: it holds exactly the released (thresholded) rows."""
    out = arena.attack('people.group_by("zip").agg(pl.len()).collect().to_dicts()', "released")
    assert "'zip': '10100'" in out.shown and "97999" not in out.shown


def test_no_late_message_carries_a_canary(arena: Arena) -> None:
    assert_no_late_leak(arena)


def _writes_ename(code: str) -> str:
    # `collect()` takes no `path`: the interpreter's argument binding refuses it.
    return "QueryError" if "collect(path=" in code else "GrammarError"


def _objects_ename(code: str) -> str:
    # `pl.lit` of something that is not a literal value is refused when its argument is bound.
    return "QueryError" if "pl.lit(people)" in code or "pl.lit(pl)" in code else "GrammarError"
