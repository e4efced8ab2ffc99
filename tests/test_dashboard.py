"""The dashboard end to end in a real headless Chromium (Debian's chromium + chromedriver through
Selenium): every page with a screenshot checked for its content, the evolution browser's filter,
search and example page, CSV/JSON export, rollback with its confirmation, the live page updating
during a real sleep on the tiny model and its pause / stop buttons, and the host guard."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest
from conftest import CLI, ROOT, run_cli, say

from circadian.night import control
from circadian.store import adapters, memory_index

pytestmark = pytest.mark.skipif(
    shutil.which("chromium") is None or shutil.which("chromedriver") is None,
    reason="chromium and chromedriver are installed by `make test`",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_dashboard(port: int, *args: str, url: str = "") -> subprocess.Popen:
    """Start `circadian dashboard --port PORT ARGS` and wait until it answers (any HTTP status)."""
    process = subprocess.Popen(
        [*CLI, "dashboard", "--port", str(port), *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url or f"http://127.0.0.1:{port}/", timeout=2)
            break
        except urllib.error.HTTPError:
            break
        except OSError:
            time.sleep(0.2)
    return process


@pytest.fixture
def server(night):
    port = free_port()
    process = start_dashboard(port)
    yield f"http://127.0.0.1:{port}"
    process.terminate()
    process.wait(10)


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,900",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    driver.implicitly_wait(2)
    yield driver
    driver.quit()


def screenshot_shows(driver, tmp_path, name: str, *texts: str) -> None:
    """Save a screenshot, check it is a real rendering (not blank), and that the page shows the texts."""
    from PIL import Image

    path = tmp_path / f"{name}.png"
    assert driver.save_screenshot(str(path))
    image = Image.open(path).convert("L")
    assert image.size[0] >= 1000 and len(image.getcolors(maxcolors=256)) > 20, f"{name}: blank screenshot"
    body = driver.find_element("tag name", "body").text
    for text in texts:
        assert text in body, f"{name}: {text!r} not on the page"


def wait_until(predicate, timeout=60, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if predicate():
                return
        except Exception:  # the page may be between renders
            pass
        time.sleep(0.3)
    raise AssertionError(f"timed out: {what}")


def submit_filter(driver, query_part: str) -> list:
    """Submit the evolution filter form (a GET form: the click navigates) and return the new table's rows
    once the new page is there: the old table gone stale and the address carrying the query."""
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    old_table = driver.find_element("id", "table-evolution")
    driver.find_element("css selector", "#filter button").click()
    WebDriverWait(driver, 20).until(expected_conditions.staleness_of(old_table))
    wait_until(
        lambda: query_part in driver.current_url and driver.find_element("id", "table-evolution"),
        20,
        "the filtered page",
    )
    return driver.find_elements("css selector", "#table-evolution tr")[1:]


def test_pages_export_evolution_and_rollback(night, server, browser, tmp_path):
    from selenium.webdriver.support.ui import Select

    say(night, "My dog is called Biscuit.", "My sister Lena lives in Trondheim.")
    first = json.loads(run_cli("sleep", "--json").stdout)
    assert first["outcome"] == "promoted"
    assert run_cli(
        "cycles",
        "run",
        "-n",
        "1",
        "--policy",
        "random",
        "--budget",
        "tiny",
        "--no-generate",
        "--sources",
        "today,replay",
    ).returncode in (0, 1)  # replay may have no data yet: still a page
    with night.choice_log.open("a") as log:
        log.write("{broken\n")

    browser.get(server + "/")
    screenshot_shows(browser, tmp_path, "overview", "Overview", "current adapter", first["version"], "Queue")
    browser.get(server + "/knowledge")
    screenshot_shows(browser, tmp_path, "knowledge", "What it learned", "messages with something about you")
    assert "Biscuit" in browser.find_element("id", "table-coverage").text
    from circadian.night.report import capability_changes, load

    figures = browser.find_element("id", "general-figures").text
    assert "capability" in figures and "style check" in figures and "router:" in figures
    changes = capability_changes(load(night.runs / first["cycle_id"])[0])
    shown = [
        row.text for key in ("broke", "fixed") for row in browser.find_elements("css selector", f"#table-{key} tr")[1:]
    ]
    assert len(shown) == len(changes)  # every changed general answer is listed, broken or fixed
    browser.get(server + "/live")
    wait_until(lambda: "cycle" in browser.find_element("id", "live-status").text, 20, "the live status")
    screenshot_shows(browser, tmp_path, "live", "Live training", "Pause", "not running")

    browser.get(server + "/evolution")
    screenshot_shows(browser, tmp_path, "evolution", "Learning evolution", "Forgetting across nights")
    rows = browser.find_elements("css selector", "#table-evolution tr")
    assert len(rows) > 2
    Select(browser.find_element("name", "category")).select_by_value("not learned")
    categories = [r.find_elements("tag name", "td")[1].text for r in submit_filter(browser, "category=not+learned")]
    assert all(c == "not learned" for c in categories)
    browser.find_element("name", "search").send_keys("Biscuit")
    Select(browser.find_element("name", "category")).select_by_value("")
    texts = [r.text for r in submit_filter(browser, "search=Biscuit")]
    assert texts and all("biscuit" in t.lower() for t in texts)
    browser.find_element("css selector", "#table-evolution tr td a").click()
    wait_until(lambda: browser.find_elements("css selector", "#example-curve svg path"), 10, "the example's loss curve")
    screenshot_shows(browser, tmp_path, "example", "question", "expected", "loss by snapshot")
    export = browser.find_element("partial link text", "CSV").get_attribute("href")
    assert urllib.request.urlopen(export).read().decode().splitlines()[0] == "answer,hit,loss,step"

    browser.get(server + "/cycles")
    screenshot_shows(browser, tmp_path, "cycles", "Cycles", "Debug: integrity", "Broken lines")
    assert "choice_log" in browser.find_element("id", "table-broken").text
    assert "parsed" in browser.find_element("id", "integrity-counts").text
    csv_text = urllib.request.urlopen(server + "/api/table/cycles.csv").read().decode()
    assert csv_text.splitlines()[0].startswith("cycle_id,run_type") and first["cycle_id"] in csv_text
    as_json = json.loads(urllib.request.urlopen(server + "/api/table/adapters.json").read())
    assert as_json[0]["version"] == first["version"] and as_json[0]["current"] is True

    browser.get(server + "/memory")  # the graduation ledger: each fact, graduated or not, and the nights it took
    screenshot_shows(browser, tmp_path, "memory", "Memory", "graduates", "facts have graduated")
    ledger_rows = json.loads(urllib.request.urlopen(server + "/api/table/ledger.json").read())
    shown = browser.find_element("id", "table-ledger").text
    assert ledger_rows and all(r["fact"] in shown and r["status"] in shown for r in ledger_rows)
    asked = json.loads((night.adapters / first["version"] / "graduation.json").read_text())
    hits = {a["fact"]: True for a in asked}
    for a in asked:  # a statement asked twice graduates when both are answered
        hits[a["fact"]] &= a["hit"]
    assert {r["fact"] for r in ledger_rows if r["graduated"]} == {
        e.text for e in memory_index.facts(night) if hits.get(e.fact)
    }

    browser.get(server + "/adapters")
    screenshot_shows(browser, tmp_path, "adapters", "Adapters", "Compare", "Rollback", first["version"])
    Select(browser.find_element("css selector", "#rollback select")).select_by_value("base")
    browser.find_element("css selector", "#rollback button").click()
    alert = browser.switch_to.alert
    assert "Make base the current adapter?" in alert.text
    alert.dismiss()  # cancelled: nothing changes
    assert adapters.current_version(night) == first["version"]
    browser.find_element("css selector", "#rollback button").click()
    browser.switch_to.alert.accept()
    wait_until(lambda: "now current" in browser.find_element("id", "message").text, 10, "the rollback message")
    assert adapters.current_version(night) is None


def test_live_page_follows_a_real_sleep_and_its_buttons_steer_it(paths, tiny_model, server, browser, tmp_path):
    from test_night_shift import LONG

    paths.config.write_text(LONG.format(model=tiny_model))
    say(paths, "My dog is called Biscuit.")
    sleeper = subprocess.Popen(
        [*CLI, "sleep", "--json"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        browser.get(server + "/live")
        wait_until(lambda: int(browser.find_element("id", "live-step").text) >= 2, 180, "training steps on the page")
        first = int(browser.find_element("id", "live-step").text)
        wait_until(lambda: int(browser.find_element("id", "live-step").text) > first + 2, 60, "the page to update")
        points = int(browser.find_element("id", "loss-chart").get_attribute("data-points"))
        assert points >= 3
        screenshot_shows(browser, tmp_path, "live-running", "step", "tokens/s", "ETA")
        browser.find_element("id", "btn-pause").click()
        wait_until(lambda: browser.find_element("id", "ctl-result").text == "pause requested", 20, "the pause request")
        wait_until(lambda: browser.find_element("id", "live-state").text == "paused", 60, "paused on the page")
        assert control.read_status(paths.control).state == "paused"
        browser.find_element("id", "btn-stop").click()
        wait_until(lambda: browser.find_element("id", "ctl-result").text == "stop requested", 20, "the stop request")
        out, err = sleeper.communicate(timeout=120)
    finally:
        if sleeper.poll() is None:
            sleeper.kill()
    assert json.loads(out)["outcome"] == "stopped", err[-2000:]
    wait_until(lambda: "not running" in browser.find_element("id", "live-status").text, 20, "the end on the page")


def test_only_local_hosts_are_served(paths, server):
    request = urllib.request.Request(server + "/", headers={"Host": "attacker.example"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request)
    assert refused.value.code == 400
    post = urllib.request.Request(server + "/api/ctl/stop", method="POST")
    with pytest.raises(urllib.error.HTTPError) as forbidden:
        urllib.request.urlopen(post)
    assert forbidden.value.code == 403
    port = free_port()
    exposed = subprocess.Popen(
        [*CLI, "dashboard", "--host", "0.0.0.0", "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert "warning: serving on 0.0.0.0" in exposed.stderr.readline()
    finally:
        exposed.terminate()
        exposed.wait(10)


def status_of(request: urllib.request.Request) -> tuple[int, dict]:
    """Send a request without following redirects; return (status, headers)."""

    class Stay(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    try:
        with urllib.request.build_opener(Stay).open(request, timeout=10) as response:
            return response.status, dict(response.headers)
    except urllib.error.HTTPError as refused:
        return refused.code, dict(refused.headers)


def test_the_doors_refuse_other_ports_paths_and_tokenless_requests(paths, server, tmp_path):
    from test_store import _version

    first = _version(paths, 1)
    second = _version(paths, 2, parent=first)
    adapters.set_current(paths, second, reason="test")
    port = int(server.rsplit(":", 1)[1])

    def rollback(origin: str, version: str = "") -> int:
        body = f"version={urllib.parse.quote(version)}".encode()
        request = urllib.request.Request(server + "/api/rollback", data=body, method="POST", headers={"Origin": origin})
        return status_of(request)[0]

    # another page on this machine, on another port or scheme, cannot make a version current
    for origin in (f"http://127.0.0.1:{port + 1}", f"https://127.0.0.1:{port}", "http://localhost", "null"):
        assert rollback(origin) == 403, origin
        assert adapters.current_version(paths) == second
    ctl = urllib.request.Request(
        server + "/api/ctl/stop", method="POST", headers={"X-Circadian": "1", "Origin": f"http://127.0.0.1:{port + 1}"}
    )
    assert status_of(ctl)[0] == 403
    # a planted adapter outside the store, by absolute path or by climbing out, is not a version
    planted = tmp_path / "planted"
    shutil.copytree(paths.adapters / first, planted)
    for target in (str(planted), f"{first}/../../../{planted.relative_to(planted.anchor)}", "v1/../.."):
        assert rollback(f"http://127.0.0.1:{port}", target) == 303
        assert adapters.current_version(paths) == second
    with pytest.raises(Exception, match="no adapter version"):
        adapters.get(paths, str(planted))
    (paths.home / "summary.json").write_text(json.dumps({"cycle_id": "planted", "knowledge": {"coverage": [{}]}}))
    assert json.loads(urllib.request.urlopen(server + "/api/table/coverage.json?cycle=../..").read()) == []
    # the page itself can
    assert rollback(f"http://127.0.0.1:{port}", "base") == 303
    assert adapters.current_version(paths) is None


def test_ipv6_loopback_is_served(night):
    port = free_port()
    process = start_dashboard(port, "--host", "::1", url=f"http://[::1]:{port}/")
    try:
        page = urllib.request.urlopen(f"http://[::1]:{port}/", timeout=10)
        assert page.status == 200 and "Overview" in page.read().decode()
    finally:
        process.terminate()
        process.wait(10)


def test_any_other_host_needs_the_token(night):
    port = free_port()
    process = start_dashboard(port, "--host", "0.0.0.0")
    try:
        token_file = night.control / "dashboard.token"
        assert token_file.stat().st_mode & 0o777 == 0o600
        token = token_file.read_text().strip()
        base = f"http://127.0.0.1:{port}/"
        assert status_of(urllib.request.Request(base))[0] == 401
        assert status_of(urllib.request.Request(base + "?token=wrong"))[0] == 401
        status, headers = status_of(urllib.request.Request(base + "?token=" + token))
        assert status == 200 and "HttpOnly" in headers["set-cookie"]
        cookie = headers["set-cookie"].split(";")[0]
        assert status_of(urllib.request.Request(base + "adapters", headers={"Cookie": cookie}))[0] == 200
        assert status_of(urllib.request.Request(base, headers={"Cookie": "circadian_token=wrong"}))[0] == 401
    finally:
        process.terminate()
        out, err = process.communicate(timeout=10)
    assert token in err  # printed once, when generated
    again = start_dashboard(port, "--host", "0.0.0.0")
    try:
        assert status_of(urllib.request.Request(f"http://127.0.0.1:{port}/?token=" + token))[0] == 200
    finally:
        again.terminate()
        _out, err = again.communicate(timeout=10)
    assert token not in err
