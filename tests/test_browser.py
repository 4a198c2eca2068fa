"""A reviewer's session in a real browser: headless Chromium driven by
selenium against the app under waitress."""

import csv
import dataclasses
import io
import os
import pathlib
import time
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.wait import WebDriverWait

from conftest import require
from dashboard import DAY, PASSWORD, REVIEWER, START, sample_events
from tim_audit import create_app
from tim_audit.log import db, records
from tim_audit.log.records import Rejection


@pytest.fixture
def browser(tmp_path):
    options = webdriver.ChromeOptions()
    options.binary_location = require("chromium")
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,1000",
    ):
        options.add_argument(flag)
    options.add_experimental_option(
        "prefs", {"download.default_directory": str(tmp_path / "downloads")}
    )
    service = webdriver.ChromeService(executable_path=require("chromedriver"))
    driver = webdriver.Chrome(options=options, service=service)
    driver.downloads = tmp_path / "downloads"
    yield driver
    driver.quit()


@pytest.fixture
def server(live_server):
    """Four hundred events, a hundred of them owned by owner1."""
    log = live_server.app.extensions["tim_audit"]
    base = sample_events()
    records.write(
        log._connection(),
        [
            base[0].__class__(
                **{
                    **vars(base[n % 40]),
                    "group_id": f"@TGS#b{n}",
                    "owner": f"owner{n % 4}",
                    "event_time": START + n * 60_000,
                }
            )
            for n in range(400)
        ],
        log.key,
    )
    return live_server


def rows(driver):
    return driver.find_elements(By.CSS_SELECTOR, "table.events tbody tr")


def cells(row):
    return [cell.text for cell in row.find_elements(By.TAG_NAME, "td")]


def click_through(driver, element):
    """Click a link or button and wait until the next page has loaded.

    Every click here goes to another address, so the address changing is the
    sign (asking an element of the old page whether it is stale can fail with
    a protocol error of Chromium's own while the page is replaced)."""
    address = driver.current_url
    element.click()
    WebDriverWait(driver, 20).until(lambda d: d.current_url != address)
    WebDriverWait(driver, 20).until(
        lambda d: d.execute_script("return document.readyState") == "complete"
    )


def test_reviewer_filters_pages_reads_and_exports(server, browser):
    # Sign in: the credentials go in the first address, as a password
    # manager would fill the Basic prompt; Chromium keeps them for the site.
    browser.get(
        f"http://{REVIEWER}:{PASSWORD.replace(' ', '%20')}@{server.host}:{server.port}/history"
    )
    assert browser.title == "History · tim-audit"
    assert browser.find_element(By.CSS_SELECTOR, ".reviewer").text == REVIEWER
    assert len(rows(browser)) == 50

    # Filter by owner.
    owner = browser.find_element(By.NAME, "owner")
    owner.send_keys("owner1")
    click_through(browser, browser.find_element(By.CSS_SELECTOR, ".filters button[type=submit]"))
    assert parse_qs(urlsplit(browser.current_url).query)["owner"] == ["owner1"]
    assert browser.find_element(By.CSS_SELECTOR, ".count strong").text == "100"
    first_page = [cells(row) for row in rows(browser)]
    assert len(first_page) == 50 and {row[4] for row in first_page} == {"owner1"}

    # Page forward, then back.
    click_through(browser, browser.find_element(By.LINK_TEXT, "Older →"))
    second_page = [cells(row) for row in rows(browser)]
    assert len(second_page) == 50 and {row[4] for row in second_page} == {"owner1"}
    assert second_page[0][0] < first_page[-1][0]
    assert not browser.find_elements(By.LINK_TEXT, "Older →")
    click_through(browser, browser.find_element(By.LINK_TEXT, "← Newer"))
    assert [cells(row) for row in rows(browser)] == first_page

    # Open an event.
    group_id = first_page[3][1]
    click_through(browser, rows(browser)[3].find_element(By.TAG_NAME, "a"))
    assert browser.find_element(By.TAG_NAME, "h1").text.endswith(group_id)
    assert (
        "This row's hash matches its contents"
        in browser.find_element(By.CSS_SELECTOR, "p.verified").text
    )
    address = browser.current_url
    browser.back()
    WebDriverWait(browser, 20).until(lambda d: d.current_url != address)
    WebDriverWait(browser, 20).until(
        lambda d: d.execute_script("return document.readyState") == "complete"
    )

    # Download the filtered CSV.
    browser.find_element(By.LINK_TEXT, "CSV").click()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        done = [p for p in browser.downloads.glob("*.csv")] if browser.downloads.exists() else []
        if done:
            break
        time.sleep(0.1)
    assert done, "no CSV arrived"
    exported = list(csv.reader(io.StringIO(done[0].read_text("utf-8-sig"))))
    assert exported[0][:4] == ["id", "event_time", "event_time_ms", "group_id"]
    assert len(exported) == 101
    assert {row[6] for row in exported[1:]} == {"owner1"}
    assert exported[4][3] == "'" + group_id


def test_page_renders_cjk_and_emoji_names(server, browser, tmp_path):
    browser.get(
        f"http://{REVIEWER}:{PASSWORD.replace(' ', '%20')}@{server.host}:{server.port}/history?q=羽毛球"
    )
    names = [row.find_element(By.CSS_SELECTOR, "td.name").text for row in rows(browser)]
    assert names and all(name == "周末羽毛球 🏸" for name in names)
    assert browser.save_screenshot(str(tmp_path / "history.png"))


LONG_NAME = "Quarterly planning for the big group of regional sales representatives and partners"
LONG_WORD = "Supercalifragilisticexpialidocious" * 3


@pytest.fixture
def crowded(live_server):
    """Events with the longest values Tencent allows: 48-byte custom
    GroupIds, 32-byte accounts, long names with and without spaces, and one
    event of 300 initial members."""
    log = live_server.app.extensions["tim_audit"]
    base = sample_events()[0]
    for n in range(30):
        log.append(
            dataclasses.replace(
                base,
                group_id=f"custom-group-{n:02d}-" + "x" * 32,
                event_time=START + n * 60_000,
                name=[LONG_NAME, LONG_WORD, "big group", "周末羽毛球 🏸 " * 6][n % 4],
                owner="o" * 31 + str(n % 10),
                operator="administrator_with_a_long_name_" + str(n % 10),
                members=tuple(f"member{m:03d}" for m in range(300 if n == 29 else 2)),
            )
        )
    return live_server


def open_at(driver, server, path, width):
    """``path`` in a viewport exactly ``width`` CSS pixels wide."""
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": 900, "deviceScaleFactor": 1, "mobile": False},
    )
    driver.get(
        f"http://{REVIEWER}:{PASSWORD.replace(' ', '%20')}@{server.host}:{server.port}{path}"
    )
    WebDriverWait(driver, 20).until(
        lambda d: d.execute_script("return document.readyState") == "complete"
    )


SIDEWAYS = "return document.documentElement.scrollWidth - document.documentElement.clientWidth"

# Words of Latin-script names that the browser split over two lines.
BROKEN_WORDS = """
const broken = [];
for (const cell of document.querySelectorAll("td.name")) {
  const text = cell.firstChild;
  if (!text || !/^[\\x20-\\x7e]+$/.test(text.data)) continue;
  for (const word of text.data.matchAll(/\\S+/g)) {
    const range = document.createRange();
    range.setStart(text, word.index);
    range.setEnd(text, word.index + word[0].length);
    const tops = new Set([...range.getClientRects()].map(r => Math.round(r.top)));
    if (tops.size > 1) broken.push(word[0]);
  }
}
return broken;
"""


@pytest.mark.parametrize("width", [1024, 1440])
def test_history_fits_the_window_without_breaking_words(crowded, browser, tmp_path, width):
    open_at(browser, crowded, "/history?limit=100", width)
    assert browser.save_screenshot(str(tmp_path / f"history-{width}.png"))
    assert len(rows(browser)) == 30
    assert browser.execute_script(SIDEWAYS) <= 0
    assert browser.execute_script(BROKEN_WORDS) == []
    group = browser.find_element(By.CSS_SELECTOR, "table.events td.group a")
    assert (
        group.get_attribute("title")
        == group.get_attribute("textContent")
        == f"custom-group-29-{'x' * 32}"
    )


@pytest.mark.parametrize("width", [1024, 1440])
def test_event_of_300_members_fits_in_a_compact_list(crowded, browser, tmp_path, width):
    open_at(browser, crowded, "/history/30", width)
    assert browser.save_screenshot(str(tmp_path / f"event-{width}.png"))
    members = browser.find_elements(By.CSS_SELECTOR, "ol.members li")
    assert len(members) == 300 and members[-1].get_attribute("textContent") == "member299"
    assert browser.execute_script(SIDEWAYS) <= 0
    assert browser.execute_script("return document.documentElement.scrollHeight") < 2200
    box = browser.find_element(By.CSS_SELECTOR, "ol.members")
    assert box.size["height"] < 320
    assert browser.execute_script(
        "const [box, first] = arguments; const b = box.getBoundingClientRect(), f = first.getBoundingClientRect();"
        " return f.left >= b.left && f.right <= b.right",
        box,
        members[0],
    )


# --- what a reviewer sees of a realistic log, at both widths -------------------

WIDTHS = [1024, 1440]
# Where the screenshots go: docs/screenshots with SCREENSHOTS=docs/screenshots.
SHOTS = os.environ.get("SCREENSHOTS")


@pytest.fixture
def config(config):
    return {**config, "LOG_ORIGIN": "im-audit.example.com/1400000001"}


@pytest.fixture
def keyed(config):
    """A checkpoint key made with keygen before the app starts."""
    result = create_app(config).test_cli_runner().invoke(args=["keygen"])
    assert result.exit_code == 0, result.output


@pytest.fixture
def reviewed(keyed, live_server):
    """The sample events as send-sample and Tencent name groups, the
    quarantine a misconfigured sender fills, and two signed checkpoints."""
    log = live_server.app.extensions["tim_audit"]
    events = sample_events()
    for number, event in enumerate(events):
        group_id = event.group_id
        if number % 3 == 0:
            group_id = f"@TGS#sample{START + number}"
        elif number % 3 == 1:
            group_id = f"@TGS#2J4SZEAE{chr(65 + number % 26)}"
        members = event.members
        if number == 39:
            members = tuple(f"account_name_{m}" for m in range(1, 33))
        log.append(dataclasses.replace(event, group_id=group_id, members=members))
        if number == 19:
            sign(live_server.app)
    query = urlencode(
        {
            "SdkAppid": "1400000001",
            "CallbackCommand": "Group.CallbackAfterCreateGroup",
            "contenttype": "json",
            "ClientIP": "203.0.113.7",
            "OptPlatform": "RESTAPI",
            "RequestTime": str(START // 1000),
        }
    )
    for number, (code, reason, raw) in enumerate(
        [
            (60021, "the body is not JSON: Expecting value: line 1 column 1 (char 0)", b"<xml/>"),
            (
                0,
                "repeat of event 12 (Group.CallbackAfterCreateGroup, same GroupId and"
                " EventTime) with a different body",
                b'{"n": 1}',
            ),
            (
                60024,
                "invalid fields: Type: Must be one of: Private, Public, ChatRoom,"
                " AVChatRoom, Community, Work, Meeting.",
                b'{"Type": "Secret"}',
            ),
        ]
    ):
        log.append(
            Rejection(
                received_at=START + 9 * DAY + number * 60_000,
                error_code=code,
                reason=reason,
                command="Group.CallbackAfterCreateGroup",
                query=query,
                peer="203.0.113.7",
                content_length=len(raw),
                raw=raw,
            )
        )
    sign(live_server.app)
    return live_server


def sign(app):
    """One round of the notary, as its thread runs it."""
    notary = app.extensions["tim_audit"].notary
    conn = db.connect(notary.path)
    try:
        notary.sign(conn)
    finally:
        conn.close()


def shoot(driver, name, tmp_path):
    folder = pathlib.Path(SHOTS) if SHOTS else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    # The whole page, not just the window.
    height = driver.execute_script("return document.documentElement.scrollHeight")
    width = driver.execute_script("return window.innerWidth")
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
    )
    assert driver.save_screenshot(str(folder / name))


# Where a cell's text wraps, as "before|after", unless it wraps at a space or
# after one of ``marks``: the measured lines of the rendered characters.
BREAKS = """
const [selector, marks] = arguments;
const broken = [];
for (const cell of document.querySelectorAll(selector)) {
  const chars = [];
  const walker = document.createTreeWalker(cell, NodeFilter.SHOW_TEXT);
  for (let node; (node = walker.nextNode()); ) {
    for (let i = 0; i < node.data.length; i++) {
      const range = document.createRange();
      range.setStart(node, i);
      range.setEnd(node, i + 1);
      const rect = range.getClientRects()[0];
      if (rect) chars.push([node.data[i], rect.top, rect.height]);
    }
  }
  const text = chars.map(c => c[0]).join("");
  for (let i = 1; i < chars.length; i++) {
    const [before, top, height] = chars[i - 1], [after, next] = [chars[i][0], chars[i][1]];
    if (next - top > height / 2 && !/\\s/.test(before + after) && !marks.includes(before))
      broken.push(text.slice(0, i) + "|" + text.slice(i));
  }
}
return broken;
"""

# The text of each cell that overflows its box: cut, or ended in an ellipsis.
CUT = """
return [...document.querySelectorAll(arguments[0])]
  .filter(cell => cell.scrollWidth > cell.clientWidth)
  .map(cell => cell.textContent);
"""

# The characters of each cell that show: inside every box that clips them
# (an ellipsis may still cover the last one of a clipped run).
VISIBLE = """
return [...document.querySelectorAll(arguments[0])].map(cell => {
  let shown = "";
  const walker = document.createTreeWalker(cell, NodeFilter.SHOW_TEXT);
  for (let node; (node = walker.nextNode()); ) {
    for (let i = 0; i < node.data.length; i++) {
      const range = document.createRange();
      range.setStart(node, i);
      range.setEnd(node, i + 1);
      const r = range.getBoundingClientRect();
      let inside = r.width > 0;
      for (let box = node.parentElement; inside && box !== cell.parentElement; box = box.parentElement) {
        if (getComputedStyle(box).overflowX === "visible") continue;
        const b = box.getBoundingClientRect();
        inside = r.left >= b.left - 0.5 && r.right <= b.right + 0.5;
      }
      if (inside) shown += node.data[i];
    }
  }
  return [cell.textContent, shown];
});
"""


@pytest.mark.parametrize("width", WIDTHS)
def test_history_shows_types_accounts_and_the_ends_of_ids(reviewed, browser, width):
    open_at(browser, reviewed, "/history", width)
    types = [cell.text for cell in browser.find_elements(By.CSS_SELECTOR, "td.type")]
    assert set(types) == {"Private", "Public", "ChatRoom", "AVChatRoom", "Community"}
    assert browser.execute_script(CUT, "table.events td.type") == []
    assert browser.execute_script(CUT, "table.events td.account") == []
    assert browser.execute_script(BREAKS, "table.events td.account", "_") == []
    assert browser.execute_script(BREAKS, "table.events td.type", "") == []
    assert browser.execute_script(BREAKS, "table.events td.group", "-_.:#@/") == []
    shown = browser.execute_script(VISIBLE, "table.events td.group")
    # The ids of send-sample differ only in their last digits.
    assert "@TGS#sample1772323200039" in {text for text, _ in shown}
    assert all(visible.endswith(text[-8:]) for text, visible in shown)
    assert len({visible for _, visible in shown}) == len({text for text, _ in shown})


@pytest.mark.parametrize("width", WIDTHS)
def test_long_ids_stay_apart_and_accounts_wrap_at_underscores(crowded, browser, width):
    open_at(browser, crowded, "/history?limit=100", width)
    shown = browser.execute_script(VISIBLE, "table.events td.group")
    assert len(shown) == 30
    assert len({visible for _, visible in shown}) == 30
    assert browser.execute_script(BREAKS, "table.events td.account", "_") == []
    assert browser.execute_script(BREAKS, "table.events td.group", "-_.:#@/") == []


@pytest.mark.parametrize("width", WIDTHS)
def test_quarantine_wraps_queries_at_ampersands_only(reviewed, browser, width):
    open_at(browser, reviewed, "/quarantine", width)
    assert len(browser.find_elements(By.CSS_SELECTOR, ".quarantine code.query")) == 3
    assert browser.execute_script(SIDEWAYS) <= 0
    assert browser.execute_script(BREAKS, ".quarantine code.query", "&") == []
    assert browser.execute_script(BREAKS, ".quarantine td.reason", ".") == []


@pytest.mark.parametrize("width", WIDTHS)
def test_event_wraps_accounts_at_underscores_in_a_steady_grid(reviewed, browser, width):
    open_at(browser, reviewed, "/history/40", width)
    command, *_ = browser.find_elements(By.CSS_SELECTOR, "dl dd")
    assert command.text == "Group.CallbackAfterCreateGroup"
    assert browser.execute_script(BREAKS, "section:first-child > dl > dd:first-of-type", ".") == []
    assert browser.execute_script(BREAKS, "dd a", "_") == []
    assert browser.execute_script(BREAKS, "ol.members li", "_") == []
    members = browser.find_elements(By.CSS_SELECTOR, "ol.members li")
    assert len(members) == 32
    # As many in each row, whether their numbers have one digit or two.
    places = [(member.location["y"], member.location["x"]) for member in members]
    columns = [y for y, _ in places].count(places[0][0])
    rows = len(members) // columns
    lefts = [x for _, x in places]
    assert columns > 1 and lefts[: columns * rows] == lefts[:columns] * rows


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize(
    "name, path",
    [
        ("history", "/history"),
        ("event", "/history/40"),
        ("quarantine", "/quarantine"),
        ("checkpoints", "/checkpoints"),
    ],
)
def test_screens(reviewed, browser, tmp_path, name, path, width):
    open_at(browser, reviewed, path, width)
    shoot(browser, f"{name}-{width}.png", tmp_path)
