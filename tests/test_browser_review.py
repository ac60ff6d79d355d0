"""End to end in real JupyterLab (headless Chromium): ask, approve from the CLI, see the table.

The scientist runs a row-level cell in a Bastion notebook in the locked-down
JupyterLab that `bastion lab` starts; the widget says a review was
requested. The owner approves with `bastion review approve ID`, and the same
output turns into the released table without the scientist doing anything.
Screenshots of both states are saved in the test's output folder.
"""

from __future__ import annotations

import re
from pathlib import Path

import polars as pl
import pytest
from conftest import bastion_cli, write_variant
from labserver import browser_skip_reason, chromium, locked_lab, run_cell

pytestmark = pytest.mark.skipif(browser_skip_reason() is not None, reason=str(browser_skip_reason()))

CELL = 'patients.select("patient_id", "name", "age").head(3).collect()'
LOAD_TIMEOUT_MS = 120_000  # JupyterLab's first load on two shared cores
DECISION_TIMEOUT_MS = 30_000


def notebook(cell: str) -> dict[str, object]:
    return {
        "cells": [{"cell_type": "code", "execution_count": None, "id": "ask", "metadata": {}, "outputs": [],
                   "source": cell}],
        "metadata": {"kernelspec": {"name": "bastion", "display_name": "Bastion", "language": "python"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }


def test_approving_from_the_cli_turns_the_pending_widget_into_the_table(
        demo_dir: Path, tmp_path: Path, patients_df: pl.DataFrame) -> None:
    deployment = write_variant(demo_dir, tmp_path / "deploy")
    root = tmp_path / "work"
    root.mkdir()
    shots = tmp_path / "screenshots"
    shots.mkdir()
    with locked_lab(deployment, root, extra_env={"JUPYTERHUB_USER": "alice"}) as lab:
        status, body = lab.api("PUT", "api/contents/review.ipynb", {"type": "notebook", "content": notebook(CELL)})
        assert status in (200, 201), body
        with chromium() as browser:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(f"{lab.url}lab/tree/review.ipynb?token={lab.token}", timeout=LOAD_TIMEOUT_MS)
            page.locator(".jp-Notebook .jp-Cell").first.wait_for(timeout=LOAD_TIMEOUT_MS)
            # The kernel is ready when the toolbar's kernel status says idle.
            page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").first.wait_for(
                timeout=LOAD_TIMEOUT_MS)
            run_cell(page, page.locator(".jp-Notebook .jp-Cell").first)
            pending = page.locator(".jp-OutputArea-output", has_text="Review requested").first
            pending.wait_for(timeout=LOAD_TIMEOUT_MS)
            assert pending.locator("button", has_text="Cancel request").count() == 1
            page.screenshot(path=str(shots / "1-pending.png"), full_page=True)
            match = re.search(r"\bR[0-9a-f]{8}\b", pending.inner_text())
            assert match, pending.inner_text()
            rid = match.group(0)

            approved = bastion_cli(deployment, "review", "approve", rid, "--by", "dr-owner")
            assert approved.returncode == 0, approved.stderr

            page.locator(".jp-OutputArea-output", has_text="Approved by dr-owner").first.wait_for(
                timeout=DECISION_TIMEOUT_MS)
            table = page.locator(".jp-OutputArea-output table.bastion-table").first
            table.wait_for(timeout=DECISION_TIMEOUT_MS)
            page.screenshot(path=str(shots / "2-approved.png"), full_page=True)
            text = table.inner_text()
            first = patients_df.row(0, named=True)
            assert str(first["patient_id"]) in text and str(first["age"]) in text
            assert "*" in text  # the masked name column
            content = page.content()
            for name in patients_df.head(3)["name"]:
                assert name not in content
            assert page.locator("button", has_text="Cancel request").count() == 0
    assert (shots / "1-pending.png").stat().st_size > 0 and (shots / "2-approved.png").stat().st_size > 0
