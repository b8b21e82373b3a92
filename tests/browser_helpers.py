"""A real browser for the page tests: Debian's chromium driven by Playwright.

``playwright install`` downloads its own browsers and cannot run offline, so the tests launch the system
chromium (``apt-get install chromium``, done by ``scripts/setup --test``) at Debian's fixed path, headless,
with a fresh profile per browser and nothing that phones home.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run",
]


@dataclass
class Browser:
    """One page of a fresh chromium profile; ``console`` and ``page_errors`` collect what the page logged."""

    page: Any  # playwright.sync_api.Page
    console: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)

    def evaluate(self, script: str, arg: Any = None) -> Any:
        return self.page.evaluate(script, arg)

    def log(self) -> str:
        """What the page said, for a failure message."""
        return "\n".join(["console:", *self.console[-30:], "page errors:", *self.page_errors[-10:]])


@contextmanager
def chromium(profile_dir: Path, *, width: int = 1000, height: int = 640) -> Iterator[Browser]:
    """A headless chromium with a fresh profile in ``profile_dir`` (created), closed on exit."""
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} not found: the page tests need Debian's chromium (scripts/setup --test installs it)")
    from playwright.sync_api import sync_playwright

    profile_dir.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile_dir), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS,
            viewport={"width": width, "height": height},
        )
        try:
            page = context.pages[0] if context.pages else context.new_page()
            browser = Browser(page)
            page.on("console", lambda message: browser.console.append(f"{message.type}: {message.text}"))
            page.on("pageerror", lambda error: browser.page_errors.append(str(error)))
            yield browser
        finally:
            context.close()
