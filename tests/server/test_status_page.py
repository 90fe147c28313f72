"""The status page at ``/``, rendered by a real headless Chromium against the real-model server.

Chromium loads the page, runs its script (which polls ``/status``) and dumps
the DOM; the assertions read what the script drew. A page whose script fails
draws nothing, so these tests fail with it (``test_a_broken_script_is_caught``
checks that on purpose). ``make test`` installs Chromium first
(``scripts/ensure_browser.sh``); without it these tests fail, they never skip.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest

from kvllama.server import ServerConfig, ServerThread, create_app
from kvllama.server.admin import status_page

MODEL = "gemma"  # the served name (tests/server/conftest.py)
KEY = "page-test-key"


@dataclass
class Page:
    """What the dumped DOM shows."""

    state: str | None = None
    models: list[str] = field(default_factory=list)
    requests: list[dict[str, str]] = field(default_factory=list)
    reuse: list[dict[str, str]] = field(default_factory=list)
    problem: str = ""
    html: str = ""


class _Reader(HTMLParser):
    def __init__(self, page: Page) -> None:
        super().__init__()
        self.page = page
        self._in_problem = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "body":
            self.page.state = a.get("data-state")
        elif tag == "tr" and a.get("class") == "model":
            self.page.models.append(a.get("data-model", ""))
        elif tag == "tr" and a.get("class") == "req":
            self.page.requests.append(a)
        elif tag == "tr" and a.get("class") == "reuse":
            self.page.reuse.append(a)
        self._in_problem = a.get("id") == "problem"

    def handle_data(self, data: str) -> None:
        if self._in_problem:
            self.page.problem += data


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("the status-page test needs Chromium: run `bash scripts/ensure_browser.sh` "
                    "(`make test` does) or `apt-get install -y chromium`")
    return path


def render(url: str, profile: Path) -> Page:
    """Load ``url`` in headless Chromium, let its script run 5 s of virtual time, read the DOM."""
    cmd = [chromium(), "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
           f"--user-data-dir={profile}", "--dump-dom", "--virtual-time-budget=5000", url]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0 and "<body" in done.stdout, (
        f"chromium failed ({done.returncode}): {done.stderr[-2000:]}")
    page = Page(html=done.stdout)
    _Reader(page).feed(done.stdout)
    return page


@pytest.fixture
def profile(tmp_path: Path) -> Path:
    return tmp_path / "chromium-profile"


def test_page_shows_the_models_then_a_new_request(served, profile):
    page = render(f"{served.url}/", profile)
    assert page.state == "ok", f"page state {page.state!r}: {page.problem}"
    assert {MODEL, "gemma-agent"} <= set(page.models), page.models
    with httpx.Client(base_url=served.url, timeout=60) as http:
        r = http.post("/v1/completions", json={"model": MODEL, "prompt": "Status page", "max_tokens": 5,
                                               "ignore_eos": True})
        assert r.status_code == 200, r.text
        newest = http.get("/status/requests", params={"limit": 1}).json()["data"][0]
    assert newest["model"] == MODEL and newest["generated_tokens"] == 5
    page = render(f"{served.url}/", profile)
    assert page.state == "ok", page.problem
    shown = [row for row in page.requests if row.get("data-n") == str(newest["n"])]
    assert shown and shown[0]["data-model"] == MODEL, page.requests
    assert page.requests[0].get("data-n") == str(newest["n"])  # newest first


def test_page_lists_a_model_that_is_not_loaded_without_loading_it(served, profile):
    served.engine.register_model("gemma-later", None, n_seq_max=1, n_ctx=512, n_threads=1)
    try:
        page = render(f"{served.url}/", profile)
        assert page.state == "ok", f"page state {page.state!r}: {page.problem}"
        assert "gemma-later" in page.models and "unloaded" in page.html
        assert "gemma-later" not in {info.id for info in served.engine.list_models()}
    finally:
        served.engine.forget_model("gemma-later")


def test_page_shows_prompt_reuse_by_source(served, profile):
    # Two prompts that share a long start: the second copies it from the first's kept sequence.
    shared = "Reuse panel. " + " ".join(f"note {i}" for i in range(120))
    with httpx.Client(base_url=served.url, timeout=60) as http:
        for ask in (" First?", " Second, another question?"):
            r = http.post("/v1/completions", json={"model": MODEL, "prompt": shared + ask, "max_tokens": 2})
            assert r.status_code == 200, r.text
        model = next(m for m in http.get("/status").json()["models"] if m["name"] == MODEL)
    reuse = model["prompt_reuse"]
    assert reuse["requests"]["live"] + reuse["requests"]["kept"] >= 1
    page = render(f"{served.url}/", profile)
    assert page.state == "ok", page.problem
    shown = {row["data-source"]: row for row in page.reuse if row["data-model"] == MODEL}
    assert set(shown) == set(reuse["requests"]), page.reuse
    for source, n in reuse["requests"].items():  # nothing else ran on this model in between
        assert shown[source]["data-requests"] == str(n)
        assert shown[source]["data-tokens"] == str(reuse["tokens"][source])


@pytest.fixture(scope="module")
def keyed_url(served) -> Iterator[str]:
    """A second app over the same engine, with an API key."""
    with ServerThread(create_app(served.engine, ServerConfig(api_key=KEY))) as url:
        yield url


def test_with_an_api_key_the_page_asks_for_it(keyed_url, profile):
    page = render(f"{keyed_url}/", profile)
    assert page.state == "auth" and page.models == []
    assert 'id="login" style="display: block;"' in page.html


@pytest.mark.parametrize("suffix", [f"#key={KEY}", f"?key={KEY}"])
def test_the_key_in_the_url_is_sent(keyed_url, profile, suffix):
    page = render(f"{keyed_url}/{suffix}", profile)
    assert page.state == "ok", page.problem
    assert MODEL in page.models


def test_a_wrong_key_is_refused(keyed_url, profile):
    page = render(f"{keyed_url}/#key=wrong", profile)
    assert page.state == "auth" and page.models == []


def test_a_broken_script_is_caught(served, profile, monkeypatch):
    """The harness itself: a page whose script throws draws no model rows, and the checks see it."""
    from kvllama.server.admin import routes as admin_routes

    broken = status_page.STATUS_PAGE.replace("function renderModels(models) {",
                                             "function renderModels(models) { null.boom();")
    assert broken != status_page.STATUS_PAGE
    monkeypatch.setattr(admin_routes, "STATUS_PAGE", broken)
    with ServerThread(create_app(served.engine)) as url:
        page = render(f"{url}/", profile)
    assert page.state == "error" and page.models == []
    assert "boom" in page.problem or "null" in page.problem, page.problem
