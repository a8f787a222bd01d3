"""The web dashboard (docs/operations.md, "The dashboard"; ``corral/api/web.py``).

Without a browser: the page and its files are served without a key, each with its
media type, a strict Content-Security-Policy and the other headers; they name nothing
outside this server, and every module they import is served; the API still needs a
key, and the guard's Host check still applies.

In a real browser (Playwright driving Debian's Chromium headless, ``/usr/bin/chromium``:
``make test`` installs it when absent; never a Playwright browser download), against a
real ``corral serve`` with keys on: a wrong key is refused on the page; a user signs
in, a workload submitted through the API appears without a reload, its page shows the
log growing, a kill (confirmed in the dialog) shows ``killed``; another user signed in
afterwards sees none of it. A workload's log shows without scrolling in a 1280 by
800 window (its 40-variable environment folded); the list tells an array's tasks
apart by unique id prefixes and their index, never wraps an id, and shows 200
characters of a 100 KB command; the log follows again by itself after a server
restart, without showing a line twice; the page asks the API nothing before a key;
the plot makes room for its labels. Screenshots go to the test's folder and to
``.screenshots/`` at the top of the tree (ignored by git), to be looked at.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from corral.api.web import (
    CONFIG_PATH,
    CONTENT_SECURITY_POLICY,
    FILES,
    PAGE,
    PAGE_PATH,
    WEB_DIR,
    WEB_PATHS,
)
from corral.executors.local import kill_all
from tests.asgi import SyncASGIClient
from tests.blocking import BlockingStore
from tests.conftest import app_client, needs
from tests.server import LiveServer

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
SHOTS = ROOT / ".screenshots"


@pytest.fixture
def store_kind() -> str:
    return "sqlite"  # static files and a browser: the database plays no part


@pytest.fixture
def anonymous(store: BlockingStore, tmp_path: Path) -> Iterator[SyncASGIClient]:
    """The app, driven in process by a client that sends no key."""
    client = app_client(store, tmp_path)
    yield client
    client.close()


# --- the files, without a browser ----------------------------------------------------


class _Refs(HTMLParser):
    """Every ``src`` and ``href`` of a page, and whether it has inline script or style."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []
        self.inline: list[str] = []
        self._tag = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._tag = tag
        for name, value in attrs:
            if name in ("src", "href") and value is not None:
                self.refs.append(value)
            if name == "style" or name.startswith("on"):
                self.inline.append(f"<{tag} {name}=…>")

    def handle_data(self, data: str) -> None:
        if self._tag in ("script", "style") and data.strip():
            self.inline.append(f"<{self._tag}>{data.strip()[:40]}")


def _is_local(ref: str) -> bool:
    return not re.match(r"^([a-z][a-z0-9+.-]*:|//)", ref, re.IGNORECASE)


def test_the_page_and_its_files_are_served_without_a_key_with_a_strict_policy(
    anonymous: SyncASGIClient,
) -> None:
    for path in sorted(WEB_PATHS):
        response = anonymous.get(path)
        assert response.status_code == 200, (path, response.text)
        name = path.rsplit("/", 1)[1]
        expected = FILES.get(name, "text/html; charset=utf-8")
        if path == CONFIG_PATH:
            expected = "application/json"
        assert response.headers["content-type"] == expected, path
        assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert "default-src 'self'" in CONTENT_SECURITY_POLICY
        assert "unsafe-inline" not in CONTENT_SECURITY_POLICY
        assert "unsafe-eval" not in CONTENT_SECURITY_POLICY
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "no-referrer"
        assert "set-cookie" not in response.headers

    # The page asks whether the server takes keys here, not of the API (a 401).
    assert anonymous.get(CONFIG_PATH).json() == {"keys": True}

    page = anonymous.get(PAGE_PATH).text
    parser = _Refs()
    parser.feed(page)
    assert parser.refs, "the page loads nothing?"
    assert not [r for r in parser.refs if not _is_local(r)], parser.refs
    assert parser.inline == [], "inline script or style, which the policy refuses"
    served = {f"ui/{name}" for name in FILES}
    assert {r for r in parser.refs if not r.startswith("#")} <= served, parser.refs

    # Every file of corral/web is served; each module imports only served ones; the
    # style sheet loads nothing.
    assert {f.name for f in WEB_DIR.iterdir()} == {PAGE, *FILES}
    for name in FILES:
        text = anonymous.get(f"/ui/{name}").text
        if name.endswith(".js"):
            imports = re.findall(
                r"""^\s*(?:import|export)\b[^"';]*?from\s+["']([^"']+)["']""", text, re.M
            )
            for module in imports:
                assert module.startswith("./") and module[2:] in FILES, (name, module)
            assert "innerHTML" not in text and "eval(" not in text, name
        if name.endswith(".css"):
            assert "url(" not in text and "@import" not in text, name
        assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", text), name


def test_the_api_behind_the_page_still_needs_a_key_and_the_guard_still_applies(
    anonymous: SyncASGIClient, api: SyncASGIClient
) -> None:
    assert anonymous.get("/v1/workloads").status_code == 401
    assert anonymous.get("/v1/events").status_code == 401
    assert api.get("/v1/workloads").status_code == 200
    # Only the files named are served: anything else under /ui is a route like any.
    assert anonymous.get("/ui/nothing.js").status_code == 401
    assert api.get("/ui/nothing.js").status_code == 404
    assert api.get("/ui/%2e%2e/pyproject.toml").status_code == 404
    # A page of a foreign host name (DNS rebinding) gets nothing, the dashboard neither.
    for path in (PAGE_PATH, "/ui/app.js"):
        response = anonymous.get(path, headers={"Host": "evil.example"})
        assert response.status_code == 400, path
        assert "does not serve the host" in response.text


# --- in a browser ---------------------------------------------------------------------


@pytest.fixture
def browser() -> Iterator[Any]:
    """Debian's Chromium, headless, driven by Playwright; skipped (failed under
    ``CI=true``) when either is missing."""
    why = (
        "needs Debian's Chromium at /usr/bin/chromium (make test installs it with"
        " apt-get) and Playwright (pip install -e '.[dev]')"
    )
    needs(CHROMIUM.exists() and importlib.util.find_spec("playwright") is not None, why)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LiveServer]:
    data = tmp_path / "data"
    with LiveServer(data, "--executor", "local", "--kill-grace", "1") as live:
        yield live
    kill_all(data / "run")


def user_key(server: LiveServer, user: str) -> str:
    """A key of ``user``, whose workloads run as ``nobody`` on a server running as
    root (which runs nothing as root for a user)."""
    body: dict[str, Any] = {"user": user}
    if os.geteuid() == 0:
        body["unix_user"] = "nobody"
    with server.http() as admin:
        response = admin.post("/v1/tokens", json=body)
    assert response.status_code == 201, response.text
    return str(response.json()["key"])


class Shots:
    """Screenshots into the test's folder, each copied to ``.screenshots/``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir()
        SHOTS.mkdir(exist_ok=True)

    def __call__(self, page: Any, name: str, **options: Any) -> None:
        path = self.folder / f"{name}.png"
        page.screenshot(path=str(path), **options)
        shutil.copy(path, SHOTS / path.name)


TICKER = 'i=0; while [ $i -lt 400 ]; do i=$((i+1)); echo "tick $i"; sleep 0.2; done'


def test_a_user_follows_a_workload_live_and_kills_it_and_another_sees_none(
    browser: Any, server: LiveServer, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    expect.set_options(timeout=20_000)
    shots = Shots(tmp_path / "screenshots")
    alice, bob = user_key(server, "alice"), user_key(server, "bob")
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on(
        "console",
        lambda m: (
            problems.append(m.text)
            if re.search(r"Content Security Policy|Trusted Type|Uncaught", m.text)
            else None
        ),
    )
    page.goto(server.url)

    # A wrong key is refused, on the page.
    page.fill("#key", "corral_not-a-key")
    page.click("#login button[type=submit]")
    expect(page.locator("#login-error")).to_contain_text("That key was refused")
    expect(page.locator("#login-error")).to_contain_text("not valid")
    shots(page, "login-error")

    # Alice signs in: nothing yet, and the page stays (a mark on the window survives).
    page.fill("#key", alice)
    page.click("#login button[type=submit]")
    expect(page.locator(".empty")).to_contain_text("No workloads yet")
    expect(page.locator("#live")).to_have_text("Live")
    page.evaluate("window.__sameDocument = true")
    assert page.evaluate("sessionStorage.getItem('corral.key')") == alice
    assert page.evaluate("document.cookie") == ""

    with server.http(token=alice) as http:
        ticker = http.post(
            "/v1/workloads",
            json={
                "command": ["sh", "-c", TICKER],
                "name": "ticker",
                "labels": {"team": "ml"},
                "cwd": "/tmp",
            },
        ).json()
        other = http.post(
            "/v1/workloads",
            json={"command": ["true"], "name": "quick", "labels": {"team": "web"}, "cwd": "/tmp"},
        ).json()
    row = page.locator(f"tr[data-id='{ticker['id']}']")
    expect(row).to_contain_text("ticker")
    expect(row.locator(".badge")).to_have_text("running")
    expect(page.locator(f"tr[data-id='{other['id']}'] .badge")).to_have_text("completed")
    assert page.evaluate("window.__sameDocument") is True, "the page was reloaded"
    expect(page.locator("#activity .legend")).to_contain_text("Submitted 2")

    # The CLI's filters: a label, then a bad one (said on the page), then none.
    page.fill("#filter-label", "team=ml")
    expect(page.locator("tbody tr")).to_have_count(1)
    expect(page.locator("tbody tr")).to_contain_text("ticker")
    assert "label=team%3Dml" in page.url
    page.fill("#filter-label", "team")
    expect(page.get_by_role("alert").filter(has_text="Filter not valid")).to_contain_text("team")
    page.fill("#filter-label", "")
    expect(page.locator("tbody tr")).to_have_count(2)
    expect(page.locator("#queue")).to_contain_text("Nothing waiting")
    shots(page, "list")
    page.set_viewport_size({"width": 420, "height": 860})
    expect(page.locator("tbody tr")).to_have_count(2)
    shots(page, "list-narrow", full_page=True)
    page.set_viewport_size({"width": 1280, "height": 800})

    # Its page: fields, the timeline, and the log growing.
    row.locator("a.name").click()
    expect(page.locator("#view h1")).to_have_text("ticker")
    expect(page.locator(".fields")).to_contain_text(ticker["id"])
    expect(page.locator(".timeline")).to_contain_text("pending → running")
    log = page.locator("pre.log")
    expect(log).to_contain_text("tick 3")
    last = max(int(n) for n in re.findall(r"tick (\d+)", log.inner_text()))
    expect(log).to_contain_text(f"tick {last + 5}\n")  # it grows while we look
    shots(page, "workload-log", full_page=True)

    # Kill it, confirmed in the dialog: the page says killed.
    page.get_by_role("button", name="Kill", exact=True).click()
    dialog = page.locator("dialog.confirm")
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text("Kill ticker?")
    dialog.get_by_role("button", name="Kill workload").click()
    expect(dialog).to_have_count(0)
    expect(page.locator(".head-badge .badge")).to_contain_text("killed")
    expect(page.locator(".timeline")).to_contain_text("running → killed")
    expect(page.locator(".log-state")).to_have_text("ended")
    expect(page.get_by_role("button", name="Kill", exact=True)).to_be_hidden()
    with server.http(token=alice) as http:
        assert http.get(f"/v1/workloads/{ticker['id']}").json()["status"] == "killed"
    expect(page.locator("#counts a[href='#/?status=killed']")).to_contain_text("1")
    shots(page, "killed", full_page=True)

    # The server restarts: the stream reconnects with Last-Event-ID, so the hour's
    # events are not counted twice, and the list goes on updating.
    page.get_by_role("link", name="← Workloads").click()
    server.stop()
    expect(page.locator("#live")).to_have_text("Reconnecting…")
    server.start()
    expect(page.locator("#live")).to_have_text("Live")
    with server.http(token=alice) as http:
        late = http.post("/v1/workloads", json={"command": ["true"], "cwd": "/tmp"}).json()
    expect(page.locator(f"tr[data-id='{late['id']}'] .badge")).to_have_text("completed")
    expect(page.locator("#activity .legend")).to_contain_text("Submitted 3")
    assert page.evaluate("window.__sameDocument") is True, "the page was reloaded"

    # Signing out forgets the key; Bob signs in on the same tab and sees none of hers.
    page.get_by_role("button", name="Sign out").click()
    expect(page.locator("#login-view")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('corral.key')") is None
    page.fill("#key", bob)
    page.click("#login button[type=submit]")
    expect(page.locator(".empty")).to_contain_text("No workloads yet")
    expect(page.locator("#counts")).to_contain_text("Your workloads")
    expect(page.locator("#activity .legend")).to_contain_text("Submitted 0")
    assert ticker["id"] not in page.content() and other["id"] not in page.content()
    page.goto(f"{server.url}/#/w/{ticker['id']}")
    expect(page.locator(".empty")).to_contain_text("No such workload")
    expect(page.locator("pre.log")).not_to_contain_text("tick")
    assert problems == [], problems
    context.close()


def test_a_server_without_keys_opens_the_dashboard_without_a_sign_in(
    browser: Any, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    data = tmp_path / "data"
    with LiveServer(data, "--executor", "none", "--no-auth") as server:
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto(server.url)
        expect(page.locator(".empty")).to_contain_text("No workloads yet")
        expect(page.locator("#role")).to_have_text("no keys (--no-auth)")
        expect(page.locator("#login-view")).to_be_hidden()
        expect(page.get_by_role("button", name="Sign out")).to_be_hidden()
        expect(page.locator("#capacity")).to_contain_text("This server runs nothing")
        page.close()


def sign_in(
    browser: Any, server: LiveServer, key: str, width: int = 1280, height: int = 800
) -> Any:
    """A new page of the dashboard at this size, signed in with ``key`` through the form;
    ``page.problems`` collects page errors and policy violations."""
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": width, "height": height})
    page.problems = []
    page.on("pageerror", lambda error: page.problems.append(f"page error: {error}"))
    page.on(
        "console",
        lambda m: (
            page.problems.append(m.text)
            if re.search(r"Content Security Policy|Trusted Type|Uncaught", m.text)
            else None
        ),
    )
    page.goto(server.url)
    page.fill("#key", key)
    page.click("#login button[type=submit]")
    expect(page.locator("#live")).to_have_text("Live", timeout=20_000)
    return page


def forty_variables() -> dict[str, str]:
    """An environment as a shell passes it on: 40 variables, some long."""
    env = {f"VARIABLE_{i:02d}": f"/some/path/number/{i}/" + "x" * (i % 7) * 9 for i in range(38)}
    env["PATH"] = ":".join([*(f"/opt/tool{i}/bin" for i in range(30)), "/usr/bin:/bin"])
    env["LS_COLORS"] = "rs=0:di=01;34:ln=01;36:" * 20
    return env


def test_a_workload_page_folds_its_environment_and_shows_its_log_without_scrolling(
    browser: Any, server: LiveServer, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    expect.set_options(timeout=20_000)
    shots = Shots(tmp_path / "screenshots")
    env = forty_variables()
    with server.http() as http:
        ticker = http.post(
            "/v1/workloads",
            json={"command": ["sh", "-c", TICKER], "name": "env-ticker", "env": env, "cwd": "/tmp"},
        ).json()
        failing = http.post(
            "/v1/workloads",
            json={"command": ["sh", "-c", "echo oops; exit 3"], "env": env, "cwd": "/tmp"},
        ).json()
    page = sign_in(browser, server, str(server.token))
    page.goto(f"{server.url}/#/w/{ticker['id']}")
    expect(page.locator("pre.log")).to_contain_text("tick 2")

    # The log's first lines show in a 1280 by 800 window, without scrolling.
    assert page.evaluate("window.scrollY") == 0
    box = page.locator(".log-box").bounding_box()
    assert box is not None and box["y"] + 60 <= 800, box
    # The environment is one folded line, after the other fields.
    fold = page.locator("details.env")
    expect(fold.locator("summary")).to_have_text("environment: 40 variables")
    assert fold.get_attribute("open") is None
    expect(fold.locator("li").first).to_be_hidden()
    after = (
        "document.querySelector('.fields')"
        ".compareDocumentPosition(document.querySelector('details.env'))"
    )
    assert page.evaluate(after) & 4, "the environment comes after the fields"
    shots(page, "workload-env-folded")

    fold.locator("summary").click()
    expect(fold.locator("li")).to_have_count(40)
    expect(fold).to_contain_text("VARIABLE_17=/some/path/number/17/")
    shots(page, "workload-env-open", full_page=True)

    # A reason sits with the key fields, above the environment.
    page.goto(f"{server.url}/#/w/{failing['id']}")
    expect(page.locator(".head-badge .badge")).to_have_text("failed")
    reason = page.locator(".fields .field", has=page.locator("dt", has_text="Reason"))
    expect(reason).to_be_visible()
    reason_box, fold_box = reason.bounding_box(), page.locator("details.env").bounding_box()
    assert reason_box and fold_box and reason_box["y"] < fold_box["y"]
    box = page.locator(".log-box").bounding_box()
    assert box is not None and box["y"] + 60 <= 800, box
    expect(page.locator("pre.log")).to_contain_text("oops")
    shots(page, "workload-failed")
    assert page.problems == [], page.problems
    page.close()


def test_the_list_tells_array_tasks_apart_keeps_ids_whole_and_cuts_long_commands(
    browser: Any, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    expect.set_options(timeout=20_000)
    shots = Shots(tmp_path / "screenshots")
    with LiveServer(tmp_path / "data", "--executor", "none") as server:
        with server.http() as http:
            items = [{"command": ["sleep", "1"], "array_index": i} for i in range(10)]
            tasks = http.post("/v1/workloads/batch", json={"items": items}).json()["items"]
            named = [
                {"command": ["sleep", "1"], "array_index": i, "name": "sweep"} for i in range(3)
            ]
            sweep = http.post("/v1/workloads/batch", json={"items": named}).json()["items"]
            big = http.post(
                "/v1/workloads", json={"command": ["echo", "A" * 100_000], "name": "big"}
            ).json()

        page = sign_in(browser, server, str(server.token), width=390, height=844)
        expect(page.locator("tbody tr")).to_have_count(14)

        # Unnamed tasks: the id's prefix unique among the rows (10 characters or more;
        # when long, its head and its end, where it differs), and the task's index;
        # named ones: the name and index, the id so shown below.
        def shown_id(text: str, wid: str) -> str:
            match = re.fullmatch(r"([0-9a-z]{8,})(?:…([0-9a-z]+))?", text)
            assert match, text
            head, end = match[1], match[2] or ""
            assert wid.startswith(head) and len(head) + len(end) >= 10, (text, wid)
            assert end in wid[len(head) :], (text, wid)
            return text

        unnamed = []
        for task in tasks:
            link = page.locator(f"tr[data-id='{task['id']}'] a.name")
            assert link.get_attribute("title") == task["id"]
            text = link.text_content() or ""
            match = re.fullmatch(r"(.+)\[(\d+)\]", text)
            assert match and int(match[2]) == task["array_index"], text
            unnamed.append(shown_id(match[1], task["id"]))
        assert len(set(unnamed)) == len(unnamed), unnamed
        named = []
        for task in sweep:
            row = page.locator(f"tr[data-id='{task['id']}']")
            expect(row.locator("a.name")).to_have_text(f"sweep[{task['array_index']}]")
            named.append(shown_id(row.locator(".id").inner_text(), task["id"]))
        assert len(set(named)) == len(named), named
        shots(page, "list-array-narrow", full_page=True)
        # No id or name wraps: one line each, however narrow the window (measured in
        # one go: the list may be drawn again between two questions).
        lines = page.evaluate(
            """() => [...document.querySelectorAll(".c-name a.name, .c-name .id")].map((e) => {
                const style = getComputedStyle(e);
                const lines = e.getBoundingClientRect().height / parseFloat(style.fontSize);
                return [e.textContent, style.whiteSpace, e.getClientRects().length, lines];
            })"""
        )
        assert len(lines) == 14 + 3 + 1, lines
        for text, white_space, rects, height in lines:
            assert white_space == "nowrap" and rects == 1 and height < 2, (text, height)
        cut = page.evaluate(
            """() => [...document.querySelectorAll(".c-name .unnamed .base, .c-name .id")]
                .filter((e) => e.scrollWidth > e.clientWidth).map((e) => e.textContent)"""
        )
        assert cut == [], f"ids cut short at 390 px: {cut}"
        # A 100 KB command: about 200 characters of it, in the text and the title.
        page.set_viewport_size({"width": 1280, "height": 800})
        code = page.locator(f"tr[data-id='{big['id']}'] .c-command code")
        text, title = code.text_content() or "", code.get_attribute("title") or ""
        assert text.startswith("echo AAAA") and text.endswith("…") and len(text) <= 201, len(text)
        assert title == text
        shots(page, "list-array")
        assert page.problems == [], page.problems
        page.close()


def test_the_log_follows_again_by_itself_after_a_server_restart(
    browser: Any, server: LiveServer, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    expect.set_options(timeout=30_000)
    shots = Shots(tmp_path / "screenshots")
    alice = user_key(server, "alice")
    with server.http(token=alice) as http:
        ticker = http.post(
            "/v1/workloads", json={"command": ["sh", "-c", TICKER], "name": "ticker", "cwd": "/tmp"}
        ).json()
    page = sign_in(browser, server, alice)
    live_colour = page.locator("#live").evaluate("e => getComputedStyle(e).color")
    page.goto(f"{server.url}/#/w/{ticker['id']}")
    log = page.locator("pre.log")
    expect(log).to_contain_text("tick 5\n")

    server.stop()
    expect(page.locator(".log-state")).to_contain_text("reconnecting")
    expect(page.locator("#live")).to_have_text("Reconnecting…")
    colour = page.locator("#live").evaluate("e => getComputedStyle(e).color")
    assert colour != live_colour, "Reconnecting… is drawn in Live's green"
    shots(page, "log-reconnecting")
    stopped_at = max(int(n) for n in re.findall(r"tick (\d+)", log.inner_text()))
    server.start()

    # The log comes back by itself, with what was written meanwhile and after, once.
    expect(log).to_contain_text(f"tick {stopped_at + 15}\n")
    expect(page.locator(".log-state")).to_have_text("following…")
    ticks = [int(n) for n in re.findall(r"tick (\d+)", log.inner_text())]
    assert ticks == list(range(1, len(ticks) + 1)), ticks
    shots(page, "log-resumed")

    # Killed: the follow ends and stays ended.
    with server.http(token=alice) as http:
        assert http.delete(f"/v1/workloads/{ticker['id']}").status_code == 200
    expect(page.locator(".log-state")).to_have_text("ended")
    page.wait_for_timeout(2500)
    expect(page.locator(".log-state")).to_have_text("ended")
    assert page.problems == [], page.problems
    page.close()


def test_the_page_asks_nothing_before_sign_in_and_the_plot_fits_its_labels(
    browser: Any, server: LiveServer
) -> None:
    from playwright.sync_api import expect

    # Before sign-in the page asks the API nothing: no 401 in the console.
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    console: list[str] = []
    page.on("console", lambda m: console.append(m.text))
    page.goto(server.url)
    expect(page.locator("#login-view")).to_be_visible()
    page.wait_for_load_state("networkidle")
    assert not [m for m in console if "401" in m], console
    page.close()

    page = sign_in(browser, server, str(server.token))
    # The plot module itself, drawn with large counts into the page.
    for count in (7, 4_800, 480_000, 24_000_000):
        labels = page.evaluate(
            """async (count) => {
                const { plot } = await import("./ui/plot.js");
                const submits = new Array(60).fill(0);
                submits[58] = count;
                const [svg] = plot(submits, new Array(60).fill(0));
                document.querySelector("#activity .panel-body").replaceChildren(svg);
                const axis = Number(svg.querySelector(".grid line").getAttribute("x1"));
                return [...svg.querySelectorAll(".grid text")].map((t) => {
                    const box = t.getBBox();
                    return [t.textContent, box.x, box.x + box.width, axis];
                });
            }""",
            count,
        )
        for text, left, right, axis in labels:
            assert left >= 0 and right <= axis, (count, text, left, right, axis)
    page.close()
