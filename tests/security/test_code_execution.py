"""Attack class: making the kernel execute Python through the cell's syntax.

Bastion never executes a cell: the grammar checker refuses every node outside
its allow-list before anything is interpreted, and names resolve only against
the session's registry. Each attack below would, if run as Python, reach the
interpreter's internals, call a builtin, or create the file TARGET/pwned; each
must be a GrammarError with a position, leave no file behind, and leave the
kernel answering.
"""

from __future__ import annotations

import pytest

from .conftest import Arena, assert_no_late_leak

PWN = 'TARGET/pwned'


def cases(*rows: tuple[str, str]) -> list:
    return [pytest.param(code, id=name) for name, code in rows]


IMPORTS = cases(
    ("import-os", "import os"),
    ("import-as", "import os as o"),
    ("import-polars-again", "import polars as pl2"),
    ("from-import", "from os import system"),
    ("relative-import", "from . import session"),
    ("import-after-an-assignment", "x = 1\nimport subprocess"),
    ("dunder-import-call", f'__import__("os").system("touch {PWN}")'),
    ("dunder-import-via-builtins", f'__builtins__["__import__"]("os").mkdir("{PWN}")'),
    ("importlib-by-name", 'importlib.import_module("os")'),
)

DUNDER_WALKS = cases(
    ("frame-class", "people.__class__"),
    ("class-mro-subclasses", "people.__class__.__mro__[1].__subclasses__()"),
    ("tuple-bases-subclasses", "().__class__.__bases__[0].__subclasses__()"),
    ("string-class-walk", '"".__class__.__mro__[1].__subclasses__()'),
    ("function-globals", 'pl.col.__globals__["os"]'),
    ("session-function-globals", "fetch.__globals__"),
    ("module-dict", "pl.__dict__"),
    ("expression-class", 'pl.col("income").__class__'),
    ("bound-method-self", "datasets.__self__"),
    ("dunder-name-assignment", "__builtins__ = 1"),
    ("private-attribute", "people._lf"),
    ("private-name", "_ = people"),
    ("generator-frame", "(x for x in [1]).gi_frame.f_back"),
)

LAMBDAS_AND_DEFS = cases(
    ("lambda-call", '(lambda: __import__("os"))()'),
    ("lambda-assigned", "f = lambda: 1"),
    ("lambda-in-pipe", "people.pipe(lambda df: df)"),
    ("lambda-in-map-elements", 'pl.col("income").map_elements(lambda x: x)'),
    ("lambda-default-argument", '(lambda x=open("' + PWN + '", "w"): x)()'),
    ("def", f'def f():\n    open("{PWN}", "w")\nf()'),
    ("async-def", "async def f():\n    pass"),
    ("class", "class A:\n    pass"),
    ("decorator", "@print\ndef f():\n    pass"),
)

COMPREHENSIONS = cases(
    ("list-comprehension", "[c for c in people.columns]"),
    ("dict-comprehension", '{k: 1 for k in "ab"}'),
    ("set-comprehension", "{x for x in [1]}"),
    ("generator-expression", "len(x for x in [1])"),
    ("comprehension-over-subclasses", "[c for c in ().__class__.__bases__]"),
    ("walrus-in-comprehension", "[y := 1 for x in [1]]"),
)

STRINGS = cases(
    ("f-string", 'f"{people}"'),
    ("f-string-expression", 'f"{1 + 1}"'),
    ("f-string-dunder", 'f"{pl.__name__}"'),
    ("f-string-nested-format-spec", "f\"{'a'!r:>{10}}\""),
    ("str-format-attribute-walk", '"{0.__class__}".format(people)'),
    ("str-format", '"{}".format(1)'),
    ("str-format-map", '"{x}".format_map({"x": 1})'),
    ("bytes-literal", 'b"x"'),
    ("percent-formatting-a-frame", '"%s" % people'),
)

SHELL_AND_MAGICS = cases(
    ("bang-line", f"!touch {PWN}"),
    ("indented-bang-line", f"  !touch {PWN}"),
    ("bang-after-code", f"x = 1\n!touch {PWN}"),
    ("line-magic", "%env"),
    ("cell-magic", f"%%bash\ntouch {PWN}"),
    ("run-magic", "%run -i something.py"),
    ("help-suffix", "pl?"),
    ("help-prefix", "?pl"),
    ("system-assignment", "files = !ls"),
)

BUILTINS = cases(
    ("globals", "globals()"),
    ("locals", "locals()"),
    ("vars", "vars(pl)"),
    ("dir", "dir(people)"),
    ("help", "help(pl)"),
    ("breakpoint", "breakpoint()"),
    ("open-write", f'open("{PWN}", "w")'),
    ("open-read", 'open("/etc/passwd").read()'),
    ("exec", f'exec("open(\'{PWN}\', \'w\')")'),
    ("eval", 'eval("1 + 1")'),
    ("compile", 'compile("1", "x", "eval")'),
    ("getattr", 'getattr(pl, "col")'),
    ("getattr-dunder", 'getattr(people, "__class__")'),
    ("setattr", 'setattr(people, "x", 1)'),
    ("print", "print(people)"),
    ("type", "type(people)"),
    ("input", "input()"),
    ("exit", "exit()"),
    ("super", "super()"),
    ("memoryview", 'memoryview(b"x")'),
)

STATEMENTS = cases(
    ("for-loop", "for x in [1]:\n    pass"),
    ("while-true", "while True:\n    pass"),
    ("with-open", f'with open("{PWN}", "w") as f:\n    pass'),
    ("try-except", "try:\n    1\nexcept Exception as e:\n    e"),
    ("try-star", "try:\n    1\nexcept* Exception:\n    pass"),
    ("raise", "raise SystemExit"),
    ("assert", "assert False"),
    ("del", "del people"),
    ("global", "global pl"),
    ("augmented-assignment", "x = 1\nx += 1"),
    ("annotated-assignment", "x: int = 1"),
    ("attribute-assignment", "people.x = 1"),
    ("subscript-assignment", 'people["income"] = 1'),
    ("tuple-unpacking", "a, b = 1, 2"),
    ("chained-assignment", "a = b = 1"),
    ("starred-call", 'pl.col(*["income"])'),
    ("double-star-call", 'pl.col(**{"name": "income"})'),
    ("dict-unpacking", '{**{"a": 1}}'),
    ("walrus", "(y := 1)"),
    ("if-statement", "if True:\n    x = 1"),
    ("conditional-expression", "1 if True else 2"),
    ("boolean-operators", "people and pl"),
    ("not", "not people"),
    ("is-comparison", "people is None"),
    ("in-comparison", '"income" in people.columns'),
    ("chained-comparison", "1 < 2 < 3"),
    ("matmul", "people @ people"),
    ("shift-operator", "1 << 64"),
    ("ellipsis", "..."),
    ("complex-literal", "1j"),
    ("set-literal", "{1, 2}"),
    ("match-statement", "match people:\n    case _:\n        pass"),
    ("yield", "yield 1"),
    ("await", "await people"),
    ("return", "return 1"),
    ("syntax-error", "people.filter(("),
    ("null-byte", "people\x00"),
)


@pytest.mark.parametrize("code", IMPORTS)
def test_imports_are_refused(arena: Arena, code: str) -> None:
    arena.attack(code, "refused", ename="GrammarError")


@pytest.mark.parametrize("code", DUNDER_WALKS)
def test_dunder_and_private_walks_are_refused(arena: Arena, code: str) -> None:
    arena.attack(code, "refused", ename="GrammarError")


@pytest.mark.parametrize("code", LAMBDAS_AND_DEFS)
def test_lambdas_and_definitions_are_refused(arena: Arena, code: str) -> None:
    arena.attack(code, "refused", ename="GrammarError")


@pytest.mark.parametrize("code", COMPREHENSIONS)
def test_comprehensions_are_refused(arena: Arena, code: str) -> None:
    arena.attack(code, "refused", ename="GrammarError")


@pytest.mark.parametrize("code", STRINGS)
def test_fstrings_and_string_formatting_are_refused(arena: Arena, code: str) -> None:
    arena.attack(code, "refused", ename=_ename_for(code))


@pytest.mark.parametrize("code", SHELL_AND_MAGICS)
def test_shell_lines_and_magics_are_refused(arena: Arena, code: str) -> None:
    arena.attack(code, "refused", ename="GrammarError")


@pytest.mark.parametrize("code", BUILTINS)
def test_python_builtins_do_not_exist(arena: Arena, code: str) -> None:
    arena.attack(code, "refused", ename="GrammarError")


@pytest.mark.parametrize("code", STATEMENTS)
def test_statements_outside_the_grammar_are_refused(arena: Arena, code: str) -> None:
    arena.attack(code, "refused", ename="GrammarError")


def test_a_refused_cell_keeps_the_sessions_variables(arena: Arena) -> None:
    """An attack in the middle of a session changes nothing the session holds."""
    ok = arena.run('adults = people.filter(pl.col("age") >= 18)')
    assert ok.status == "ok", ok.describe()
    arena.attack('adults = 1\nimport os', "refused", ename="GrammarError")
    out = arena.run("adults.columns")
    assert out.status == "ok" and "income" in out.shown, out.describe()


def test_no_late_message_carries_a_canary(arena: Arena) -> None:
    assert_no_late_leak(arena)


def _ename_for(code: str) -> str:
    """`"%s" % people` is grammatical (a `%` between two values) and refused by the interpreter."""
    return "QueryError" if code.startswith('"%s"') else "GrammarError"


def test_the_file_check_sees_a_file_appear(arena: Arena) -> None:
    """The arena's own check is not vacuous: a file in any watched folder changes the snapshot."""
    before = arena.files()
    for folder in (arena.target, arena.cwd, arena.state):
        probe = folder / "probe.txt"
        probe.write_text("x")
        try:
            assert arena.files() != before, f"a new file in {folder} went unnoticed"
        finally:
            probe.unlink()
    assert arena.files() == before
