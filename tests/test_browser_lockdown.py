"""What the scientist sees in the locked-down JupyterLab, and what the reviewer sees
in the audit page (headless Chromium on Debian's /usr/bin/chromium).

JupyterLab is started exactly as ``bastion lab`` starts it (tests/labserver.py).
The launcher offers only the Bastion notebook: no terminal, no console, no
text or Python files. The File menu, its New submenu, the file browser's
context menu and the command palette have no terminal, console, download or
export entries, while a Bastion notebook still opens and runs a cell. The
audit page written by ``bastion audit html`` renders as a readable document.
Screenshots of each state are saved in the test's tmp_path.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from conftest import bastion_cli, execute, run_kernel, write_variant
from labserver import browser_skip_reason, chromium, locked_lab

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(browser_skip_reason() is not None, reason=str(browser_skip_reason())),
]
if browser_skip_reason() is None:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

LOAD_TIMEOUT_MS = 120_000  # JupyterLab's first load on two shared cores
CELL_TIMEOUT_MS = 60_000
FORBIDDEN = re.compile(r"terminal|console|download|export|debugger|extension manager", re.IGNORECASE)


def _menu_text(page: Any) -> str:
    return "\n".join(page.locator(".lm-Menu").all_inner_texts())


def _palette_matches(page: Any, word: str) -> list[str]:
    """Command palette entries naming `word` (the palette's own search is fuzzy, so
    its hits are filtered to those that really contain the word)."""
    page.keyboard.press("Control+Shift+C")
    search = page.locator(".lm-CommandPalette-input")
    search.fill(word)
    page.wait_for_timeout(300)
    items = page.locator(".lm-CommandPalette-content .lm-CommandPalette-item").all_inner_texts()
    search.fill("")
    page.keyboard.press("Escape")
    return [i for i in items if word in i.lower()]


@pytest.fixture(scope="module")
def site(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("browser-site")
    config = write_variant(demo_dir, folder)
    import json

    nb = {"cells": [{"cell_type": "code", "execution_count": None, "id": "c0", "metadata": {}, "outputs": [],
                     "source": "patients.height"}],
          "metadata": {"kernelspec": {"name": "bastion", "display_name": "Bastion", "language": "python"}},
          "nbformat": 4, "nbformat_minor": 5}
    (folder / "analysis.ipynb").write_text(json.dumps(nb), encoding="utf-8")
    assert config.is_file()
    return folder


def test_locked_lab_has_no_terminal_console_or_download_entries(site: Path, tmp_path: Path) -> None:
    with locked_lab(site / "bastion.toml", site, extra_env={"JUPYTERHUB_USER": "alice"}) as lab, chromium() as browser:
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(f"{lab.url}lab?token={lab.token}")
        launcher = page.locator(".jp-Launcher")
        launcher.wait_for(timeout=LOAD_TIMEOUT_MS)
        page.wait_for_timeout(1000)
        page.screenshot(path=str(tmp_path / "1-launcher.png"))
        sections = launcher.locator(".jp-Launcher-sectionTitle").all_inner_texts()
        cards = launcher.locator(".jp-LauncherCard").all_inner_texts()
        assert "Notebook" in sections and "Console" not in sections
        assert any("Bastion" in c for c in cards)
        assert not [c for c in cards if re.search(r"Terminal|Console|Text File|Python File|Markdown File", c)], cards

        page.locator(".lm-MenuBar-itemLabel", has_text="File").click()
        page.locator(".lm-Menu-itemLabel", has_text="New").first.hover()
        page.wait_for_timeout(500)
        page.screenshot(path=str(tmp_path / "2-file-new.png"))
        menus = _menu_text(page)
        assert "New Launcher" in menus and "Notebook" in menus  # the menu did open
        assert not FORBIDDEN.search(menus.replace("New Console for Activity", "")), menus
        page.keyboard.press("Escape")
        page.keyboard.press("Escape")

        item = page.locator(".jp-DirListing-item", has_text="analysis.ipynb")
        item.click(button="right")
        page.wait_for_timeout(500)
        page.screenshot(path=str(tmp_path / "3-context-menu.png"))
        context = _menu_text(page)
        assert "Rename" in context
        assert "Download" not in context and "Open in New Browser Tab" not in context, context
        page.keyboard.press("Escape")

        item.dblclick()
        page.locator(".jp-NotebookPanel").wait_for(timeout=LOAD_TIMEOUT_MS)
        page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").wait_for(timeout=LOAD_TIMEOUT_MS)
        cell = page.locator(".jp-CodeCell").first
        for _ in range(10):  # the session may not take the first Shift+Enter while it settles
            cell.locator(".jp-InputArea-editor").click()
            page.keyboard.press("Shift+Enter")
            try:
                cell.locator(".jp-OutputArea-output").first.wait_for(timeout=5_000)
                break
            except PlaywrightTimeout:
                pass
        output = cell.locator(".jp-OutputArea-output").first
        output.wait_for(timeout=CELL_TIMEOUT_MS)
        assert "5000" in output.inner_text()

        page.locator(".lm-MenuBar-itemLabel", has_text="File").click()
        page.wait_for_timeout(500)
        page.screenshot(path=str(tmp_path / "4-file-menu-notebook.png"))
        file_menu = _menu_text(page)
        assert "Save Notebook" in file_menu
        assert not FORBIDDEN.search(file_menu), file_menu  # no "Save and Export Notebook As", no "Download"
        page.keyboard.press("Escape")

        for word in ("terminal", "download", "debugger"):
            assert _palette_matches(page, word) == [], word
        # What stays is harmless: the log console (kernel log messages, not a code
        # console) and exporting the workspace layout (tab positions, no contents).
        assert [i for i in _palette_matches(page, "console") if "Log Console" not in i] == []
        assert [i for i in _palette_matches(page, "export") if "Export Workspace" not in i] == []
        page.screenshot(path=str(tmp_path / "5-notebook.png"))


def test_the_audit_page_renders_in_chromium(demo_dir: Path, tmp_path: Path) -> None:
    config = write_variant(demo_dir, tmp_path / "deployment")
    with run_kernel(config, user="alice") as (_, kc):
        execute(kc, 'patients.group_by("region").agg(n=pl.len()).collect()')
        execute(kc, 'patients.select("name", "age").head(2).collect()')
        execute(kc, "import os")
    out = tmp_path / "report.html"
    result = bastion_cli(config, "audit", "html", "-o", str(out))
    assert result.returncode == 0, result.stderr
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.goto(out.as_uri())
        assert page.locator("h1").inner_text() == "Bastion audit session"
        verdict = page.locator(".verdict")
        assert verdict.first.is_visible() and "Hash chain verifies" in verdict.first.inner_text()
        timeline = page.locator("section.record")
        assert timeline.count() >= 5
        text = page.locator("body").inner_text()
        assert 'patients.group_by("region").agg(n=pl.len()).collect()' in text  # escaped source reads as code
        assert "import os" in text and "`import` is not allowed" in text
        badges = page.locator(".badge").all_inner_texts()
        assert {"released", "review", "refused"} <= set(badges)
        page.screenshot(path=str(tmp_path / "audit-page.png"), full_page=True)
    assert (tmp_path / "audit-page.png").stat().st_size > 10_000
