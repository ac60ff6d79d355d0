"""Property-based attacks: cells generated from the grammar and from random Python.

Four generators:

* `grammar_cells`: chains of allowed frame verbs and expression methods with
  random (often hostile) arguments over the dataset's columns, aimed at the
  canaries (their ids, zip, income, ward appear among the literals);
* `python_cells`: random Python built like an AST (names, attributes with
  dunders, calls, lambdas, comprehensions, f-strings, statements, `!`/`%`
  lines) where the leaves are side effects: creating the SENTINEL file,
  printing, setting a builtin. If any piece ran as Python, the side effect
  would show;
* `token_cells` and `unicode_cells`: token soup and arbitrary text.

Properties, for every cell: `Session.execute` never raises (a raise is what
the kernel reports as InternalError); an error is a `BastionError` of a known
kind, and a grammar refusal carries a line and column; nothing a cell shows,
released automatically or refused, holds a canary or a masked value it did
not type; no file appears and nothing is printed. Most examples run directly
against `bastion_kernel.session.Session` (the code the kernel's worker runs,
so in-process is the same code, only faster); a smaller number run through a
real kernel, which must also keep answering.

Deterministic (`derandomize=True`, no example database) so CI is stable.
"""

from __future__ import annotations

import builtins
import contextlib
import io
import string
import tempfile
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from bastion_kernel import config
from bastion_kernel.display import bundle
from bastion_kernel.errors import BastionError
from bastion_kernel.grammar.allowlists import DT_METHODS, EXPR_METHODS, STR_METHODS, MethodSpec
from bastion_kernel.session import Session

from .conftest import Arena, assert_no_traceback
from .dataset import CANARY_ID, HEAVY_ID, Dataset, leaked, write_deployment

# Hypothesis caches what it learns under ./.hypothesis by default: not in the repository (and no example
# database at all, see FAST), so that a test run writes nothing into the tree.
set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "bastion-tests-hypothesis")

TITLES = {"GrammarError", "QueryError", "PolicyError", "LimitError", "ExecutionError", "ReviewError"}
SENTINEL_NAME = "FUZZ_SENTINEL"
SENTINEL_PATH = "SENTINEL/PATH"  # replaced by the real path when a cell runs

COLUMNS = {
    "people": ["person_id", "name", "ssn", "age", "sex", "income", "zip", "region", "birth_date", "score"],
    "visits": ["person_id", "ward", "cost", "visit_date"],
}
ALL_COLUMNS = sorted({c for cols in COLUMNS.values() for c in cols})
TEXT_COLUMNS = ["zip", "region", "sex", "ward", "name", "ssn"]
DATE_COLUMNS = ["birth_date", "visit_date"]
INTS = [0, 1, -1, 2, 3, 5, 10, 599, 600, CANARY_ID, HEAVY_ID, 8000000, 2**31, 2**63 - 1, -(2**63), 10**12]
FLOATS = [0.0, 0.5, 1.0, -1.5, 2718.28, 1e300, float("inf")]
STRS = ["97999", "Oubliette", "North", "F", "%Y", "%Y-%m-%d", "%Q", "%", "1mo", "1d", "1x", "-1d", "0d",
        "(", "^9", ".*", "", "a{1000}", "person_id", "income", "zip", "__bastion_u0", "*", "us", "both", "min"]
DTYPES = ["pl.Int64", "pl.Int8", "pl.UInt8", "pl.Float64", "pl.String", "pl.Boolean", "pl.Date", "pl.Datetime",
          'pl.Datetime("ms")', "pl.Duration", "pl.Categorical", "pl.Time"]


# --------------------------------------------------------------------------- grammar cells


def literal() -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(INTS).map(str),
        st.sampled_from(FLOATS).map(lambda f: repr(f) if f != float("inf") else "1e999"),
        st.sampled_from(STRS).map(lambda s: repr(s)),
        st.sampled_from(["True", "False", "None"]),
    )


def column(cols: list[str] = ALL_COLUMNS) -> st.SearchStrategy[str]:
    return st.sampled_from(cols)


def arg_for(kind: str, expr: st.SearchStrategy[str], cols: list[str]) -> st.SearchStrategy[str]:
    """Source text for one argument of a declared allow-list type (sometimes of the wrong type)."""
    column = lambda: st.sampled_from(cols)  # noqa: E731 - the frame's own columns
    by_type: dict[str, st.SearchStrategy[str]] = {
        "expr": st.one_of(expr, literal()),
        "col": st.one_of(column().map(repr), expr),
        "cols": st.one_of(column().map(repr), st.lists(column().map(repr), min_size=1, max_size=3).map(
            lambda xs: "[" + ", ".join(xs) + "]")),
        "str": st.sampled_from(STRS).map(repr),
        "strs": st.lists(st.sampled_from(STRS).map(repr), min_size=1, max_size=3).map(lambda xs: "[" + ", ".join(xs) + "]"),
        "int": st.sampled_from(INTS).map(str),
        "num": st.one_of(st.sampled_from(INTS).map(str), st.sampled_from(FLOATS[:5]).map(repr)),
        "bool": st.sampled_from(["True", "False"]),
        "dtype": st.sampled_from(DTYPES),
        "lits": st.lists(literal(), max_size=4).map(lambda xs: "[" + ", ".join(xs) + "]"),
        "scalar": st.one_of(literal(), st.dictionaries(st.sampled_from(INTS[:6]).map(str), literal(), max_size=2).map(
            lambda d: "{" + ", ".join(f"{k}: {v}" for k, v in d.items()) + "}")),
        "mapping": st.dictionaries(column().map(repr), st.sampled_from(["a", "b", "zip"]).map(repr), max_size=2).map(
            lambda d: "{" + ", ".join(f"{k}: {v}" for k, v in d.items()) + "}"),
    }
    right = by_type.get(kind, literal())
    return st.one_of(right, right, right, literal())  # mostly the right type, sometimes not


def call_of(spec: MethodSpec, expr: st.SearchStrategy[str], cols: list[str]) -> st.SearchStrategy[str]:
    """`name(args)` for one allow-list method: required arguments, some optional ones by keyword."""
    parts = []
    for p in spec.params:
        value = arg_for(p.type, expr, cols)
        if p.required:
            parts.append(value)
        else:
            parts.append(st.one_of(st.just(""), value.map(lambda v, n=p.name: f"{n}={v}")))
    return st.tuples(*parts).map(lambda xs: f"{spec.name}({', '.join(x for x in xs if x)})") if parts \
        else st.just(f"{spec.name}()")


def expressions(cols: list[str]) -> st.SearchStrategy[str]:
    """Expressions over the columns `cols` (of one dataset)."""
    base = st.one_of(
        column(cols).map(lambda c: f'pl.col("{c}")'),
        literal().map(lambda v: f"pl.lit({v})"),
        st.sampled_from(["pl.len()", "pl.all()", "pl.col(pl.Int64)", "pl.nth(0)", 'pl.col("^.*e$")',
                         'pl.exclude("name")']),
    )

    def extend(e: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
        methods = st.sampled_from(sorted(EXPR_METHODS.values(), key=lambda s: s.name))
        strs = st.sampled_from(sorted(STR_METHODS.values(), key=lambda s: s.name))
        dts = st.sampled_from(sorted(DT_METHODS.values(), key=lambda s: s.name))
        ops = st.sampled_from(["+", "-", "*", "/", "//", "%", "**", "&", "|", "^", "==", "!=", "<", "<=", ">", ">="])
        text = st.one_of(st.sampled_from([c for c in TEXT_COLUMNS if c in cols]).map(lambda c: f'pl.col("{c}")'), e)
        dates = st.one_of(st.sampled_from([c for c in DATE_COLUMNS if c in cols]).map(lambda c: f'pl.col("{c}")'), e)
        method = st.tuples(e, methods.flatmap(lambda s: call_of(s, e, cols))).map(lambda t: f"{t[0]}.{t[1]}")
        binop = st.tuples(e, ops, st.one_of(e, literal())).map(lambda t: f"({t[0]} {t[1]} {t[2]})")
        return st.one_of(
            method, method, method, binop, binop,
            st.tuples(text, strs.flatmap(lambda s: call_of(s, e, cols))).map(lambda t: f"{t[0]}.str.{t[1]}"),
            st.tuples(dates, dts.flatmap(lambda s: call_of(s, e, cols))).map(lambda t: f"{t[0]}.dt.{t[1]}"),
            st.tuples(st.sampled_from(["~", "-"]), e).map(lambda t: f"({t[0]}{t[1]})"),
            st.tuples(e, e, e).map(lambda t: f"pl.when({t[0]}).then({t[1]}).otherwise({t[2]})"),
            st.tuples(st.sampled_from(["concat_str", "coalesce", "max_horizontal", "sum_horizontal"]), e, e).map(
                lambda t: f"pl.{t[0]}([{t[1]}, {t[2]}])"),
            st.tuples(st.sampled_from(["sum", "mean", "min", "max", "n_unique", "first"]), column(cols)).map(
                lambda t: f'pl.{t[0]}("{t[1]}")'),
            st.tuples(e, st.sampled_from(["a", "n", "x", "__bastion_x", "income"])).map(lambda t: f'{t[0]}.alias("{t[1]}")'),
        )

    return st.recursive(base, extend, max_leaves=5)


def frames(dataset: str, *, row_level_selects: bool = True) -> st.SearchStrategy[str]:
    """A chain of frame verbs on `dataset`, ending in a release (or a schema)."""
    cols = COLUMNS[dataset]
    expr = expressions(cols)
    name = st.sampled_from(cols).map(repr)
    verbs = [
        expr.map(lambda e: f".filter({e})"),
        st.tuples(st.one_of(name, expr), st.lists(expr, min_size=1, max_size=3)).map(
            lambda t: f".group_by({t[0]}).agg({', '.join(t[1])})"),
        st.tuples(name, st.sampled_from(["len", "sum", "mean", "max", "first", "n_unique"])).map(
            lambda t: f".group_by({t[0]}).{t[1]}()"),
        st.tuples(st.one_of(name, expr), st.sampled_from(["True", "False"])).map(
            lambda t: f".sort({t[0]}, descending={t[1]})"),
        st.tuples(st.sampled_from(["head", "tail", "limit"]), st.sampled_from(INTS[:9])).map(
            lambda t: f".{t[0]}({t[1]})"),
        st.tuples(st.sampled_from(INTS[:9]), st.sampled_from(INTS[:9])).map(lambda t: f".slice({t[0]}, {t[1]})"),
        name.map(lambda c: f".unique(subset=[{c}])"),
        st.tuples(st.sampled_from(["people", "visits", 'people.filter(pl.col("age") > 50)']),
                  st.sampled_from(["inner", "left", "full", "cross", "semi"])).map(
            lambda t: f'.join({t[0]}, on="person_id", how="{t[1]}")' if t[1] != "cross"
            else f'.join({t[0]}, how="cross", suffix="_b")'),
        name.map(lambda c: f".drop({c})"),
        st.sampled_from([".sum()", ".mean()", ".max()", ".n_unique()", ".null_count()", "[1:3]"]),
    ]
    if row_level_selects:
        verbs += [
            st.lists(expr, min_size=1, max_size=3).map(lambda es: f".select({', '.join(es)})"),
            expr.map(lambda e: f".with_columns(x={e})"),
            name.map(lambda c: f"[{c}]"),
        ]
    end = st.sampled_from([".collect()", ".collect()", ".collect()", ".height", ".describe()", "", ".columns",
                           '.plot.hist("age", bins=5, range=[0, 100])'])
    return st.tuples(st.lists(st.one_of(*verbs), max_size=4), end).map(lambda t: dataset + "".join(t[0]) + t[1])


def grammar_cells(*, row_level_selects: bool = True) -> st.SearchStrategy[str]:
    frame = st.sampled_from(sorted(COLUMNS)).flatmap(lambda d: frames(d, row_level_selects=row_level_selects))
    return st.one_of(frame, frame, st.tuples(frame, frame).map(lambda t: f"x = {t[0]}\n{t[1]}"))


# --------------------------------------------------------------------------- random Python


def python_cells(sentinel: str) -> st.SearchStrategy[str]:
    effects = [f'open("{sentinel}", "w")', f'__import__("pathlib").Path("{sentinel}").touch()', 'print("PWNED")',
               f'exec("open(\'{sentinel}\', \'w\')")', 'setattr(__import__("builtins"), "PWNED", 1)',
               f'__builtins__["open"]("{sentinel}", "w")', f'getattr(__import__("os"), "mkdir")("{sentinel}")']
    names = ["people", "visits", "pl", "x", "open", "print", "exec", "eval", "__import__", "getattr", "globals", "vars",
             "help", "breakpoint", "os", "__builtins__", "fetch", "requests", "len", "type", "object", "super"]
    attrs = ["__class__", "__mro__", "__subclasses__", "__globals__", "__dict__", "__init__", "__builtins__",
             "gi_frame", "f_back", "format", "write_parquet", "map_elements", "pipe", "sink_csv", "to_pandas",
             "read_csv", "SQLContext", "Config", "deserialize", "collect", "filter", "select", "col", "sum", "system"]
    base = st.one_of(st.sampled_from(effects), st.sampled_from(effects), st.sampled_from(names),
                     st.sampled_from(['"x"', "1", "1.5", 'b"x"', "None", "True", "...", "1j", f'"{sentinel}"']))

    def extend(e: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
        return st.one_of(
            st.tuples(e, st.sampled_from(attrs)).map(lambda t: f"{t[0]}.{t[1]}"),
            st.tuples(e, st.lists(e, max_size=3)).map(lambda t: f"{t[0]}({', '.join(t[1])})"),
            st.tuples(e, e).map(lambda t: f"{t[0]}(key={t[1]})"),
            st.tuples(e, e).map(lambda t: f"{t[0]}[{t[1]}]"),
            st.tuples(e, st.sampled_from(["+", "%", "@", "<<", "and", "or", "in", "is", "not in", "=="]), e).map(
                lambda t: f"({t[0]} {t[1]} {t[2]})"),
            e.map(lambda a: f"(not {a})"),
            e.map(lambda a: f"(lambda q=0: {a})()"),
            st.tuples(e, e).map(lambda t: f"[{t[0]} for q in [{t[1]}]]"),
            st.tuples(e, e).map(lambda t: f"{{q: {t[0]} for q in {t[1]}}}"),
            e.map(lambda a: f'f"{{{a}}}"'),
            e.map(lambda a: f'"{{0.__class__}}".format({a})'),
            st.tuples(e, e, e).map(lambda t: f"({t[0]} if {t[1]} else {t[2]})"),
            e.map(lambda a: f"(q := {a})"),
            e.map(lambda a: f"f(*{a}, **{a})"),
            st.lists(e, max_size=3).map(lambda xs: "{" + ", ".join(xs) + "}"),
            st.lists(e, max_size=3).map(lambda xs: "(" + ", ".join(xs) + ",)"),
        )

    expr = st.recursive(base, extend, max_leaves=6)
    statement = st.one_of(
        expr, expr.map(lambda e: f"x = {e}"), expr.map(lambda e: f"x += {e}"), expr.map(lambda e: f"x: int = {e}"),
        expr.map(lambda e: f"del {e}"), st.sampled_from(["import os", "from os import system", "global x", "pass",
                                                         "return 1", f"!touch {sentinel}", f"%run {sentinel}",
                                                         f"%%bash\ntouch {sentinel}"]),
        expr.map(lambda e: f"def f():\n    {e}\nf()"), expr.map(lambda e: f"class C:\n    y = {e}"),
        expr.map(lambda e: f"@{e}\ndef g():\n    pass"), expr.map(lambda e: f"with {e} as q:\n    pass"),
        expr.map(lambda e: f"for q in [1]:\n    {e}"), expr.map(lambda e: f"if True:\n    {e}"),
        expr.map(lambda e: f"try:\n    {e}\nexcept Exception:\n    pass"), expr.map(lambda e: f"assert {e}"),
        expr.map(lambda e: f"raise {e}"), expr.map(lambda e: f"match {e}:\n    case _:\n        pass"),
        expr.map(lambda e: f"async def h():\n    await {e}"),
    )
    return st.lists(statement, min_size=1, max_size=4).map("\n".join)


TOKENS = ["people", "visits", "pl", ".", "(", ")", "[", "]", "{", "}", ",", ":", "=", "==", "+", "-", "*", "**", "/",
          "%", "!", "@", "lambda", "import", "def", "class", "for", "in", "if", "else", "not", "and", "or", "is",
          "yield", "await", "async", "with", "as", "try", "except", "__import__", "__class__", "open", "print",
          "collect", "filter", "col", '"income"', '"97999"', "42424", "1", "0.5", "\n", "    ", "#", '"""', "'", "\\",
          "f'", "b'", "\t", ";", "...", "->", ":="]


def token_cells() -> st.SearchStrategy[str]:
    return st.lists(st.sampled_from(TOKENS), min_size=1, max_size=25).map(" ".join)


def unicode_cells() -> st.SearchStrategy[str]:
    return st.one_of(st.text(max_size=200),
                     st.text(alphabet=string.printable + "\u00e9\u4e2d\u200b\u202e\ufeff\x00", max_size=200))


# --------------------------------------------------------------------------- the session and the checks


class Fuzzer:
    """An in-process Session on the security dataset, and what a cell must never do."""

    def __init__(self, data: Dataset, folder: Path) -> None:
        self.data = data
        self.folder = folder
        self.target = folder / "target"
        self.target.mkdir()
        self.sentinel = self.target / SENTINEL_NAME
        deployment = config.load(write_deployment(data, folder / "deployment"))
        self.session = Session(deployment, user="fuzzer")
        # The same deployment over the same data without the two canary individuals.
        gone = pl.col("person_id").is_in([CANARY_ID, HEAVY_ID]).not_()
        twin_data = folder / "twin" / "data"
        twin_data.mkdir(parents=True)
        data.people.filter(gone).write_parquet(twin_data / "people.parquet")
        data.visits.filter(gone).write_parquet(twin_data / "visits.parquet")
        twin = Dataset(folder / "twin", twin_data, data.people.filter(gone), data.visits.filter(gone))
        self.twin = Session(config.load(write_deployment(twin, folder / "twin" / "deployment")), user="fuzzer")
        self.strict = Session(config.load(write_deployment(data, folder / "reject", on_violation="reject")),
                              user="fuzzer")

    def files(self) -> set[str]:
        return {str(p) for p in self.target.rglob("*")} | {str(p) for p in self.data.data.rglob("*")}

    def check(self, cell: str) -> None:
        before = self.files()
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
            result = self.session.execute(cell)  # a raise here is the kernel's InternalError
        assert out.getvalue() == "", f"{cell!r} printed {out.getvalue()!r}"
        assert not self.sentinel.exists(), f"{cell!r} created the sentinel"
        assert not hasattr(builtins, "PWNED"), f"{cell!r} changed a builtin"
        assert self.files() == before, f"{cell!r} created or removed files"
        if result.error is not None:
            error = result.error
            assert isinstance(error, BastionError) and error.title in TITLES, f"{cell!r}: {error!r}"
            if error.title == "GrammarError":
                assert error.position is not None, f"{cell!r}: a grammar refusal without a position: {error.message}"
            if error.title == "LimitError" and result.outcome == "refused":
                assert "limit " in error.message or "(limit" in error.message, error.message
            shown = error.render(cell)
        else:
            shown = str(bundle(result.value))
        assert_no_traceback(shown)
        found = leaked(shown, cell, self.data.masked_values)
        assert not found, f"{cell!r} ({result.outcome}) showed {found}: {shown[:600]}"


    def check_position(self, cell: str) -> None:
        """Every refusal points into the cell (a cell too large to read has no place to point at)."""
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            result = self.strict.execute(cell)
        error = result.error
        if error is None or result.outcome != "refused" or "max_cell_chars" in error.message:
            return
        assert error.position is not None, f"{cell!r}: {error.title} without a position: {error.message}"

    def failure_kind(self, session: Session, cell: str) -> str | None:
        """None, or which refusal/failure the cell met (a raise counts too)."""
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            result = session.execute(cell)
        error = result.error
        if error is None or error.title == "LimitError":  # max_release_rows counts rows: not about one person
            return None
        return error.title if error.title != "QueryError" else f"QueryError: {error.message}"

    def check_same_failure(self, cell: str) -> None:
        """Differential: with and without the canaries, a cell fails (or not) the same way."""
        a, b = self.failure_kind(self.session, cell), self.failure_kind(self.twin, cell)
        assert a == b, f"{cell!r}: {a!r} with the canaries, {b!r} without: an oracle"


@pytest.fixture(scope="module")
def fuzzer(sec_data: Dataset, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzzer]:
    f = Fuzzer(sec_data, tmp_path_factory.mktemp("fuzz"))
    yield f
    f.session.close()
    f.twin.close()
    f.strict.close()


FAST = settings(deadline=None, derandomize=True, database=None, print_blob=False,
                suppress_health_check=list(HealthCheck))


def examples(n: int) -> settings:
    return settings(FAST, max_examples=n)


@examples(120)
@given(cell=grammar_cells())
def test_grammar_cells_never_crash_and_never_leak(fuzzer: Fuzzer, cell: str) -> None:
    fuzzer.check(cell)


@examples(80)
@given(cell=grammar_cells())
def test_failing_or_not_does_not_depend_on_the_canaries(fuzzer: Fuzzer, cell: str) -> None:
    fuzzer.check_same_failure(cell)


@examples(60)
@given(cell=grammar_cells())
def test_every_refusal_of_a_grammar_cell_carries_a_position(fuzzer: Fuzzer, cell: str) -> None:
    fuzzer.check_position(cell)


PYTHON_CELLS = python_cells(SENTINEL_PATH)


@examples(200)
@given(cell=PYTHON_CELLS)
def test_random_python_never_executes(fuzzer: Fuzzer, cell: str) -> None:
    fuzzer.check(cell.replace(SENTINEL_PATH, str(fuzzer.sentinel)))


@examples(150)
@given(cell=token_cells())
def test_token_soup_is_refused_with_a_position(fuzzer: Fuzzer, cell: str) -> None:
    fuzzer.check(cell)


@examples(150)
@given(cell=unicode_cells())
def test_random_text_never_crashes(fuzzer: Fuzzer, cell: str) -> None:
    fuzzer.check(cell)


# --------------------------------------------------------------------------- through a real kernel


def _through_kernel(arena: Arena, cell: str) -> None:
    cell = cell.replace("\x00", "")  # the wire format is JSON text
    before = arena.files()
    out = arena.run(cell)
    if out.status == "error":
        assert out.ename in TITLES, out.describe()
    assert_no_traceback(out.text)
    assert not leaked(out.text, cell, arena.data.masked_values), out.describe()
    arena.assert_alive()
    assert arena.files() == before


@examples(20)
@given(cell=grammar_cells())
def test_the_kernel_survives_grammar_cells(arena: Arena, cell: str) -> None:
    _through_kernel(arena, cell)


@examples(12)
@given(cell=PYTHON_CELLS)
def test_the_kernel_survives_random_python(arena: Arena, cell: str) -> None:
    _through_kernel(arena, cell.replace(SENTINEL_PATH, f"{arena.target}/{SENTINEL_NAME}"))


@examples(8)
@given(cell=unicode_cells())
def test_the_kernel_survives_random_text(arena: Arena, cell: str) -> None:
    _through_kernel(arena, cell)
