"""Parse a cell and refuse every syntax node that is not on the allow-list.

Why a whitelist visitor: one `visit_<Node>` per allowed node and a generic
visitor that refuses everything else, so a node a future Python adds is refused
until someone reviews it (RestrictedPython's lesson). Fields are walked
generically with `ast.iter_fields`, never listed by hand.
"""

from __future__ import annotations

import ast
import difflib

from ..config import Limits
from ..errors import GrammarError, LimitError, Position

_BINOPS = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow, ast.BitAnd, ast.BitOr, ast.BitXor)
_UNARY = (ast.USub, ast.UAdd, ast.Invert)
_CMPOPS = (ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE)
_ALLOWED_CONSTANTS = (str, int, float, bool, type(None))

_NODE_HINTS: dict[type, str] = {
    ast.Import: "imports are not available; `pl` is already defined",
    ast.ImportFrom: "imports are not available; `pl` is already defined",
    ast.FunctionDef: "defining functions is not available; chain polars verbs instead",
    ast.AsyncFunctionDef: "defining functions is not available",
    ast.ClassDef: "defining classes is not available",
    ast.Lambda: "lambdas (Python functions) are not available; use polars expressions such as pl.col('x') * 2",
    ast.ListComp: "comprehensions are not available; pass several expressions, or pl.col(['a', 'b'])",
    ast.SetComp: "comprehensions are not available",
    ast.DictComp: "comprehensions are not available",
    ast.GeneratorExp: "generator expressions are not available",
    ast.JoinedStr: "f-strings are not available; use pl.concat_str([...]) or plain strings",
    ast.For: "loops are not available; use group_by(...).agg(...)",
    ast.While: "loops are not available",
    ast.If: "if statements are not available; use pl.when(cond).then(a).otherwise(b)",
    ast.IfExp: "conditional expressions are not available; use pl.when(cond).then(a).otherwise(b)",
    ast.With: "with blocks are not available",
    ast.Try: "try blocks are not available",
    ast.Delete: "del is not available; reassign the name instead",
    ast.Global: "global is not available",
    ast.Nonlocal: "nonlocal is not available",
    ast.AugAssign: "augmented assignment is not available; write x = x.filter(...)",
    ast.AnnAssign: "annotations are not available",
    ast.Starred: "star-arguments are not available; list the arguments",
    ast.NamedExpr: "the walrus operator is not available",
    ast.Await: "await is not available",
    ast.Yield: "yield is not available",
    ast.BoolOp: "`and`/`or` do not work on polars expressions; use `&` and `|` with parentheses",
    ast.Set: "sets are not available; use a list",
}


class _Checker(ast.NodeVisitor):
    """Refuse any node without an explicit `visit_` method."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.count = 0
        self.depth = 0

    def visit(self, node: ast.AST) -> None:
        self.count += 1
        if self.count > self.limits.max_nodes:
            raise LimitError(
                f"the cell has more than {self.limits.max_nodes} syntax nodes (limit max_nodes)",
                hint="split the work over several cells",
                position=_pos(node),
            )
        self.depth += 1
        try:
            if self.depth > self.limits.max_depth:
                raise LimitError(
                    f"the cell nests deeper than {self.limits.max_depth} levels (limit max_depth)",
                    hint="assign intermediate results to names",
                    position=_pos(node),
                )
            method = getattr(self, "visit_" + type(node).__name__, None)
            if method is None:
                self.refuse(node)
            else:
                method(node)
        finally:
            self.depth -= 1

    def refuse(self, node: ast.AST) -> None:
        hint = _NODE_HINTS.get(type(node), "a cell holds assignments to names and polars expressions only")
        raise GrammarError(f"{_describe(node)} is not allowed", hint=hint, position=_pos(node))

    def generic_fields(self, node: ast.AST, skip: tuple[str, ...] = ()) -> None:
        for fname, value in ast.iter_fields(node):
            if fname in skip:
                continue
            if isinstance(value, ast.AST):
                self.visit(value)
            elif isinstance(value, list):
                for item in value:
                    if isinstance(item, ast.AST):
                        self.visit(item)

    # ---- statements
    def visit_Module(self, node: ast.Module) -> None:
        if node.type_ignores:
            self.refuse(node.type_ignores[0])
        for stmt in node.body:
            self.visit(stmt)

    def visit_Assign(self, node: ast.Assign) -> None:
        if len(node.targets) != 1 or not isinstance(node.targets[0], ast.Name):
            raise GrammarError(
                "only assignment to a single plain name is allowed",
                hint="write `name = expression`",
                position=_pos(node.targets[0]),
            )
        if node.type_comment:
            self.refuse(node)
        _check_name(node.targets[0].id, node.targets[0])
        self.visit(node.value)

    def visit_Expr(self, node: ast.Expr) -> None:
        self.visit(node.value)

    # ---- expressions
    def visit_Name(self, node: ast.Name) -> None:
        _check_name(node.id, node)
        if not isinstance(node.ctx, ast.Load):
            self.refuse(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        if type(node.value) not in _ALLOWED_CONSTANTS:
            raise GrammarError(
                f"a {type(node.value).__name__} literal is not allowed",
                hint="use strings, numbers, True, False or None",
                position=_pos(node),
            )

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if node.attr.startswith("_"):
            raise GrammarError(
                f"attribute `{node.attr}` is not allowed (names starting with '_' are never available)",
                hint="use the polars methods listed by Tab completion",
                position=_pos(node),
            )
        self.visit(node.value)

    def visit_Call(self, node: ast.Call) -> None:
        self.visit(node.func)
        for arg in node.args:
            if isinstance(arg, ast.Starred):
                self.refuse(arg)
            self.visit(arg)
        for kw in node.keywords:
            if kw.arg is None:
                raise GrammarError("`**kwargs` is not allowed", hint="name each argument", position=_pos(kw.value))
            self.visit(kw.value)

    def visit_BinOp(self, node: ast.BinOp) -> None:
        if not isinstance(node.op, _BINOPS):
            raise GrammarError(f"operator {type(node.op).__name__} is not allowed", position=_pos(node))
        self.visit(node.left)
        self.visit(node.right)

    def visit_UnaryOp(self, node: ast.UnaryOp) -> None:
        if isinstance(node.op, ast.Not):
            raise GrammarError("`not` does not work on polars expressions", hint="use `~expr`", position=_pos(node))
        if not isinstance(node.op, _UNARY):
            raise GrammarError(f"operator {type(node.op).__name__} is not allowed", position=_pos(node))
        self.visit(node.operand)

    def visit_Compare(self, node: ast.Compare) -> None:
        if len(node.ops) != 1:
            raise GrammarError(
                "chained comparisons are not allowed",
                hint="combine two comparisons with `&`: (a < b) & (b < c)",
                position=_pos(node),
            )
        if not isinstance(node.ops[0], _CMPOPS):
            raise GrammarError(
                f"comparison `{type(node.ops[0]).__name__}` is not allowed",
                hint="for membership use .is_in([...]); for null checks .is_null()",
                position=_pos(node),
            )
        self.visit(node.left)
        self.visit(node.comparators[0])

    def visit_List(self, node: ast.List) -> None:
        for elt in node.elts:
            self.visit(elt)

    def visit_Tuple(self, node: ast.Tuple) -> None:
        for elt in node.elts:
            self.visit(elt)

    def visit_Dict(self, node: ast.Dict) -> None:
        for key in node.keys:
            if key is None:
                raise GrammarError("`**` in a dict is not allowed", position=_pos(node))
            self.visit(key)
        for value in node.values:
            self.visit(value)

    def visit_Subscript(self, node: ast.Subscript) -> None:
        self.visit(node.value)
        self.visit(node.slice)

    def visit_Slice(self, node: ast.Slice) -> None:
        self.generic_fields(node)


def _check_name(name: str, node: ast.AST) -> None:
    if name.startswith("_"):
        raise GrammarError(
            f"name `{name}` is not allowed (names starting with '_' are never available)",
            hint="choose a name starting with a letter",
            position=_pos(node),
        )


def _describe(node: ast.AST) -> str:
    labels = {
        ast.Import: "`import`", ast.ImportFrom: "`from ... import`", ast.Lambda: "a lambda",
        ast.FunctionDef: "`def`", ast.ClassDef: "`class`", ast.JoinedStr: "an f-string",
        ast.ListComp: "a list comprehension", ast.GeneratorExp: "a generator expression",
        ast.DictComp: "a dict comprehension", ast.SetComp: "a set comprehension",
    }
    return labels.get(type(node), f"`{type(node).__name__}` syntax")


def _pos(node: ast.AST) -> Position | None:
    line = getattr(node, "lineno", None)
    if line is None:
        return None
    end = getattr(node, "end_col_offset", None) if getattr(node, "end_lineno", line) == line else None
    return Position(line, getattr(node, "col_offset", 0), end)


def parse_cell(source: str, limits: Limits) -> ast.Module:
    """Parse and check a cell; raise `GrammarError`/`LimitError` with a position."""
    if len(source) > limits.max_cell_chars:
        raise LimitError(
            f"the cell has {len(source)} characters; the limit is {limits.max_cell_chars} (limit max_cell_chars)",
            hint="split the work over several cells",
        )
    for lineno, line in enumerate(source.splitlines(), start=1):
        stripped = line.lstrip()
        if stripped[:1] in ("!", "%"):
            raise GrammarError(
                f"`{stripped[:1]}` lines (shell commands and magics) are not available",
                hint="a cell holds polars expressions only",
                position=Position(lineno, len(line) - len(stripped), len(line)),
            )
    try:
        tree = ast.parse(source, mode="exec")
    except SyntaxError as exc:
        raise GrammarError(
            f"invalid syntax: {exc.msg}",
            hint="a cell holds Python-syntax assignments and polars expressions",
            position=Position(exc.lineno or 1, max((exc.offset or 1) - 1, 0)),
        ) from None
    except (RecursionError, MemoryError, ValueError):
        raise LimitError("the cell is too deeply nested to parse (limit max_depth)") from None
    _Checker(limits).visit(tree)
    return tree


def suggest(name: str, options: list[str] | tuple[str, ...] | set[str]) -> str | None:
    """'did you mean `group_by`?' for a near miss, else None."""
    close = difflib.get_close_matches(name, sorted(options), n=1, cutoff=0.7)
    return f"did you mean `{close[0]}`?" if close else None
