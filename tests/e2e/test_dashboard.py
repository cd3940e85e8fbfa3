"""The operator page in a real headless browser (Playwright driving Debian's chromium).

It loads ``/dashboard`` from the local stack, signs in with the operator key, sends traffic
through the OpenAI SDK, and sees the numbers move: requests and tokens, the new user among the
top users, a failed request listed by its id. A non-operator key is refused by the page's data
route (403) and by the page itself.

Chromium comes from apt (``make test`` installs it when missing and apt can be used);
Playwright's own browser download is not used. Without chromium the test fails, naming the fix;
``FIRST_SKIP_BROWSER=1`` skips it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import openai
import pytest
import requests
from openai import OpenAI
from playwright.sync_api import Browser, Page, expect, sync_playwright

from offline.background import BackgroundStack
from tests.e2e.conftest import BROKEN_MODEL, TINY, create_key

TIMEOUT_MS = 20_000


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    executable = shutil.which("chromium")
    if executable is None:
        if os.environ.get("FIRST_SKIP_BROWSER") == "1":
            pytest.skip("FIRST_SKIP_BROWSER=1 and no chromium on PATH")
        pytest.fail(
            "chromium is not on PATH: `apt-get install -y chromium` (make test does it where apt"
            " can be used), or set FIRST_SKIP_BROWSER=1 to skip the browser test"
        )
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, headless=True)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    yield page
    context.close()


def number(page: Page, element_id: str) -> int:
    text = page.locator(f"#{element_id}").inner_text().replace(",", "").strip()
    return int(text) if text.isdigit() else -1


def sign_in(page: Page, stack: BackgroundStack, key: str) -> None:
    page.goto(f"{stack.config.api_url}/dashboard")
    expect(page.locator("#signin")).to_be_visible()
    page.fill("#key", key)
    page.click("#signin button[type=submit]")


def test_the_page_shows_deployments_and_the_numbers_move_with_traffic(
    page: Page, stack: BackgroundStack
) -> None:
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    sign_in(page, stack, stack.api_key)
    expect(page.locator("#board")).to_be_visible()
    for name in ("local-a", "local-b"):
        expect(page.locator(f'#endpoints tr[data-endpoint="{name}"]')).to_contain_text("online")
    expect(page.locator("#chart-tokens canvas").first).to_be_attached()  # uPlot drew
    before_requests, before_tokens = number(page, "stat-requests"), number(page, "stat-tokens")
    assert before_requests >= 0 and before_tokens >= 0

    user = "dashboard-watcher"
    client = OpenAI(
        base_url=f"{stack.config.api_url}/v1", api_key=create_key(stack, user), max_retries=0
    )
    for i in range(3):
        chat = client.chat.completions.create(
            model=TINY, messages=[{"role": "user", "content": f"Dashboard {i}"}], max_tokens=8
        )
        assert chat.usage is not None and chat.usage.total_tokens > 0
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(
            model=BROKEN_MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=4
        )
    assert isinstance(info.value.body, dict)
    failed_id = str(info.value.body["request_id"])

    # The page refreshes itself every 5 s; the usage records land within about a second.
    page.wait_for_function(
        "([r, t]) => {"
        " const n = (id) => Number(document.getElementById(id).textContent.replace(/,/g, ''));"
        " return n('stat-requests') >= r + 4 && n('stat-tokens') > t; }",
        arg=[before_requests, before_tokens],
    )
    row = page.locator(f'#top-users tr[data-user="{user}"]')
    expect(row).to_be_visible()
    assert int(row.locator("td").nth(2).inner_text().replace(",", "")) == 4
    expect(page.locator("#failures")).to_contain_text(failed_id)
    expect(page.locator("#failures tr", has_text=failed_id)).to_contain_text("503")
    assert errors == []


def test_a_non_operator_is_refused_by_the_data_route_and_the_page(
    page: Page, stack: BackgroundStack
) -> None:
    outsider = create_key(stack, "dashboard-outsider")
    url = f"{stack.config.api_url}/v1/dashboard/summary"
    refused = requests.get(url, headers={"Authorization": f"Bearer {outsider}"}, timeout=10)
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "forbidden"
    anonymous = requests.get(url, timeout=10)
    assert anonymous.status_code == 401
    assert anonymous.json()["error"]["code"] == "invalid_api_key"
    # The shell itself is public and holds no data.
    shell = requests.get(f"{stack.config.api_url}/dashboard", timeout=10)
    assert shell.status_code == 200 and "text/html" in shell.headers["content-type"]

    sign_in(page, stack, outsider)
    expect(page.locator("#error")).to_contain_text("Refused (403)")
    expect(page.locator("#board")).to_be_hidden()
    assert page.evaluate("sessionStorage.getItem('first.dashboard.key')") is None
