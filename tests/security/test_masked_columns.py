"""Attack class: learning a masked value (name, ssn) through what it drives.

A masked column may be selected, and is then only ever shown as '*'. It may
not drive anything: a filter, a group key, a join or sort key, a condition,
an aggregate input, nor may anything derived from it (a slice, an alias, a
concatenation, a length, a cast). Each such attack is a PolicyError naming
the rule `masked-column`, whatever the deployment's on_violation; selecting
masked values is a review request whose stored snapshot (what the owner
would release) shows '*' only, also for columns derived from them.
"""

from __future__ import annotations

import pytest

from conftest import bastion_cli

from bastion_kernel.review import ReviewStore

from .conftest import Arena, assert_no_late_leak
from .dataset import CANARY_NAME, CANARY_SSN


def cases(*rows: tuple[str, str]) -> list:
    return [pytest.param(code, id=name) for name, code in rows]


COUNT = "select(pl.len()).collect()"

PREDICATES = cases(
    ("equals-name", f'people.filter(pl.col("name") == "{CANARY_NAME}").{COUNT}'),
    ("name-starts-with", f'people.filter(pl.col("name").str.starts_with("Z")).{COUNT}'),
    ("name-contains", f'people.filter(pl.col("name").str.contains("Quixote")).{COUNT}'),
    ("ssn-prefix", f'people.filter(pl.col("ssn").str.slice(0, 3) == "987").{COUNT}'),
    ("ssn-is-in", f'people.filter(pl.col("ssn").is_in(["{CANARY_SSN}"])).{COUNT}'),
    ("name-is-null", f'people.filter(pl.col("name").is_null()).{COUNT}'),
    ("ssn-length", f'people.filter(pl.col("ssn").str.len_chars() > 10).{COUNT}'),
    ("name-ordering", f'people.filter(pl.col("name") > "Y").{COUNT}'),
    ("name-equals-itself", f'people.filter(pl.col("name") == pl.col("name")).{COUNT}'),
    ("ssn-cast-to-number", f'people.filter(pl.col("ssn").str.replace_all("-", "").cast(pl.Int64) > 0).{COUNT}'),
    ("keyword-filter", f'people.filter(name="{CANARY_NAME}").{COUNT}'),
    ("condition-inside-aggregate",
     'people.select(pl.col("income").filter(pl.col("name").str.starts_with("Z")).sum()).collect()'),
    ("when-on-name", 'people.select(pl.when(pl.col("name").str.starts_with("Z")).then(1).otherwise(0).sum()).collect()'),
    ("flag-stored-then-summed",
     'people.with_columns(f=pl.col("name").str.starts_with("Z")).select(pl.col("f").sum()).collect()'),
    ("is-null-count", 'people.select(pl.col("name").is_null().sum()).collect()'),
)

DERIVED_KEYS = cases(
    ("group-by-ssn-prefix", 'people.group_by(pl.col("ssn").str.slice(0, 3)).agg(pl.len()).collect()'),
    ("group-by-initial", 'people.group_by(pl.col("name").str.head(1)).agg(pl.len()).collect()'),
    ("group-by-name-length", 'people.group_by(pl.col("name").str.len_chars()).agg(pl.len()).collect()'),
    ("group-by-name", 'people.group_by("name").agg(pl.len()).collect()'),
    ("group-by-coalesce", 'people.group_by(pl.coalesce("name", "zip")).agg(pl.len()).collect()'),
    ("unique-names", 'people.select("name").unique().collect()'),
    ("unique-subset-ssn", 'people.unique(subset=["ssn"]).select(pl.len()).collect()'),
)

ALIASES = cases(
    ("with-columns-alias-then-filter",
     f'people.with_columns(n=pl.col("name")).filter(pl.col("n") == "{CANARY_NAME}").{COUNT}'),
    ("rename-then-filter", f'people.rename({{"name": "nm"}}).filter(pl.col("nm").str.starts_with("Z")).{COUNT}'),
    ("select-alias-then-group", 'people.select(pl.col("name").alias("x")).group_by("x").agg(pl.len()).collect()'),
    ("alias-across-cells", f'n = people.with_columns(x=pl.col("ssn"))\nn.filter(pl.col("x") == "{CANARY_SSN}").{COUNT}'),
    ("suffix-then-sort", 'people.select(pl.col("name").name.suffix("_x"), "zip").sort("name_x").head(1).collect()'),
)

CONCATENATION = cases(
    ("concat-str-key",
     'people.with_columns(c=pl.concat_str([pl.col("zip"), pl.col("name")])).group_by("c").agg(pl.len()).collect()'),
    ("plus-operator-filter", f'people.filter((pl.col("zip") + pl.col("name")).str.contains("Z")).{COUNT}'),
    ("concat-with-separator-sort",
     'people.sort(pl.concat_str([pl.col("ssn"), pl.col("zip")], separator="|")).head(1).select("zip").collect()'),
)

SORTING = cases(
    ("sort-by-name-head", 'people.sort("name").head(1).select("zip").collect()'),
    ("sort-by-ssn-slice", 'people.sort(pl.col("ssn").str.slice(0, 1)).head(1).select("zip").collect()'),
    ("sort-values-inside-agg", 'people.select(pl.col("name").sort().first()).collect()'),
    ("sort-by-in-agg", 'people.select(pl.col("zip").sort_by("name").first()).collect()'),
)

AGGREGATES_AND_JOINS = cases(
    ("n-unique-of-name", 'people.select(pl.col("name").n_unique()).collect()'),
    ("count-of-ssn", 'people.select(pl.col("ssn").count()).collect()'),
    ("is-in-sum", f'people.select(pl.col("ssn").is_in(["{CANARY_SSN}"]).sum()).collect()'),
    ("list-of-names", 'people.group_by("region").agg(pl.col("name")).collect()'),
    ("len-chars-mean", 'people.select(pl.col("name").str.len_chars().mean()).collect()'),
    ("join-on-name", 'people.join(people, on="name").select(pl.len()).collect()'),
    ("join-left-on-ssn", 'people.join(visits, left_on="ssn", right_on="ward").select(pl.len()).collect()'),
    ("join-on-derived-key",
     'people.with_columns(k=pl.col("ssn").str.slice(0, 3)).join(people.with_columns(k=pl.col("zip").str.slice(0, 3)),'
     ' on="k").select(pl.len()).collect()'),
)


@pytest.mark.parametrize("code", PREDICATES)
def test_masked_columns_cannot_be_a_condition(arena: Arena, code: str) -> None:
    arena.attack(code, "refused", ename="PolicyError", rule="masked-column")


@pytest.mark.parametrize("code", DERIVED_KEYS)
def test_masked_columns_cannot_be_a_group_key_even_derived(arena: Arena, code: str) -> None:
    arena.attack(code, "refused", ename="PolicyError", rule="masked-column")


@pytest.mark.parametrize("code", ALIASES)
def test_an_alias_stays_masked(arena: Arena, code: str) -> None:
    arena.attack(code, "refused", ename="PolicyError", rule="masked-column")


@pytest.mark.parametrize("code", CONCATENATION)
def test_a_concatenation_with_a_masked_column_stays_masked(arena: Arena, code: str) -> None:
    arena.attack(code, "refused", ename="PolicyError", rule="masked-column")


@pytest.mark.parametrize("code", SORTING)
def test_masked_columns_cannot_order_rows_or_values(arena: Arena, code: str) -> None:
    arena.attack(code, "refused", ename="PolicyError", rule="masked-column")


@pytest.mark.parametrize("code", AGGREGATES_AND_JOINS)
def test_masked_columns_cannot_be_aggregated_or_joined_on(arena: Arena, code: str) -> None:
    arena.attack(code, "refused", ename="PolicyError", rule="masked-column")


@pytest.mark.parametrize("code", AGGREGATES_AND_JOINS[:3] + PREDICATES[:3])
def test_the_masked_rule_holds_when_the_deployment_rejects(reject_arena: Arena, code: str) -> None:
    reject_arena.attack(code, "refused", ename="PolicyError", rule="masked-column")


@pytest.mark.parametrize(("code", "derived"), [
    pytest.param('people.select("name", "ssn", "zip").head(3).collect()', [], id="select-masked"),
    pytest.param("people.select(pl.all()).tail(2).collect()", [], id="all-columns"),
    pytest.param('people.select(pl.col("^.*$")).tail(2).collect()', [], id="regex-columns"),
    pytest.param("people.select(pl.col(pl.String)).tail(2).collect()", [], id="dtype-columns"),
    pytest.param("people.select(pl.nth(1), pl.nth(2)).tail(2).collect()", [], id="nth-columns"),
    pytest.param('people.select(pl.col("name").str.slice(0, 1).alias("initial")).tail(2).collect()', ["initial"],
                 id="initial"),
    pytest.param('people.select(pl.col("name").str.len_chars().alias("n")).tail(2).collect()', ["n"],
                 id="length-of-name"),
    pytest.param('people.select(pl.concat_str([pl.col("zip"), pl.col("ssn")]).alias("c")).tail(2).collect()', ["c"],
                 id="concatenation"),
    pytest.param('people.select(pl.col("ssn").cast(pl.Categorical).alias("c")).tail(2).collect()', ["c"],
                 id="cast-to-category"),
])
def test_selected_masked_values_are_stars_in_what_the_owner_would_release(arena: Arena, code: str,
                                                                          derived: list[str]) -> None:
    out = arena.attack(code, "review")
    snap = ReviewStore(arena.state).snapshot(out.review_id or "")
    assert snap.height == 2 or snap.height == 3
    for col in [*derived, *(c for c in ("name", "ssn") if c in snap.columns)]:
        assert snap.get_column(col).cast(str).to_list() == ["*"] * snap.height, f"{col}: {snap}"
    assert not {CANARY_NAME, CANARY_SSN} & set(map(str, snap.to_dicts()))


def test_an_approved_masked_result_reaches_the_client_as_stars(arena: Arena) -> None:
    """The whole way: review, the owner approves, the analyst fetches; names and SSNs are '*'."""
    out = arena.attack('people.select("person_id", "name", "ssn").tail(3).collect()', "review")
    rid = out.review_id
    done = bastion_cli(arena.config, "review", "approve", rid or "", "--by", "owner")
    assert done.returncode == 0, done.stderr
    fetched = arena.attack(f'fetch("{rid}")', "released")
    assert fetched.shown.count("*") >= 6, fetched.describe()
    assert "42424" in fetched.shown  # the unit id is not masked: the owner approved exactly this


def test_describe_and_frame_summaries_skip_masked_columns(arena: Arena) -> None:
    out = arena.attack("people.n_unique().collect()", "released")
    assert "name" not in out.shown and "ssn" not in out.shown and "zip" in out.shown


def test_no_late_message_carries_a_canary(arena: Arena, reject_arena: Arena) -> None:
    assert_no_late_leak(arena)
    assert_no_late_leak(reject_arena, seconds=0.2)
