"""A reviewer's session in a real browser: headless Chromium driven by
selenium against the app under waitress."""

import csv
import dataclasses
import io
import time
from urllib.parse import parse_qs, urlsplit

import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.wait import WebDriverWait

from conftest import require
from dashboard import PASSWORD, REVIEWER, START, sample_events


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
    log._write(
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
    group = browser.find_element(By.CSS_SELECTOR, "table.events td.clip a")
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
