"""The cell grammar: one table of refused snippets, one of accepted ones.

Why one table: each row is something an analyst (or an attacker) might type.
It states the stage that must refuse it (`parse` = `parse_cell`, the syntax
allow-list; `run` = the interpreter's name and method tables), the error kind,
a fragment of the message and of the hint, and where the caret points
(1-based line, 0-based column as `ast` reports). A refused cell changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pytest

from bastion_kernel import config
from bastion_kernel.config import Limits
from bastion_kernel.errors import BastionError, GrammarError, LimitError
from bastion_kernel.grammar import parse_cell, suggest
from bastion_kernel.session import Session

LIMITS = Limits()


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> config.Deployment:
    root: Path = tmp_path_factory.mktemp("grammar")
    pl.DataFrame({
        "patient_id": list(range(30)),
        "name": [f"p{i}" for i in range(30)],
        "age": list(range(20, 50)),
        "ward": ["a", "b", "c"] * 10,
    }).write_parquet(root / "patients.parquet")
    (root / "bastion.toml").write_text(
        '[bastion]\nstate_dir = "state"\nmin_group_size = 5\n\n'
        '[datasets.patients]\npath = "patients.parquet"\nprivacy_unit = "patient_id"\nmasked = ["name"]\n'
    )
    return config.load(root / "bastion.toml")


@pytest.fixture
def session(deployment: config.Deployment):
    s = Session(deployment, user="analyst")
    yield s
    s.close()


@dataclass(frozen=True)
class Refused:
    id: str
    src: str
    stage: str  # "parse" | "run"
    kind: str  # "grammar" | "limit" | "plan"
    message: str
    hint: str | None
    at: tuple[int, int] | None  # (line, col)


REFUSED = [
    # ---- imports and dunders
    Refused("import", "import os", "parse", "grammar", "`import` is not allowed", "`pl` is already defined", (1, 0)),
    Refused("import-polars-as", "import polars as pl2", "parse", "grammar", "`import`", "imports are not available",
            (1, 0)),
    Refused("from-import", "from os import path", "parse", "grammar", "`from ... import`", "imports", (1, 0)),
    Refused("__import__", '__import__("os")', "parse", "grammar", "name `__import__` is not allowed",
            "starting with a letter", (1, 0)),
    Refused("dunder-attr-pl", "pl.__dict__", "parse", "grammar", "attribute `__dict__` is not allowed",
            "Tab completion", (1, 0)),
    Refused("dunder-attr-frame", "patients.__class__", "parse", "grammar", "attribute `__class__`", None, (1, 0)),
    Refused("dunder-attr-expr", 'pl.col("age").__class__.__bases__', "parse", "grammar", "`__bases__`", None,
            (1, 0)),
    Refused("dunder-namespace", 'pl.col("age").str.__len__', "parse", "grammar", "`__len__`", None, (1, 0)),
    Refused("underscore-name", "_secret = 1", "parse", "grammar", "name `_secret` is not allowed", None, (1, 0)),
    Refused("private-attr", "patients._lf", "parse", "grammar", "attribute `_lf`", None, (1, 0)),
    # ---- functions, comprehensions, strings
    Refused("lambda", "(lambda: 1)()", "parse", "grammar", "a lambda is not allowed", "polars expressions", (1, 1)),
    Refused("lambda-arg", 'pl.col("age").map_elements(lambda v: v)', "parse", "grammar", "a lambda", None, (1, 27)),
    Refused("list-comp", "[x for x in [1, 2]]", "parse", "grammar", "a list comprehension", "comprehensions", (1, 0)),
    Refused("dict-comp", "{x: 1 for x in [1]}", "parse", "grammar", "a dict comprehension", None, (1, 0)),
    Refused("set-comp", "{x for x in [1]}", "parse", "grammar", "a set comprehension", None, (1, 0)),
    Refused("genexp", "(x for x in [1])", "parse", "grammar", "a generator expression", None, (1, 0)),
    Refused("f-string", 'f"{patients}"', "parse", "grammar", "an f-string", "pl.concat_str", (1, 0)),
    Refused("str-format", '"{}".format(1)', "run", "grammar", "attribute `format` of a str", "only frames", (1, 0)),
    Refused("bytes", 'b"x"', "parse", "grammar", "a bytes literal", "strings, numbers", (1, 0)),
    Refused("ellipsis", "...", "parse", "grammar", "literal is not allowed", None, (1, 0)),
    # ---- shell and magics
    Refused("shell", "!ls", "parse", "grammar", "`!` lines", "polars expressions only", (1, 0)),
    Refused("shell-second-line", 'x = 1\n  !cat /etc/passwd', "parse", "grammar", "`!` lines", None, (2, 2)),
    Refused("line-magic", "%time 1", "parse", "grammar", "`%` lines", None, (1, 0)),
    Refused("cell-magic", "%%bash\nls", "parse", "grammar", "`%` lines", None, (1, 0)),
    # ---- builtins are not names
    Refused("globals", "globals()", "run", "grammar", "name `globals` is not defined", "available: pl", (1, 0)),
    Refused("vars", "vars()", "run", "grammar", "name `vars` is not defined", None, (1, 0)),
    Refused("help", "help()", "run", "grammar", "name `help` is not defined", None, (1, 0)),
    Refused("breakpoint", "breakpoint()", "run", "grammar", "name `breakpoint`", None, (1, 0)),
    Refused("eval", 'eval("1")', "run", "grammar", "name `eval` is not defined", None, (1, 0)),
    Refused("exec", 'exec("x = 1")', "run", "grammar", "name `exec` is not defined", None, (1, 0)),
    Refused("open", 'open("x")', "run", "grammar", "name `open` is not defined", None, (1, 0)),
    Refused("getattr", 'getattr(pl, "x")', "run", "grammar", "name `getattr` is not defined", None, (1, 0)),
    Refused("print", 'print("hi")', "run", "grammar", "name `print`", None, (1, 0)),
    Refused("type", "type(patients)", "run", "grammar", "name `type`", None, (1, 0)),
    # ---- statements
    Refused("def", "def f():\n    return 1", "parse", "grammar", "`def` is not allowed", "defining functions",
            (1, 0)),
    Refused("async-def", "async def f():\n    pass", "parse", "grammar", "AsyncFunctionDef", None, (1, 0)),
    Refused("class", "class A:\n    pass", "parse", "grammar", "`class` is not allowed", "classes", (1, 0)),
    Refused("for", "for i in [1]:\n    pass", "parse", "grammar", "`For` syntax", "group_by", (1, 0)),
    Refused("while", "while True:\n    pass", "parse", "grammar", "`While` syntax", "loops", (1, 0)),
    Refused("if", "if True:\n    x = 1", "parse", "grammar", "`If` syntax", "pl.when", (1, 0)),
    Refused("if-exp", "1 if True else 2", "parse", "grammar", "`IfExp` syntax", "pl.when", (1, 0)),
    Refused("with", 'with open("x") as f:\n    pass', "parse", "grammar", "`With` syntax", "with blocks", (1, 0)),
    Refused("try", "try:\n    x = 1\nexcept Exception:\n    pass", "parse", "grammar", "`Try` syntax", None, (1, 0)),
    Refused("del", "x = 1\ndel x", "parse", "grammar", "`Delete` syntax", "reassign", (2, 0)),
    Refused("global", "global x", "parse", "grammar", "`Global` syntax", None, (1, 0)),
    Refused("assert", "assert True", "parse", "grammar", "`Assert` syntax", None, (1, 0)),
    Refused("raise", "raise ValueError", "parse", "grammar", "`Raise` syntax", None, (1, 0)),
    Refused("aug-assign", "x += 1", "parse", "grammar", "`AugAssign` syntax", "x = x.filter", (1, 0)),
    Refused("ann-assign", "x: int = 1", "parse", "grammar", "`AnnAssign` syntax", None, (1, 0)),
    Refused("tuple-assign", "a, b = 1, 2", "parse", "grammar", "single plain name", "name = expression", (1, 0)),
    Refused("chain-assign", "a = b = 1", "parse", "grammar", "single plain name", None, (1, 0)),
    Refused("subscript-assign", "x = [1]\nx[0] = 2", "parse", "grammar", "single plain name", None, (2, 0)),
    # ---- operators and argument forms
    Refused("starred", 'pl.col(*["a"])', "parse", "grammar", "`Starred` syntax", "star-arguments", (1, 7)),
    Refused("double-star", 'pl.col(**{"name": "a"})', "parse", "grammar", "`**kwargs` is not allowed",
            "name each argument", (1, 9)),
    Refused("dict-unpack", '{**{"a": 1}}', "parse", "grammar", "`**` in a dict", None, (1, 0)),
    Refused("walrus", "(y := 1)", "parse", "grammar", "`NamedExpr` syntax", "walrus", (1, 1)),
    Refused("chained-comparison", 'pl.col("age") > 1 < 3', "parse", "grammar", "chained comparisons",
            "(a < b) & (b < c)", (1, 0)),
    Refused("not", 'not pl.col("age")', "parse", "grammar", "`not` does not work", "`~expr`", (1, 0)),
    Refused("and", '(pl.col("age") > 1) and (pl.col("age") < 3)', "parse", "grammar", "`BoolOp` syntax",
            "use `&` and `|`", (1, 0)),
    Refused("or", "patients or 1", "parse", "grammar", "`BoolOp` syntax", None, (1, 0)),
    Refused("in", '1 in [1]', "parse", "grammar", "comparison `In`", ".is_in", (1, 0)),
    Refused("is", "patients is None", "parse", "grammar", "comparison `Is`", None, (1, 0)),
    Refused("matmul", "patients @ patients", "parse", "grammar", "operator MatMult", None, (1, 0)),
    Refused("set", "{1, 2}", "parse", "grammar", "`Set` syntax", "use a list", (1, 0)),
    Refused("subscript-str", '"abc"[0]', "run", "grammar", "subscripts work on frames only, not on a str",
            'frame["column"]', (1, 0)),
    Refused("subscript-list", "[1, 2][0]", "run", "grammar", "not on a list", None, (1, 0)),
    Refused("subscript-expr", 'pl.col("age")[0]', "run", "grammar", "not on an expression", None, (1, 0)),
    # ---- file I/O, escape hatches and foreign frames
    Refused("read_parquet", 'pl.read_parquet("/etc/passwd")', "run", "grammar", "`read_parquet` is not available",
            "never reads or writes files", (1, 3)),
    Refused("scan_csv", 'pl.scan_csv("x.csv")', "run", "grammar", "`scan_csv` is not available on pl",
            "never reads or writes files", (1, 3)),
    Refused("sink_parquet", 'patients.sink_parquet("x")', "run", "grammar",
            "`sink_parquet` is not available on a frame", "never reads or writes files", (1, 9)),
    Refused("write_csv", 'patients.write_csv("x")', "run", "grammar", "`write_csv` is not available on a frame",
            "never reads or writes files", (1, 9)),
    Refused("sql-context", "pl.SQLContext()", "run", "grammar", "`SQLContext` is not available", "SQL contexts",
            (1, 3)),
    Refused("frame-sql", 'patients.sql("select 1")', "run", "grammar", "`sql` is not available", "SQL", (1, 9)),
    Refused("config", "pl.Config.set_tbl_rows(100)", "run", "grammar", "`Config` is not available",
            "display settings", (1, 3)),
    Refused("lazyframe", 'pl.LazyFrame({"a": [1]})', "run", "grammar", "`LazyFrame` is not available",
            "analyst-built frames", (1, 3)),
    Refused("dataframe", 'pl.DataFrame({"a": [1]})', "run", "grammar", "`DataFrame` is not available",
            "analyst-built frames", (1, 3)),
    Refused("deserialize", 'pl.LazyFrame.deserialize("x")', "run", "grammar", "`LazyFrame` is not available", None,
            (1, 3)),
    Refused("serialize", "patients.serialize()", "run", "grammar", "`serialize` is not available on a frame",
            "cannot be exported", (1, 9)),
    Refused("map_elements", 'pl.col("age").map_elements(print)', "run", "grammar",
            "`map_elements` is not available on an expression", "UDFs", (1, 14)),
    Refused("map_batches", 'pl.col("age").map_batches(len)', "run", "grammar", "`map_batches`", "UDFs", (1, 14)),
    Refused("pipe", "patients.pipe(print)", "run", "grammar", "`pipe` is not available on a frame",
            "Python functions never run", (1, 9)),
    Refused("explain", "patients.explain()", "run", "grammar", "`explain`", "physical plan", (1, 9)),
    Refused("to_pandas", "patients.to_pandas()", "run", "grammar", "`to_pandas`", "released results", (1, 9)),
    Refused("plugins", "pl.plugins", "run", "grammar", "`plugins` is not available", "plugins", (1, 3)),
    Refused("object-dtype", 'patients.select(pl.col("age").cast(pl.Object)).collect()', "run", "grammar",
            "`Object` is not available on pl", None, (1, 38)),
    Refused("semi-join", 'patients.join(patients, on="patient_id", how="semi")', "run", "plan",
            "how='semi' is not available", "how='inner'", (1, 0)),
    Refused("unknown-kwarg", 'patients.sort("age", reverse=True)', "run", "plan", "has no argument `reverse`",
            None, (1, 0)),
    # ---- limits
    Refused("huge-cell", "x = 1\n" + "# padding\n" * 2500, "parse", "limit", "limit max_cell_chars",
            "split the work", None),
    Refused("deep-binop", "x = 1" + " + 1" * 100, "parse", "limit", "limit max_depth", "intermediate results",
            (1, 4)),
    Refused("deep-lists", "[" * 80 + "]" * 80, "parse", "limit", "limit max_depth", None, (1, 58)),
    Refused("deep-unary-parser", "-" * 5000 + "1", "parse", "limit", "too deeply nested", None, None),
    Refused("many-nodes", "[" + "1, " * 3000 + "]", "parse", "limit", "limit max_nodes", "split the work", (1, 5992)),
    Refused("too-many-parens", "(" * 250 + "1" + ")" * 250, "parse", "grammar", "invalid syntax", None, (1, 200)),
    Refused("long-string-arg", 'patients.filter(pl.col("ward").str.contains("' + "a" * 1200 + '"))', "run", "plan",
            "too long", None, (1, 16)),
    Refused("syntax-error", "patients.select(", "parse", "grammar", "invalid syntax", "Python-syntax", (1, 15)),
    # ---- near misses get "did you mean"
    Refused("typo-group_bY", 'patients.group_bY("ward")', "run", "grammar", "`group_bY` is not available on a frame",
            "did you mean `group_by`?", (1, 9)),
    Refused("typo-selct", 'patients.filter(pl.col("age") > 3).selct("age")', "run", "grammar", "`selct`",
            "did you mean `select`?", (1, 35)),
    Refused("typo-pl-coll", 'pl.coll("age")', "run", "grammar", "`coll` is not available on pl",
            "did you mean `col`?", (1, 3)),
    Refused("typo-dataset", "patinets", "run", "grammar", "name `patinets` is not defined",
            "did you mean `patients`?", (1, 0)),
    Refused("typo-expr-method", 'pl.col("age").summ()', "run", "grammar", "`summ`", "did you mean `sum`?", (1, 14)),
    Refused("typo-str-method", 'pl.col("ward").str.to_upercase()', "run", "grammar", "the .str namespace",
            "did you mean `to_uppercase`?", (1, 19)),
    Refused("typo-column", 'patients.select(pl.col("agee")).collect()', "run", "plan", "no column `agee`",
            "did you mean `age`?", (1, 0)),
    Refused("typo-kwarg", 'patients.sort("age", descendin=True)', "run", "plan", "no argument `descendin`",
            "did you mean `descending`?", (1, 0)),
    Refused("typo-on-second-line", 'x = 1\ny = patients.group_bY("ward")', "run", "grammar", "`group_bY`",
            "did you mean `group_by`?", (2, 13)),
]


def test_refused_table_is_large_enough() -> None:
    assert len(REFUSED) >= 90
    assert len({r.id for r in REFUSED}) == len(REFUSED)


@pytest.mark.parametrize("row", REFUSED, ids=[r.id for r in REFUSED])
def test_parse_stage(row: Refused) -> None:
    if row.stage == "run":
        assert parse_cell(row.src, LIMITS) is not None  # grammatical; the interpreter refuses it
        return
    with pytest.raises(BastionError) as info:
        parse_cell(row.src, LIMITS)
    err = info.value
    assert isinstance(err, LimitError if row.kind == "limit" else GrammarError)
    _check(row, err)


@pytest.mark.parametrize("row", REFUSED, ids=[r.id for r in REFUSED])
def test_session_refuses(row: Refused, session: Session) -> None:
    assert session.execute("kept = 1").outcome == "ok"
    result = session.execute(row.src)
    assert result.outcome == "refused", result
    assert result.value is None
    _check(row, result.error)
    # a refused cell changes nothing, and the session keeps working
    assert set(session.namespace) == {"kept"}
    assert session.execute("kept").value == 1
    rendered = result.error.render(row.src)
    assert row.message in rendered
    if row.at is not None:
        assert f"(line {row.at[0]}, column {row.at[1] + 1})" in rendered
        assert "^" in rendered
    if row.hint:
        assert "Hint: " in rendered


def _check(row: Refused, err: BastionError | None) -> None:
    assert err is not None
    assert err.kind == row.kind, err.render(row.src)
    assert row.message in err.message, err.message
    if row.hint is not None:
        assert err.hint is not None and row.hint in err.hint, err.hint
    if row.at is None:
        assert err.position is None
    else:
        assert err.position is not None
        assert (err.position.line, err.position.col) == row.at
    as_dict = err.as_dict()
    assert as_dict["kind"] == row.kind and as_dict["message"] == err.message


# ------------------------------------------------------------------ accepted


ACCEPTED = [
    ("empty", "", "ok"),
    ("comment", "# just a note", "ok"),
    ("literals", 'x = [1, -2.5, "a", True, None, (1, 2), {"k": 1}]', "ok"),
    ("assign-frame", 'x = patients.filter(pl.col("age") > 30)', "ok"),
    ("frame-value", 'patients.filter((pl.col("age") > 3) & ~(pl.col("ward") == "a"))', "ok"),
    ("expression-value", 'pl.when(pl.col("age") > 3).then(1).otherwise(0).alias("old")', "ok"),
    ("chained-when", 'pl.when(pl.col("age") > 40).then(pl.lit("old")).when(pl.col("age") > 30).then(pl.lit("mid"))'
                     '.otherwise(pl.lit("young"))', "ok"),
    ("methods", 'pl.col("age").cast(pl.Float64).round(1).fill_null(0).is_between(1, 5)', "ok"),
    ("namespaces", 'pl.col("ward").str.to_uppercase().str.contains("A", literal=True)', "ok"),
    ("datetime-literal", "pl.date(2024, 1, 31)", "ok"),
    ("dtype-with-args", 'pl.col("age").cast(pl.Datetime(time_unit="ms"))', "ok"),
    ("columns", "patients.columns", "ok"),
    ("schema", "patients.schema", "ok"),
    ("subscript-column", 'patients["age"]', "ok"),
    ("subscript-columns", 'patients[["age", "ward"]]', "ok"),
    ("with_columns-kwargs", 'patients.with_columns(a2=pl.col("age") * 2, w=pl.lit("x"))', "ok"),
    ("join", 'patients.join(patients, on="patient_id", how="left", suffix="_r")', "ok"),
    ("multi-statement", 'a = patients\nb = a.group_by("ward").agg(pl.len())\nb', "ok"),
    ("session-functions", "datasets()", "ok"),
    ("policy", 'policy("patients")', "ok"),
    ("requests", "requests()", "ok"),
    ("aggregate-release", 'patients.group_by("ward").agg(pl.len(), pl.col("age").mean()).collect()', "released"),
    ("summary-select", 'patients.select(pl.col("age").sum(), pl.len()).collect()', "released"),
    ("released-item", 'patients.select(pl.len()).collect().item()', "released"),
    ("height", "patients.height", "released"),
    ("row-level-review", "patients.head(3).collect()", "review"),
    ("unary-minus", 'patients.select((-pl.col("age")).sum()).collect()', "released"),
    ("comments-and-blank-lines", '# a\n\nx = 1  # trailing\n\nx', "ok"),
]


@pytest.mark.parametrize("src,outcome", [a[1:] for a in ACCEPTED], ids=[a[0] for a in ACCEPTED])
def test_accepted(src: str, outcome: str, session: Session) -> None:
    assert parse_cell(src, LIMITS) is not None
    result = session.execute(src)
    assert result.error is None, result.error.render(src)
    assert result.outcome == outcome


def test_near_limit_cells_parse() -> None:
    assert parse_cell("x = 1\n" + "#" * (LIMITS.max_cell_chars - 7), LIMITS)
    assert parse_cell("x = 1" + " + 1" * 50, LIMITS)


@pytest.mark.parametrize("name,options,expected", [
    ("group_bY", ["group_by", "agg", "select"], "did you mean `group_by`?"),
    ("selct", ["select", "sort"], "did you mean `select`?"),
    ("patinets", ["patients", "pl"], "did you mean `patients`?"),
    ("zzz", ["group_by", "select"], None),
    ("read_parquet", ["col", "lit"], None),
])
def test_suggest(name: str, options: list[str], expected: str | None) -> None:
    assert suggest(name, options) == expected


def test_smaller_configured_limits(tmp_path: Path) -> None:
    small = Limits(max_cell_chars=50, max_nodes=10, max_depth=5)
    with pytest.raises(LimitError, match="max_cell_chars"):
        parse_cell("x = 1\n" * 10, small)
    with pytest.raises(LimitError, match="max_nodes"):
        parse_cell("[1, 2, 3, 4, 5, 6, 7, 8, 9]", small)
    with pytest.raises(LimitError, match="max_depth"):
        parse_cell("x = [[[[[1]]]]]", small)
