"""What the scientist sees in real JupyterLab (headless Chromium): a table, charts and a grammar error.

A Bastion notebook in the locked-down JupyterLab that `bastion lab` starts
runs four cells: a released aggregate (an HTML table with its shape, dtypes
and the withheld-group note), a bar chart of it and a histogram (Vega-Lite,
rendered by JupyterLab's own vega extension into a canvas or svg), and a
typo (a GrammarError quoting the line with a caret under the token and a
"did you mean"). The DOM is checked and a screenshot of each state is saved
in the test's output folder.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from conftest import write_variant
from labserver import browser_skip_reason, chromium, locked_lab, run_cell

pytestmark = pytest.mark.skipif(browser_skip_reason() is not None, reason=str(browser_skip_reason()))

LOAD_TIMEOUT_MS = 120_000  # JupyterLab's first load on two shared cores
CELL_TIMEOUT_MS = 60_000

CELLS = [
    ('by_region = patients.group_by("region").agg(n=pl.len(), mean_age=pl.col("age").mean()).collect()\n'
     'by_region.sort("region")'),
    'by_region.plot.bar(x="region", y="mean_age", title="Mean age by region")',
    'patients.plot.hist("age", bins=20, range=[0, 100])',
    'patients.group_bY("region")',
]


def notebook(cells: list[str]) -> dict[str, object]:
    return {
        "cells": [{"cell_type": "code", "execution_count": None, "id": f"c{i}", "metadata": {}, "outputs": [],
                   "source": src} for i, src in enumerate(cells)],
        "metadata": {"kernelspec": {"name": "bastion", "display_name": "Bastion", "language": "python"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }


def test_table_chart_and_grammar_error_render_in_jupyterlab(demo_dir: Path, tmp_path: Path,
                                                            patients_df: pl.DataFrame) -> None:
    deployment = write_variant(demo_dir, tmp_path / "deploy")
    root = tmp_path / "work"
    root.mkdir()
    shots = tmp_path / "screenshots"
    shots.mkdir()
    expected = (patients_df.group_by("region").agg(n=pl.len(), u=pl.col("patient_id").n_unique())
                .filter(pl.col("u") >= 10).sort("region"))
    with locked_lab(deployment, root, extra_env={"JUPYTERHUB_USER": "alice"}) as lab:
        status, body = lab.api("PUT", "api/contents/charts.ipynb", {"type": "notebook", "content": notebook(CELLS)})
        assert status in (200, 201), body
        with chromium() as browser:
            page = browser.new_page(viewport={"width": 1280, "height": 1600})
            page.goto(f"{lab.url}lab/tree/charts.ipynb?token={lab.token}", timeout=LOAD_TIMEOUT_MS)
            page.locator(".jp-Notebook .jp-Cell").first.wait_for(timeout=LOAD_TIMEOUT_MS)
            page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").first.wait_for(
                timeout=LOAD_TIMEOUT_MS)
            cells = page.locator(".jp-Notebook .jp-CodeCell")
            cells.nth(len(CELLS) - 1).wait_for(state="attached", timeout=LOAD_TIMEOUT_MS)
            assert cells.count() == len(CELLS)

            # 1. a released aggregate: an HTML table with shape, dtypes and the withheld note
            run_cell(page, cells.nth(0))
            table = cells.nth(0).locator(".jp-OutputArea-output table.bastion-table")
            table.wait_for(timeout=CELL_TIMEOUT_MS)
            out0 = cells.nth(0).locator(".jp-OutputArea-output").first
            text = out0.inner_text()
            assert "shape: 5 × 3" in text
            assert "groups with fewer than the minimum number of individuals are withheld, if there are any" in text
            rows = table.locator("tbody tr")
            assert rows.count() == expected.height
            for i, (region, n) in enumerate(expected.select("region", "n").iter_rows()):
                cells_text = rows.nth(i).locator("td").all_inner_texts()
                assert cells_text[0] == region and cells_text[1] == str(n)
            assert "Islands" not in text
            out0.screenshot(path=str(shots / "1-table.png"))

            # 2. a bar chart of it, drawn by JupyterLab's Vega-Lite renderer
            run_cell(page, cells.nth(1))
            chart = cells.nth(1).locator(".jp-OutputArea-output .vega-embed")
            chart.wait_for(timeout=CELL_TIMEOUT_MS)
            drawn = chart.locator("canvas, svg.marks")
            drawn.first.wait_for(timeout=CELL_TIMEOUT_MS)
            box = drawn.first.bounding_box()
            assert box is not None and box["width"] > 200 and box["height"] > 100
            cells.nth(1).locator(".jp-OutputArea-output").first.screenshot(path=str(shots / "2-bar-chart.png"))

            # 3. a histogram computed through the policy
            run_cell(page, cells.nth(2))
            hist = cells.nth(2).locator(".jp-OutputArea-output .vega-embed")
            hist.wait_for(timeout=CELL_TIMEOUT_MS)
            hist.locator("canvas, svg.marks").first.wait_for(timeout=CELL_TIMEOUT_MS)
            cells.nth(2).locator(".jp-OutputArea-output").first.screenshot(path=str(shots / "3-histogram.png"))

            # 4. a typo: the error quotes the line, a caret under the token, and a suggestion
            run_cell(page, cells.nth(3))
            error = cells.nth(3).locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
            error.wait_for(timeout=CELL_TIMEOUT_MS)
            lines = error.inner_text().splitlines()
            assert "GrammarError (line 1, column 10): `group_bY` is not available on a frame" in lines
            code_line = "    " + CELLS[3]
            assert code_line in lines
            assert lines[lines.index(code_line) + 1] == "    " + " " * CELLS[3].index("group_bY") + "^" * 8
            assert "Hint: did you mean `group_by`?" in lines
            error.screenshot(path=str(shots / "4-grammar-error.png"))
            page.screenshot(path=str(shots / "notebook.png"), full_page=True)

            content = page.content()
            for name in patients_df["name"].head(50):
                assert name not in content
    for shot in ("1-table.png", "2-bar-chart.png", "3-histogram.png", "4-grammar-error.png", "notebook.png"):
        assert (shots / shot).stat().st_size > 1000, shot
