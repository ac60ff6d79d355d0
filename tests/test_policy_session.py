"""The privacy policy end to end, as a truth table over `Session.execute`.

Why in-process: every row is one cell an analyst could type; the session runs
the real grammar, interpreter, frame verbs, policy and release path on a small
deterministic dataset, so a row is fast and its expectation exact. Released
values are compared with what polars computes directly on the raw data.

The dataset (k = 10 for both):
- `people`: pid 0..199 (privacy unit), `name` masked, `region` with groups of
  100 / 60 / 35 / 5 individuals, `income`, `age`, `zip` (20 people per zip),
  `bonus` (non-null for 5 people in north and all 60 in south);
  the canary pid 77 is "Zelda Canary", income 987654.32, zip "99999" (unique).
- `events`: 1-3 rows per person (pid % 3 + 1); the canary has 40 rows, all on
  channel "fax"; only 3 other people (pid 3, 4, 5) ever use "fax".
- `strict`: the `people` file again, with on_violation = "reject".

For every row the rendered output (display bundle or error text) must not
hold a canary value nor a bookkeeping column name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from bastion_kernel import config
from bastion_kernel.display import bundle
from bastion_kernel.release import Released, ReviewPending
from bastion_kernel.session import Message, Session

K = 10
CANARY_PID = 77
CANARY = ("Zelda Canary", "987654.32", "99999")
# As whole tokens: "12693.918199999998" (a mean) must not count as the zip "99999".
CANARY_TOKENS = [re.compile(r"(?<![\w.])" + re.escape(c) + r"(?![\w])") for c in CANARY]
BOOKKEEPING = re.compile(r"__bastion_\w+")
REGIONS = ["north"] * 100 + ["south"] * 60 + ["east"] * 35 + ["west"] * 5


# ------------------------------------------------------------------ data


def make_people() -> pl.DataFrame:
    pids = list(range(200))
    df = pl.DataFrame({
        "pid": pids,
        "name": [f"Person {i:03d}" for i in pids],
        "region": REGIONS,
        "income": [1000.0 + 37.5 * i for i in pids],
        "age": [20 + (i * 7) % 50 for i in pids],
        "zip": [f"{10000 + i // 20}" for i in pids],
        "bonus": [float(i) if i < 5 or 100 <= i < 160 else None for i in pids],
    })
    canary = pl.col("pid") == CANARY_PID
    return df.with_columns(
        name=pl.when(canary).then(pl.lit("Zelda Canary")).otherwise(pl.col("name")),
        income=pl.when(canary).then(pl.lit(987654.32)).otherwise(pl.col("income")),
        zip=pl.when(canary).then(pl.lit("99999")).otherwise(pl.col("zip")),
    )


def make_events() -> pl.DataFrame:
    pid, channel, amount = [], [], []
    for i in range(200):
        for j in range(40 if i == CANARY_PID else i % 3 + 1):
            pid.append(i)
            fax = i == CANARY_PID or (i in (3, 4, 5) and j == 0)
            channel.append("fax" if fax else ("web", "phone")[j % 2])
            amount.append(float((i * 13 + j * 7) % 100))
    return pl.DataFrame({"pid": pid, "channel": channel, "amount": amount})


@dataclass(frozen=True)
class World:
    people: pl.DataFrame
    events: pl.DataFrame
    deployment: config.Deployment


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    root: Path = tmp_path_factory.mktemp("policy_session")
    people, events = make_people(), make_events()
    people.write_parquet(root / "people.parquet")
    events.write_parquet(root / "events.parquet")
    (root / "bastion.toml").write_text(
        f"""
[bastion]
state_dir = "state"
min_group_size = {K}
on_violation = "review"

[datasets.people]
path = "people.parquet"
privacy_unit = "pid"
masked = ["name"]

[datasets.events]
path = "events.parquet"
privacy_unit = "pid"

[datasets.strict]
path = "people.parquet"
privacy_unit = "pid"
masked = ["name"]
on_violation = "reject"
"""
    )
    return World(people, events, config.load(root / "bastion.toml"))


@pytest.fixture
def session(world: World, tmp_path: Path):
    # Each table row starts with no release history: rows must not difference each other
    # (the differencing check has its own tests in test_differencing.py).
    s = Session(replace(world.deployment, state_dir=tmp_path / "state"), user="analyst")
    yield s
    s.close()


def test_dataset_is_what_the_table_assumes(world: World) -> None:
    p, e = world.people, world.events
    assert p["pid"].n_unique() == 200
    sizes = dict(p.group_by("region").len().iter_rows())
    assert sizes == {"north": 100, "south": 60, "east": 35, "west": 5}
    assert p.filter(pl.col("zip") == "99999")["pid"].to_list() == [CANARY_PID]
    fax = e.filter(pl.col("channel") == "fax")
    assert fax.height >= 43 and fax["pid"].n_unique() == 4
    assert e.filter(pl.col("pid") == CANARY_PID).height == 40


# ------------------------------------------------------------------ expectations from raw polars


def kept(df: pl.DataFrame, *keys: str) -> pl.DataFrame:
    """Groups of `df` by `keys` that hold at least k distinct people."""
    ok = df.group_by(list(keys)).agg(pl.col("pid").n_unique().alias("_n")).filter(pl.col("_n") >= K).drop("_n")
    return df.join(ok, on=list(keys), how="semi")


def null_frame(**schema: pl.DataType) -> pl.DataFrame:
    return pl.DataFrame({n: [None] for n in schema}, schema=schema)


def joined(p: pl.DataFrame, e: pl.DataFrame) -> pl.DataFrame:
    return e.join(p, on="pid")


# ------------------------------------------------------------------ the table


@dataclass(frozen=True)
class Case:
    id: str
    src: str
    outcome: str  # released | review | refused
    setup: tuple[str, ...] = ()
    withheld: int | None = None
    suppressed: int | None = None
    expect: Callable[[pl.DataFrame, pl.DataFrame], pl.DataFrame] | None = None
    kind: str | None = None  # error kind for refused rows
    rule: str | None = None  # PolicyError rule for refused rows
    message: str | None = None  # fragment of the error message or review reason


CASES = [
    # ---- grouped and global aggregates
    Case("group-by-region-withholds-west",
         'people.group_by("region").agg(pl.len(), pl.col("age").mean()).sort("region").collect()',
         "released", withheld=1, suppressed=0,
         expect=lambda p, e: kept(p, "region").group_by("region").agg(pl.len(), pl.col("age").mean()).sort("region")),
    Case("group-by-len-shorthand", 'people.group_by("region").len().sort("region").collect()',
         "released", withheld=1, suppressed=0,
         expect=lambda p, e: kept(p, "region").group_by("region").len().sort("region")),
    Case("global-sum", 'people.select(pl.col("age").sum()).collect()', "released", withheld=0, suppressed=0,
         expect=lambda p, e: p.select(pl.col("age").sum())),
    # The canary's income dominates any sum it is in (see tests/test_dominance_rule.py).
    Case("global-income-sum-dominated", 'people.select(pl.col("income").sum()).collect()', "released",
         withheld=0, suppressed=1, expect=lambda p, e: null_frame(income=pl.Float64)),
    Case("global-mean-std-n_unique",
         'people.select(pl.col("age").mean(), pl.col("age").std().alias("sd"), pl.col("zip").n_unique()).collect()',
         "released", withheld=0, suppressed=0,
         expect=lambda p, e: p.select(pl.col("age").mean(), pl.col("age").std().alias("sd"), pl.col("zip").n_unique())),
    Case("frame-height", "people.height", "released"),
    Case("filter-outside-agg-both-large",
         'people.filter(pl.col("age") > 30).group_by("region").agg(pl.col("age").sum()).sort("region").collect()',
         "released", withheld=1, suppressed=0,
         expect=lambda p, e: kept(p.filter(pl.col("age") > 30), "region").group_by("region")
         .agg(pl.col("age").sum()).sort("region")),
    # ---- thresholds counted after filters, slices and joins
    Case("filter-one-pid-withheld", 'people.filter(pl.col("pid") == 77).select(pl.col("income").sum()).collect()',
         "released", withheld=1, suppressed=0, expect=lambda p, e: p.select(pl.col("income").sum()).clear()),
    Case("filter-small-region-withheld", 'people.filter(pl.col("region") == "west").select(pl.len()).collect()',
         "released", withheld=1, expect=lambda p, e: p.select(pl.len()).clear()),
    Case("filter-canary-zip-count-withheld", 'people.filter(pl.col("income") > 900000).select(pl.len()).collect()',
         "released", withheld=1, expect=lambda p, e: p.select(pl.len()).clear()),
    Case("head-then-aggregate-withheld", 'people.head(3).select(pl.col("income").sum()).collect()',
         "released", withheld=1, expect=lambda p, e: p.select(pl.col("income").sum()).clear()),
    Case("small-frame-height-withheld", 'people.filter(pl.col("region") == "west").height', "released"),
    # ---- conditions inside aggregates
    Case("indicator-product-suppressed", 'people.select((pl.col("income") * (pl.col("pid") == 77)).sum()).collect()',
         "released", withheld=0, suppressed=1, expect=lambda p, e: null_frame(income=pl.Float64)),
    Case("indicator-via-earlier-with_columns-suppressed",
         'p2.select((pl.col("income") * pl.col("flag")).sum()).collect()', "released",
         setup=('p2 = people.with_columns(flag=pl.col("pid") == 77)',), withheld=0, suppressed=1,
         expect=lambda p, e: null_frame(income=pl.Float64)),
    Case("flag-summed-directly-suppressed", 'p2.select(pl.col("flag").sum()).collect()', "released",
         setup=('p2 = people.with_columns(flag=pl.col("pid") == 77)',), suppressed=1,
         expect=lambda p, e: null_frame(flag=pl.UInt32)),
    Case("flag-as-group-key-withheld", 'p2.group_by("flag").agg(pl.col("income").sum()).sort("flag").collect()',
         "released", setup=('p2 = people.with_columns(flag=pl.col("pid") == 77)',), withheld=1, suppressed=0,
         expect=lambda p, e: p.filter(pl.col("pid") != 77).select(pl.lit(False).alias("flag"), pl.col("income").sum())),
    Case("when-then-suppressed", 'people.select(pl.when(pl.col("pid") == 77).then(pl.col("income")).sum()).collect()',
         "released", suppressed=1, expect=lambda p, e: null_frame(income=pl.Float64)),
    Case("when-otherwise-suppressed",
         'people.select(pl.when(pl.col("pid") == 77).then(pl.col("income")).otherwise(0).sum()).collect()',
         "released", suppressed=1, expect=lambda p, e: null_frame(income=pl.Float64)),
    Case("expr-filter-all-but-one-suppressed",
         'people.select(pl.col("income").filter(pl.col("pid") != 77).sum()).collect()',
         "released", suppressed=1, expect=lambda p, e: null_frame(income=pl.Float64)),
    Case("expr-filter-few-suppressed",
         'people.select(pl.col("income").filter(pl.col("pid") < 5).mean()).collect()',
         "released", suppressed=1, expect=lambda p, e: null_frame(income=pl.Float64)),
    Case("expr-filter-both-sides-large-released",
         'people.select(pl.col("age").filter(pl.col("age") > 30).sum()).collect()',
         "released", suppressed=0, expect=lambda p, e: p.filter(pl.col("age") > 30).select(pl.col("age").sum())),
    Case("expr-filter-per-group",
         'people.group_by("region").agg(pl.col("income").filter(pl.col("region") != "west").len()).sort("region").collect()',
         "released", withheld=1, suppressed=3,
         expect=lambda p, e: kept(p, "region").group_by("region").agg(pl.lit(None, pl.UInt32).alias("income"))
         .sort("region")),
    Case("is_in-suppressed", 'people.select((pl.col("income") * pl.col("pid").is_in([77])).sum()).collect()',
         "released", suppressed=1, expect=lambda p, e: null_frame(income=pl.Float64)),
    Case("str-contains-on-zip-suppressed",
         'people.select(pl.col("zip").str.contains("9999").sum()).collect()',
         "released", suppressed=1, expect=lambda p, e: null_frame(zip=pl.UInt32)),
    Case("balanced-condition-released", 'people.select((pl.col("age") > 30).sum().alias("n")).collect()',
         "released", suppressed=0, expect=lambda p, e: p.select((pl.col("age") > 30).sum().alias("n"))),
    Case("null-skipping-mean-needs-k-values",
         'people.group_by("region").agg(pl.col("bonus").mean()).sort("region").collect()',
         "released", withheld=1, suppressed=2,
         expect=lambda p, e: pl.DataFrame({"region": ["east", "north", "south"],
                                           "bonus": [None, None, p.filter(pl.col("region") == "south")["bonus"].mean()]})),
    Case("drop_nulls-sum-released (row-aligned support)",
         'people.select(pl.col("bonus").drop_nulls().sum()).collect()', "released", suppressed=0,
         expect=lambda p, e: p.select(pl.col("bonus").drop_nulls().sum())),
    Case("drop_nulls-mean-per-group",
         'people.group_by("region").agg(pl.col("bonus").drop_nulls().mean()).sort("region").collect()',
         "released", withheld=1, suppressed=2,
         expect=lambda p, e: pl.DataFrame({"region": ["east", "north", "south"],
                                           "bonus": [None, None, p.filter(pl.col("region") == "south")["bonus"].mean()]})),
    Case("unique-values-sum-released",
         'people.select(pl.col("age").unique().sum()).collect()', "released", suppressed=0,
         expect=lambda p, e: p.select(pl.col("age").unique().sum())),
    Case("head-inside-agg-review", 'people.select(pl.col("bonus").head(3).sum()).collect()', "review",
         message="head"),
    Case("unique-subset-picks-first-review", 'people.unique(subset=["region"]).collect()', "review",
         message="`first`"),
    # str.extract/len_chars build a value inside the aggregate: the non-linear rule sends it to review
    # (before that rule it was released with the cell suppressed by the null-support check).
    Case("extract-inside-agg-review",
         'people.select(pl.col("zip").str.extract("(99999)").str.len_chars().sum()).collect()',
         "review", message="`str.len_chars`"),
    # ---- non-linear value construction inside aggregates -> review; linear forms release
    Case("round-after-mean-released", 'people.select(pl.col("age").mean().round(1)).collect()',
         "released", suppressed=0, expect=lambda p, e: p.select(pl.col("age").mean().round(1))),
    Case("divide-by-constant-released", 'people.select((pl.col("age") / 100).sum()).collect()',
         "released", suppressed=0, expect=lambda p, e: p.select((pl.col("age") / 100).sum())),
    Case("one-product-released", 'people.select((pl.col("age") * pl.col("pid")).sum()).collect()',
         "released", suppressed=0, expect=lambda p, e: p.select((pl.col("age") * pl.col("pid")).sum())),
    Case("float-cast-released", 'people.select(pl.col("age").cast(pl.Float64).mean()).collect()',
         "released", suppressed=0, expect=lambda p, e: p.select(pl.col("age").cast(pl.Float64).mean())),
    Case("round-before-mean-review", 'people.select(pl.col("age").round().mean()).collect()', "review",
         message="`round`"),
    Case("three-way-product-review",
         'people.select((pl.col("income") * pl.col("age") * pl.col("pid")).sum()).collect()', "review",
         message="`*`"),
    Case("divide-by-column-review", 'people.select((pl.col("income") / pl.col("age")).sum()).collect()', "review",
         message="`/`"),
    Case("int-cast-review", 'people.group_by("region").agg(pl.col("income").cast(pl.Int64).sum()).collect()',
         "review", message="`cast`"),
    Case("nonlinear-via-earlier-with_columns-review", 'p2.select((pl.col("income") * pl.col("ind")).sum()).collect()',
         "review", setup=('p2 = people.with_columns(ind=1 - (pl.col("pid") - 77).abs().clip(0, 1))',),
         message="`derived:ind`"),
    Case("nonlinear-through-rename-and-join-review",
         'j.group_by("channel").agg((pl.col("income") * pl.col("w")).sum()).collect()', "review",
         setup=('p2 = people.with_columns(ind=(pl.col("pid") - 77).abs().sign()).rename({"ind": "w"})',
                'j = events.join(p2, on="pid")'),
         message="`derived:w`"),
    Case("product-kept-in-column-then-multiplied-review",
         'p2.select((pl.col("sq") * pl.col("income")).sum()).collect()', "review",
         setup=('p2 = people.with_columns(sq=pl.col("pid") * pl.col("pid"))',), message="`derived:sq`"),
    Case("per-individual-nonlinear-review",
         'per.select((pl.col("d") * pl.col("n")).sum()).collect()', "review",
         setup=('per = events.group_by("pid").agg(pl.col("amount").abs().sum().alias("d"), pl.len().alias("n"))',),
         message="`derived:d`"),
    Case("per-individual-linear-released",
         'per.select(pl.col("avg").sum()).collect()', "released", suppressed=0,
         setup=('per = events.group_by("pid").agg(pl.col("amount").mean().alias("avg"))',),
         expect=lambda p, e: e.group_by("pid").agg(pl.col("amount").mean().alias("avg")).select(pl.col("avg").sum())),
    # The canary's 40 events make its total an outlier among per-person totals: dominated.
    Case("per-individual-total-dominated",
         'per.select(pl.col("total").sum()).collect()', "released", suppressed=1,
         setup=('per = events.group_by("pid").agg(pl.col("amount").sum().alias("total"))',),
         expect=lambda p, e: null_frame(total=pl.Float64)),
    # ---- order statistics, list aggregates and row order -> review
    Case("max-review", 'people.select(pl.col("income").max()).collect()', "review", message="`max`"),
    Case("min-by-group-review", 'people.group_by("region").agg(pl.col("income").min()).collect()', "review",
         message="`min`"),
    Case("median-review", 'people.group_by("region").agg(pl.col("income").median()).collect()', "review",
         message="`median`"),
    Case("first-review", 'people.select(pl.col("income").first()).collect()', "review", message="`first`"),
    Case("quantile-review", 'people.select(pl.col("income").quantile(0.9)).collect()', "review",
         message="`quantile`"),
    Case("sort_by-last-review", 'people.select(pl.col("income").sort_by("age").last()).collect()', "review",
         message="`last`"),
    Case("top_k-review", 'people.group_by("region").agg(pl.col("income").top_k(2)).collect()', "review",
         message="`top_k`"),
    Case("mode-review", 'people.group_by("region").agg(pl.col("age").mode()).collect()', "review", message="`mode`"),
    Case("frame-max-review", 'people.select("income", "age").max().collect()', "review", message="`max`"),
    Case("groupby-first-review", 'people.select("region", "income").group_by("region").first().collect()', "review",
         message="`first`"),
    Case("bare-column-in-agg-review", 'people.group_by("region").agg(pl.col("income")).collect()', "review",
         message="a bare column"),
    Case("implode-review", 'people.group_by("region").agg(pl.col("income").implode()).collect()', "review",
         message="implode"),
    Case("shift-review", 'people.select(pl.col("income").shift(1).sum()).collect()', "review", message="`shift`"),
    Case("cum_sum-review", 'people.select(pl.col("income").cum_sum().mean()).collect()', "review",
         message="`cum_sum`"),
    Case("over-window-review", 'people.with_columns(t=pl.col("income").mean().over("region")).collect()', "review",
         message="`over` in a row-level select"),
    # ---- row-level results -> review
    Case("head-review", "people.head(5).collect()", "review", message="individual rows of people"),
    Case("tail-review", "people.tail(3).collect()", "review", message="individual rows of people"),
    Case("slice-review", "people.slice(10, 5).collect()", "review", message="individual rows of people"),
    Case("limit-review", "people.limit(2).collect()", "review", message="individual rows of people"),
    Case("subscript-slice-review", "people[0:3].collect()", "review", message="individual rows of people"),
    Case("sort-head-review", 'people.sort("income", descending=True).head(1).collect()', "review",
         message="individual rows of people"),
    Case("select-column-review", 'people.select("income").collect()', "review", message="individual rows"),
    Case("join-rows-review", 'events.join(people, on="pid").select("pid", "channel").collect()', "review",
         message="individual rows"),
    Case("group-by-privacy-unit-is-row-level",
         'people.group_by("pid").agg(pl.col("income").sum()).collect()', "review", message="individual rows of people"),
    # ---- masked columns -> refused
    Case("masked-filter", 'people.filter(pl.col("name") == "x").collect()', "refused", kind="policy",
         rule="masked-column", message="a filter condition"),
    Case("masked-filter-kwarg", 'people.filter(name="x").collect()', "refused", kind="policy",
         rule="masked-column", message="a filter condition"),
    Case("masked-filter-str-method", 'people.filter(pl.col("name").str.starts_with("Z")).select(pl.len()).collect()',
         "refused", kind="policy", rule="masked-column"),
    Case("masked-group-by", 'people.group_by("name").agg(pl.len()).collect()', "refused", kind="policy",
         rule="masked-column", message="a group key"),
    Case("masked-sort", 'people.sort("name").collect()', "refused", kind="policy", rule="masked-column",
         message="a sort key"),
    Case("masked-join-key", 'people.join(events, left_on="name", right_on="channel").collect()', "refused",
         kind="policy", rule="masked-column", message="a join key"),
    Case("masked-self-join", 'people.join(people, on="name").collect()', "refused", kind="policy",
         rule="masked-column", message="a join key"),
    Case("masked-agg", 'people.select(pl.col("name").n_unique()).collect()', "refused", kind="policy",
         rule="masked-column", message="an aggregate input"),
    Case("masked-in-when-agg", 'people.select(pl.when(pl.col("name") == "x").then(1).otherwise(0).sum()).collect()',
         "refused", kind="policy", rule="masked-column"),
    Case("masked-sort_by-in-agg", 'people.select(pl.col("income").sort_by("name").first()).collect()', "refused",
         kind="policy", rule="masked-column"),
    Case("masked-in-expr-filter", 'people.select(pl.col("income").filter(pl.col("name") == "x").sum()).collect()',
         "refused", kind="policy", rule="masked-column"),
    Case("masked-str-slice-group-key", 'people.group_by(pl.col("name").str.slice(0, 1)).agg(pl.len()).collect()',
         "refused", kind="policy", rule="masked-column", message="a group key"),
    Case("masked-alias-then-filter", 'people.select(pl.col("name").alias("nm")).filter(pl.col("nm") == "x").collect()',
         "refused", kind="policy", rule="masked-column", message="`nm`"),
    Case("masked-with_columns-then-filter", 'q.filter(pl.col("nm") == "x").collect()', "refused",
         setup=('q = people.with_columns(nm=pl.col("name"))',), kind="policy", rule="masked-column"),
    Case("masked-renamed-then-group-by", 'people.rename({"name": "label"}).group_by("label").agg(pl.len()).collect()',
         "refused", kind="policy", rule="masked-column", message="`label`"),
    Case("masked-concat_str-then-group-by",
         'people.with_columns(k=pl.concat_str([pl.col("name"), pl.col("region")])).group_by("k").agg(pl.len()).collect()',
         "refused", kind="policy", rule="masked-column", message="a group key"),
    Case("masked-derived-length-aggregated",
         'people.with_columns(l=pl.col("name").str.len_chars()).select(pl.col("l").sum()).collect()',
         "refused", kind="policy", rule="masked-column", message="an aggregate input"),
    Case("masked-unique", 'people.select("name").unique().collect()', "refused", kind="policy", rule="masked-column"),
    Case("masked-all-wildcard-agg", "people.select(pl.all().n_unique()).collect()", "refused", kind="policy",
         rule="masked-column"),
    Case("masked-over-partition-then-agg",
         'people.with_columns(t=pl.col("income").over("name")).select(pl.col("t").sum()).collect()',
         "refused", kind="policy", rule="masked-column"),
    # ---- unique() is grouping
    Case("unique-zip-withholds-canary", 'people.select("zip").unique().sort("zip").collect()', "released",
         withheld=1, expect=lambda p, e: kept(p, "zip").select("zip").unique().sort("zip")),
    Case("unique-region", 'people.select("region").unique().sort("region").collect()', "released", withheld=1,
         expect=lambda p, e: kept(p, "region").select("region").unique().sort("region")),
    Case("unique-income-all-withheld", 'people.select("income").unique().collect()', "released", withheld=200,
         expect=lambda p, e: p.select("income").clear()),
    # ---- joins count individuals, not rows
    Case("join-channel-canary-is-one-individual",
         'events.join(people, on="pid").group_by("channel").agg(pl.len()).sort("channel").collect()',
         "released", withheld=1, suppressed=0,
         expect=lambda p, e: kept(joined(p, e), "channel").group_by("channel").agg(pl.len()).sort("channel")),
    Case("events-channel-fax-withheld",
         'events.group_by("channel").agg(pl.len(), pl.col("amount").sum()).sort("channel").collect()',
         "released", withheld=1,
         expect=lambda p, e: kept(e, "channel").group_by("channel").agg(pl.len(), pl.col("amount").sum()).sort("channel")),
    Case("join-region",
         'events.join(people, on="pid").group_by("region").agg(pl.len(), pl.col("amount").sum()).sort("region").collect()',
         "released", withheld=1,
         expect=lambda p, e: kept(joined(p, e), "region").group_by("region").agg(pl.len(), pl.col("amount").sum())
         .sort("region")),
    # ---- keys unique per person
    Case("group-by-unique-value-all-withheld", 'people.group_by("income").agg(pl.len()).collect()', "released",
         withheld=200, expect=lambda p, e: p.group_by("income").agg(pl.len()).clear()),
    Case("group-by-computed-pid-all-withheld", 'people.group_by(pl.col("pid") * 1).agg(pl.len()).collect()',
         "released", withheld=200, expect=lambda p, e: p.group_by("pid").agg(pl.len()).clear()),
    Case("group-by-zip-withholds-canary",
         'people.group_by("zip").agg(pl.col("income").mean()).sort("zip").collect()', "released", withheld=1,
         expect=lambda p, e: kept(p, "zip").group_by("zip").agg(pl.col("income").mean()).sort("zip")),
    # ---- per-individual tables
    Case("per-individual-then-histogram",
         'events.group_by("pid").agg(n=pl.len()).group_by("n").agg(pl.len()).sort("n").collect()',
         "released", withheld=1, suppressed=0,
         expect=lambda p, e: e.group_by("pid").agg(n=pl.len()).group_by("n").agg(pl.len())
         .filter(pl.col("len") >= K).sort("n")),
    Case("per-individual-filter-withheld",
         'events.group_by("pid").agg(n=pl.len()).filter(pl.col("n") > 30).select(pl.len()).collect()',
         "released", withheld=1, expect=lambda p, e: pl.DataFrame(schema={"len": pl.UInt32})),
    Case("per-individual-condition-suppressed",
         'events.group_by("pid").agg(n=pl.len()).select((pl.col("n") * (pl.col("n") > 30)).sum()).collect()',
         "released", suppressed=1, expect=lambda p, e: null_frame(n=pl.UInt32)),
    Case("per-individual-condition-lineage-suppressed",
         'events.group_by("pid").agg(f=(pl.col("channel") == "fax").any()).select(pl.col("f").sum()).collect()',
         "released", suppressed=1, expect=lambda p, e: null_frame(f=pl.UInt32)),
    Case("per-individual-review", 'events.group_by("pid").agg(n=pl.len()).collect()', "review",
         message="individual rows of events"),
    # ---- wildcards never reach bookkeeping columns
    Case("pl-all-review", "people.select(pl.all()).collect()", "review"),
    Case("regex-all-review", 'people.select(pl.col("^.*$")).collect()', "review"),
    Case("nth-review", "people.select(pl.nth(0, 1)).collect()", "review"),
    Case("join-all-review", 'people.join(events, on="pid").select(pl.all()).collect()', "review"),
    Case("frame-collect-review", "people.collect()", "review"),
    Case("dtype-wildcard-agg",
         'people.group_by("region").agg(pl.col(pl.Float64).sum()).sort("region").collect()', "released",
         withheld=1, suppressed=3,  # bonus: too few with a value in two regions; income: the canary in north
         expect=lambda p, e: kept(p, "region").group_by("region").agg(pl.col("income").sum(), pl.col("bonus").sum())
         .sort("region").with_columns(bonus=pl.when(pl.col("region") == "south").then(pl.col("bonus")),
                                      income=pl.when(pl.col("region") != "north").then(pl.col("income")))),
    Case("exclude-wildcard-agg",
         'people.group_by("region").agg(pl.exclude("name", "region", "zip", "bonus").count()).sort("region").collect()',
         "released", withheld=1, suppressed=0,
         expect=lambda p, e: kept(p, "region").group_by("region").agg(pl.col("pid", "income", "age").count())
         .sort("region")),
    Case("regex-wildcard-agg", 'people.select(pl.col("^(income|age)$").count()).collect()', "released", withheld=0,
         expect=lambda p, e: p.select(pl.col("income", "age").count())),
    Case("regex-wildcard-reaching-masked-agg", 'people.select(pl.col("^.*e$").count()).collect()', "refused",
         kind="policy", rule="masked-column"),
    Case("frame-n_unique-excludes-masked", "people.n_unique().collect()", "released",
         expect=lambda p, e: p.drop("name").select(pl.all().n_unique())),
    Case("describe", "people.describe()", "released"),
    # ---- reserved names
    Case("alias-to-unit-column", 'people.select(pl.col("age").alias("__bastion_u0")).collect()', "refused",
         kind="plan"),
    Case("alias-to-other-reserved", 'people.select(pl.col("age").alias("__bastion_u999")).collect()', "refused",
         kind="plan", message="reserved"),
    Case("with_columns-reserved", "people.with_columns(__bastion_ok=pl.lit(1)).collect()", "refused", kind="plan",
         message="reserved"),
    Case("rename-reserved", 'people.rename({"age": "__bastion_x"}).collect()', "refused", kind="plan",
         message="reserved"),
    Case("agg-alias-reserved",
         'people.group_by("region").agg(pl.col("income").sum().alias("__bastion_ok")).collect()', "refused",
         kind="plan", message="reserved"),
    Case("join-suffix-reserved", 'people.join(events, on="pid", suffix="__bastion_x").collect()', "refused",
         kind="plan", message="reserved"),
    Case("name-suffix-reserved", 'people.select(pl.col("age").name.prefix("__bastion_")).collect()', "refused",
         kind="plan", message="reserved"),
    Case("bookkeeping-column-by-name", 'people.select(pl.col("__bastion_u0").sum()).collect()', "refused",
         kind="plan", message="no column"),
    Case("bookkeeping-column-by-regex", 'people.select(pl.col("^__bastion.*$")).collect()', "refused", kind="plan"),
    Case("bookkeeping-column-by-nth", "people.select(pl.nth(7)).collect()", "refused", kind="plan"),
    Case("bookkeeping-column-by-subscript", 'people["__bastion_u0"].collect()', "refused", kind="plan"),
    # ---- on_violation = "reject"
    Case("reject-row-level", "strict.head(3).collect()", "refused", kind="policy", rule="row-level",
         message="rejects"),
    Case("reject-order-statistic", 'strict.group_by("region").agg(pl.col("income").max()).collect()', "refused",
         kind="policy", rule="order-statistic"),
    Case("reject-still-releases-aggregates", 'strict.group_by("region").agg(pl.len()).sort("region").collect()',
         "released", withheld=1, expect=lambda p, e: kept(p, "region").group_by("region").agg(pl.len()).sort("region")),
]


def _text_of(result, src: str) -> str:
    """Everything the analyst would see for this cell."""
    parts = []
    b = bundle(result.value)
    if b:
        parts += list(b.values())
    if result.error is not None:
        rendered = result.error.render(src)
        if any(c in src for c in CANARY):  # the excerpt quotes the analyst's own literal
            rendered = result.error.message + "\n" + (result.error.hint or "")
        parts.append(rendered)
    parts.append(result.reason or "")
    return "\n".join(parts)


def _assert_nothing_leaks(s: Session, result, src: str) -> None:
    text = _text_of(result, src)
    for canary in CANARY_TOKENS:
        assert not canary.search(text), f"canary {canary.pattern!r} in the output of {src!r}:\n{text}"
    assert set(BOOKKEEPING.findall(text)) <= set(BOOKKEEPING.findall(src)), text
    if isinstance(result.value, Released):
        assert not [c for c in result.value.df.columns if c.startswith("__bastion")]
    if isinstance(result.value, ReviewPending):
        snap = s.store.snapshot(result.value.request_id)
        assert not [c for c in snap.columns if c.startswith("__bastion")], snap.columns
        if "name" in snap.columns:
            assert snap["name"].to_list() == ["*"] * snap.height


def _run(s: Session, case: Case):
    for cell in case.setup:
        r = s.execute(cell)
        assert r.outcome == "ok", (cell, r.error and r.error.render(cell))
    return s.execute(case.src)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_policy_table(case: Case, session: Session, world: World) -> None:
    result = _run(session, case)
    detail = result.error.render(case.src) if result.error else result.reason
    assert result.outcome == case.outcome, detail
    _assert_nothing_leaks(session, result, case.src)

    if case.outcome == "released":
        assert result.error is None
        value = result.value
        if isinstance(value, (int, Message)):  # .height
            return
        assert isinstance(value, Released), type(value)
        if case.withheld is not None:
            assert value.withheld_groups == case.withheld
        if case.suppressed is not None:
            assert value.suppressed_cells == case.suppressed
        if case.expect is not None:
            assert_frame_equal(value.df, case.expect(world.people, world.events), check_dtypes=False)
        if value.withheld_groups:
            assert any("withheld" in n for n in value.notes)
        if value.suppressed_cells:
            assert any("suppressed" in n for n in value.notes)
    elif case.outcome == "review":
        assert isinstance(result.value, ReviewPending)
        req = session.store.get(result.value.request_id)
        assert req.status == "pending" and req.user == "analyst"
        if case.message:
            assert case.message in result.value.reason
    else:
        err = result.error
        assert err is not None and result.value is None
        if case.kind:
            assert err.kind == case.kind, err.render(case.src)
        if case.rule:
            assert err.rule == case.rule
        if case.message:
            assert case.message in err.message, err.message
        assert err.position is not None or case.rule in ("row-level", "order-statistic")


def test_table_is_large_enough() -> None:
    assert len(CASES) >= 60
    assert {c.outcome for c in CASES} == {"released", "review", "refused"}


# ------------------------------------------------------------------ rows checked in more detail


def test_height_values(session: Session) -> None:
    assert session.execute("people.height").value == 200
    small = session.execute('people.filter(pl.col("region") == "west").height')
    assert isinstance(small.value, Message) and "withheld" in small.value.text


def test_fax_group_has_many_rows_but_is_withheld(session: Session, world: World) -> None:
    fax_rows = joined(world.people, world.events).filter(pl.col("channel") == "fax").height
    assert fax_rows >= 43 > K
    r = session.execute('events.join(people, on="pid").group_by("channel").agg(pl.len()).collect()')
    assert "fax" not in r.value.df["channel"].to_list()


@pytest.mark.parametrize("src", [
    "people.select(pl.all()).collect()",
    'people.select(pl.col("^.*$")).collect()',
    "people.select(pl.nth(0, 1, 2)).collect()",
    'people.select(pl.col("*")).collect()',
])
def test_wildcard_snapshot_masks_and_hides_bookkeeping(session: Session, world: World, src: str) -> None:
    r = session.execute(src)
    assert r.outcome == "review"
    snap = session.store.snapshot(r.value.request_id)
    assert "name" in snap.columns
    assert snap.height == world.people.height
    assert set(snap["name"].to_list()) == {"*"}
    assert all(not c.startswith("__bastion") for c in snap.columns)
    assert set(snap.columns) <= set(world.people.columns)


def test_masked_only_snapshot_keeps_row_count(session: Session, world: World) -> None:
    r = session.execute('people.select("name").collect()')
    snap = session.store.snapshot(r.value.request_id)
    assert snap.shape == (world.people.height, 1) and set(snap["name"]) == {"*"}


def test_state_survives_errors(session: Session) -> None:
    assert session.execute('x = people.group_by("region").agg(pl.len())').outcome == "ok"
    bad = session.execute('y = x.filter(pl.col("nope") > 1)')
    assert bad.outcome == "refused" and "y" not in session.namespace
    # a cell either completes or changes nothing
    partial = session.execute('a = people\nb = a.filter(pl.col("nope") > 1)')
    assert partial.outcome == "refused" and "a" not in session.namespace and "b" not in session.namespace
    assert session.execute("import os").outcome == "refused"
    assert session.execute('people.filter(pl.col("name") == "x").collect()').outcome == "refused"
    assert session.execute('people.select(pl.col("age").alias("__bastion_u0")).collect()').outcome == "refused"
    r = session.execute('x.sort("region").collect()')
    assert r.outcome == "released"
    assert r.value.df["len"].to_list() == [35, 100, 60]
    assert r.value.withheld_groups == 1


def test_suppressed_value_and_withheld_group_notes_render(session: Session) -> None:
    r = session.execute('people.group_by("region").agg(pl.col("bonus").mean()).collect()')
    text = bundle(r.value)["text/plain"]
    assert "withheld" in text and "suppressed" in text


def test_canary_values_are_in_the_raw_data(world: World) -> None:
    """Guard the guard: the leak checks above would be vacuous without these values."""
    p = world.people
    assert "Zelda Canary" in p["name"].to_list()
    assert "99999" in p["zip"].to_list()
    assert "987654.32" in str(p.filter(pl.col("pid") == CANARY_PID)["income"].item())


# ------------------------------------------------------------------ arithmetic indicators

# Indicators built without a condition (abs/clip/sign, str.count_matches): no split
# check sees them, so the non-linear rule sends the aggregate to owner review.
ARITHMETIC_INDICATORS = [
    '(pl.col("income") * (1 - (pl.col("pid") - 77).abs().clip(0, 1))).sum()',
    '(pl.col("income") * pl.col("zip").str.count_matches("9999")).sum()',
    '(pl.col("income") * (1 - (pl.col("pid") - 77).abs().sign())).sum()',
]


@pytest.mark.parametrize("expr", ARITHMETIC_INDICATORS)
def test_arithmetic_indicator_isolates_one_person(session: Session, expr: str) -> None:
    src = f"people.select({expr}).collect()"
    r = session.execute(src)
    assert r.outcome == "review", r.reason
    assert "indicator that singles out one individual" in r.reason
    _assert_nothing_leaks(session, r, src)
