"""Screenshots of a running demo for the README and docs: light, dark and a phone.

    python example_project/manage.py demo --port 8123 &
    python scripts/demo_screenshots.py http://127.0.0.1:8123 docs/screenshots

Logs in as ``demo``, starts every kind of task, waits until the list shows a running,
a failed and finished rows, and writes demo-light.png, demo-dark.png (1280 px wide) and
demo-mobile.png (390 px, right after starting a task); first, owner-control-cancelled-failed.png
(1200 px: a report cancelled mid-way and a failed import, both offering Retry). Uses
/usr/bin/chromium.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from playwright.sync_api import Browser, Page, sync_playwright

CHROMIUM = "/usr/bin/chromium"


def _login(page: Page, base: str) -> None:
    page.goto(f"{base}/accounts/login/")
    page.fill("input[name=username]", "demo")
    page.fill("input[name=password]", "demo")
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/")


def _start(page: Page, label: str) -> None:
    page.click(f"button:has-text('{label}')")
    page.wait_for_load_state()


def _cancelled_and_failed(browser: Browser, base: str, out: Path) -> None:
    context = browser.new_context(viewport={"width": 1200, "height": 800})
    page = context.new_page()
    _login(page, base)
    if page.is_visible("button:has-text('Dismiss finished')"):
        page.click("button:has-text('Dismiss finished')")
    _start(page, "Flaky import")
    _start(page, "Build a report")
    # Cancelled a quarter of the way in, while the import waits for its retries.
    report = "li.taskstate-task[data-status=running]"
    page.wait_for_function(
        f'Number(document.querySelector("{report} [role=progressbar]")'
        "?.getAttribute('aria-valuenow')) >= 25",
        timeout=60_000,
    )
    page.click(f"{report} button:has-text('Cancel')")
    page.wait_for_selector("li.taskstate-task[data-status=cancelled]", timeout=60_000)
    page.wait_for_selector("li.taskstate-task[data-status=failed]", timeout=60_000)
    time.sleep(1)
    # The click left focus (and the pointer) on the button that replaced Cancel.
    page.mouse.move(0, 0)
    page.evaluate("document.activeElement?.blur()")
    page.screenshot(path=str(out / "owner-control-cancelled-failed.png"))
    context.close()


def main(base: str, out: Path, prefix: str = "demo") -> None:
    out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        if prefix == "demo":
            _cancelled_and_failed(browser, base, out)
        wide = browser.new_context(viewport={"width": 1280, "height": 900})
        page = wide.new_page()
        _login(page, base)
        # Clear what an earlier run left.
        if page.is_visible("button:has-text('Dismiss finished')"):
            page.click("button:has-text('Dismiss finished')")
        for label in ("Batch of 20", "Flaky import", "Build a report", "Quick ping"):
            _start(page, label)
        # A finished report (with its Open link), a failed import, then a report running.
        page.wait_for_selector("li.taskstate-task[data-status=failed]", timeout=60_000)
        page.wait_for_selector("li.taskstate-task[data-status=done] a[href]", timeout=60_000)
        _start(page, "Build a report")
        time.sleep(3)
        for scheme in ("light", "dark"):
            page.emulate_media(color_scheme=scheme)
            page.screenshot(path=str(out / f"{prefix}-{scheme}.png"))
        page.screenshot(path=str(out / f"{prefix}-full.png"), full_page=True)
        height = page.evaluate("document.documentElement.scrollHeight")
        print(f"{prefix}: 1280 px page height {height} px")
        phone = browser.new_context(
            viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True
        )
        mobile = phone.new_page()
        _login(mobile, base)
        _start(mobile, "Build a report")
        time.sleep(1.5)
        mobile.screenshot(path=str(out / f"{prefix}-mobile.png"))
        top = mobile.evaluate(
            "document.querySelector('#taskstate-list').getBoundingClientRect().top"
        )
        print(f"{prefix}: 390 px list top {top:.0f} px after starting a task")
        browser.close()


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]), *sys.argv[3:4])
