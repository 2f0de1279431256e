"""``celeriac dashboard`` and ``celeriac worker --dashboard`` driven in a real browser (Debian's
chromium through chromedriver, with Selenium): each page renders the seeded data, each action
changes the database as it says, read-only mode and cross-site posts are refused, a request
without credentials is refused. Screenshots of the overview and a task page are saved with the
test's files (not committed) and their paths printed.
"""

from __future__ import annotations

import base64
import re
import shutil
import socket
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement

from tools.celeriac_testkit import LoggedProcess, wait_for
from tools.sample_proj import RESULT_TIMEOUT, Proj, ProjWorker

AUTH = ("admin", "pa55word")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _request(
    url: str, method: str = "GET", data: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, str]:
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except urllib.error.URLError as e:  # not listening yet
        return 0, str(e.reason)


def _basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


class Dashboard(LoggedProcess):
    KIND = "celeriac dashboard"


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    chromium = shutil.which("chromium")
    driver_path = shutil.which("chromedriver")
    assert chromium, "chromium is installed by scripts/install-deps"
    assert driver_path, "chromedriver is installed by scripts/install-deps"
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver_path))
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


@pytest.fixture
def dashboard(celeriac_bin: Path, proj: Proj, tmp_path: Path) -> Iterator[Callable[..., str]]:
    """Factory: ``celeriac dashboard`` on a free port with `args`; returns its base URL."""
    started: list[Dashboard] = []

    def start(*args: str) -> str:
        port = _free_port()
        argv = [str(celeriac_bin), "dashboard", "--database-url", proj.database_url, "--port", str(port), *args]
        process = Dashboard(argv, tmp_path / f"dashboard{len(started)}.log", env=proj.env)
        started.append(process)
        base = f"http://127.0.0.1:{port}"
        process.wait_for(lambda: _request(f"{base}/healthz")[0] == 200, 30, "the dashboard to answer")
        return base

    yield start
    for process in started:
        process.stop()


def _cell_texts(driver: WebDriver, table_id: str) -> list[list[str]]:
    rows = driver.find_elements(By.CSS_SELECTOR, f"#{table_id} tbody tr")
    return [[td.text for td in row.find_elements(By.TAG_NAME, "td")] for row in rows]


def _row(driver: WebDriver, table_id: str, first: str) -> list[str]:
    return next((r for r in _cell_texts(driver, table_id) if r and r[0] == first), [])


def _submit(driver: WebDriver, element: WebElement) -> str:
    """Clicks `element` (a form's button) and returns the message of the page it leads to."""
    page = driver.find_element(By.TAG_NAME, "html")
    element.click()

    def left() -> bool:
        # The old page's root is gone once the next page has loaded. Chromium reports that as a
        # stale element, or, mid-navigation, as an inspector error: both mean the same here.
        try:
            page.is_enabled()
        except WebDriverException:
            return True
        return False

    wait_for(left, 10, "the page the action leads to")
    flash = wait_for(lambda: driver.find_elements(By.ID, "flash"), 10, "the action's message")
    text: str = flash[0].text
    return text


def _click(driver: WebDriver, xpath: str) -> str:
    """Clicks the element at `xpath` and returns the message of the page it leads to."""
    return _submit(driver, driver.find_element(By.XPATH, xpath))


def test_every_page_and_action_in_a_browser(
    proj: Proj,
    proj_worker: Callable[..., ProjWorker],
    dashboard: Callable[..., str],
    browser: WebDriver,
    celeriac_bin: Path,
    tmp_path: Path,
) -> None:
    # Seed: messages in queues no worker consumes yet, a delayed one, a schedule.
    idle = [proj.app.send_task("proj.tasks.add", args=(i, i), queue="idle") for i in range(3)]
    later = proj.app.send_task("proj.tasks.add", args=(5, 5), queue="idle", countdown=3600)
    junk = [proj.app.send_task("proj.tasks.noop", queue="junk") for _ in range(2)]
    subprocess.run(
        [str(celeriac_bin), "schedule", "add", "nightly", "--task", "proj.tasks.noop", "--every", "3600",
         "--database-url", proj.database_url],
        check=True, capture_output=True,
    )  # fmt: skip
    base = dashboard("--basic-auth", ":".join(AUTH))
    authed = base.replace("http://", f"http://{AUTH[0]}:{AUTH[1]}@")

    # Without credentials: pages and actions refused, nothing changed; probes stay open.
    assert _request(f"{base}/")[0] == 401
    assert _request(f"{base}/queues/idle/pause", "POST", b"reason=x")[0] == 401
    assert _request(f"{base}/queues/idle/pause", "POST", b"", _basic("admin", "wrong"))[0] == 401
    assert proj.query("select count(*) from celeriac.queue_paused") == [(0,)]
    assert _request(f"{base}/readyz") == (200, "ready\n")
    # A post another site's page makes: refused even with the browser's credentials.
    cross = {**_basic(*AUTH), "Origin": "http://evil.example", "Content-Type": "application/x-www-form-urlencoded"}
    status, body = _request(f"{base}/queues/idle/pause", "POST", b"", cross)
    assert status == 403
    assert "another site" in body
    assert proj.query("select count(*) from celeriac.queue_paused") == [(0,)]

    # Queues: pause idle before any worker consumes it.
    browser.get(f"{authed}/queues")
    assert _row(browser, "queues", "idle")[1:3] == ["3", "1"]
    assert _click(browser, "//tr[td[1]='idle']//button[text()='Pause']") == "Paused idle."
    assert proj.query("select queue, reason from celeriac.queue_paused") == [("idle", None)]
    assert "paused" in _row(browser, "queues", "idle")[7]

    # A worker that consumes idle runs other work, but none of idle's messages while it is paused.
    worker = proj_worker(extra_args=["-Q", "celery,idle"])
    assert proj.get(proj.send("add", 2, 3)) == 5
    failed = proj.send("fail", "boom")
    proj.get(failed)
    unknown = proj.app.send_task("proj.tasks.does_not_exist")
    proj.get(unknown)
    assert all(r.state == "PENDING" for r in idle)
    ready_idle = "select count(*) from celeriac.message where queue = 'idle' and leased_by is null and eta <= now()"
    assert proj.query(ready_idle) == [(3,)]
    browser.get(f"{authed}/queues")
    assert _click(browser, "//tr[td[1]='idle']//button[text()='Resume']") == "Resumed idle."
    assert [proj.get(r) for r in idle] == [0, 2, 4]
    assert proj.query("select count(*) from celeriac.queue_paused") == [(0,)]

    # Purge asks for the name: a wrong one deletes nothing, the right one deletes junk's messages.
    browser.get(f"{authed}/queues/junk/purge")
    browser.find_element(By.NAME, "confirm").send_keys("jnuk")
    assert "did not match" in _click(browser, "//form[@id='purge']//button")
    assert proj.query("select count(*) from celeriac.message where queue = 'junk'") == [(2,)]
    browser.find_element(By.NAME, "confirm").send_keys("junk")
    assert _click(browser, "//form[@id='purge']//button") == "Purged 2 message(s) from junk."
    assert proj.query("select count(*) from celeriac.message where queue = 'junk'") == [(0,)]
    assert all(r.state == "PENDING" for r in junk)

    # Overview: counts, workers alive, the chart once the worker has written its counts. The page
    # reads the chart's series before the per-task table, so a count flush between the two reads
    # gives a table ahead of the chart: wait for a page where both hold every task that ended.
    def charted() -> bool:
        browser.get(f"{authed}/")
        rows = _cell_texts(browser, "tasks-by-name")
        caption = browser.find_element(By.CSS_SELECTOR, "#throughput figcaption").text
        return (
            ["proj.tasks.add", "idle", "3"] in [r[:3] for r in rows]
            and any(r[:2] == ["proj.tasks.fail", "celery"] and r[3] == "1" for r in rows)
            and "4 succeeded, 1 failed (failure rate 20.0 %)" in caption
        )

    wait_for(charted, RESULT_TIMEOUT, "the worker's task counts on the chart")
    assert browser.find_element(By.ID, "workers-alive").text.startswith("Workers alive: 1")
    assert _row(browser, "queues", "idle")[1:3] == ["0", "1"]
    assert browser.find_elements(By.CSS_SELECTOR, "#throughput rect")
    assert ["proj.tasks.add", "celery", "1"] in [r[:3] for r in _cell_texts(browser, "tasks-by-name")]
    overview_png = tmp_path / "dashboard-overview.png"
    browser.save_screenshot(str(overview_png))

    # Tasks: search by name finds the results; a failed task shows its traceback.
    browser.get(f"{authed}/tasks?name=proj.tasks.fail&state=FAILURE&until=2999-01-01T00:00")
    assert browser.find_elements(By.ID, "queued") == []  # a result state searches results only
    browser.get(f"{authed}/tasks?name=proj.tasks.fail&since=2999-01-01T00:00")
    assert _cell_texts(browser, "results") == []
    browser.get(f"{authed}/tasks?name=proj.tasks.fail&since=2000-01-01T00:00")
    assert any(r[0] == failed.id and r[1] == "FAILURE" for r in _cell_texts(browser, "results"))
    browser.find_element(By.LINK_TEXT, failed.id).click()
    wait_for(lambda: browser.find_elements(By.ID, "result-state"), 10, "the task page")
    assert browser.find_element(By.ID, "result-state").text == "FAILURE"
    assert "boom" in browser.find_element(By.ID, "traceback").text
    assert "proj.tasks.fail" in browser.page_source
    task_png = tmp_path / "dashboard-task.png"
    browser.save_screenshot(str(task_png))

    # Retry the failure: sent again under its id, it runs (and fails) again.
    ((done_before,),) = proj.query("select date_done from celery_taskmeta where task_id = %s", failed.id)
    resent = _click(browser, "//button[starts-with(text(), 'Retry')]")
    assert resent == f"Sent proj.tasks.fail[{failed.id}] again to celery."
    ran_again = "select date_done > %s, status from celery_taskmeta where task_id = %s"
    wait_for(
        lambda: proj.query(ran_again, done_before, failed.id) == [(True, "FAILURE")],
        RESULT_TIMEOUT,
        "the failed task to run again",
    )

    # The delayed message: its envelope and body; revoking it records the revocation.
    browser.get(f"{authed}/tasks?id={later.id}")
    wait_for(lambda: browser.find_elements(By.ID, "state"), 10, "the delayed message's page")
    assert browser.find_element(By.ID, "state").text == "delayed"
    assert browser.find_element(By.ID, "body").text.startswith("[[5, 5], {}, ")
    assert later.id in browser.find_element(By.ID, "envelope").text
    assert _click(browser, "//button[text()='Revoke']") == f"Revoked {later.id}."
    assert proj.query("select terminate from celeriac.revoked where task_id = %s", later.id) == [(False,)]
    browser.get(f"{authed}/tasks?state=delayed&queue=idle")
    assert [r[1] for r in _cell_texts(browser, "queued")] == [later.id]

    # Dead letters: filtered by reason; retrying the task puts it back, and the worker (which
    # still does not know the task) dead-letters it again under a new row.
    browser.get(f"{authed}/dead-letters?reason=not_registered")
    rows = _cell_texts(browser, "dead-letters")
    assert [r[4] for r in rows] == [unknown.id]
    (first_row,) = proj.query("select id from celeriac.dead_letter where task_id = %s", unknown.id)
    browser.get(f"{authed}/tasks/{unknown.id}")
    retried = _click(browser, "//button[starts-with(text(), 'Retry')]")
    assert retried == f"Put 1 message(s) of {unknown.id} back in their queue."
    newer = "select id from celeriac.dead_letter where task_id = %s and id > %s"
    wait_for(
        lambda: proj.query(newer, unknown.id, first_row[0]),
        RESULT_TIMEOUT,
        "the retried task to come back as a new dead letter",
    )
    # Purge what a filter matches, only with the box ticked.
    browser.get(f"{authed}/dead-letters?reason=not_registered")
    assert "I mean it" in _click(browser, "//form[@id='purge']//button")
    assert proj.query("select count(*) from celeriac.dead_letter") == [(1,)]
    browser.find_element(By.CSS_SELECTOR, "#purge input[name=confirm]").click()
    assert _click(browser, "//form[@id='purge']//button") == "Deleted 1 dead letter(s)."
    assert proj.query("select count(*) from celeriac.dead_letter") == [(0,)]

    # One dead letter redriven from its own page: only it goes back to its queue.
    proj.query(
        """insert into celeriac.dead_letter (queue, task_name, task_id, payload, reason_code, reason)
           select 'parked_q', task_name, task_id, payload, 'rejected', 'seeded ' || g
           from celeriac.message, generate_series(1, 2) g where task_id = %s returning id""",
        later.id,
    )
    (one, other) = [
        r[0] for r in proj.query("select id from celeriac.dead_letter where queue = 'parked_q' order by id")
    ]
    browser.get(f"{authed}/dead-letters/{one}")
    assert "seeded 1" in browser.page_source
    assert _click(browser, "//button[text()='Redrive this one']") == "Put 1 dead letter(s) back in their queues."
    assert proj.query("select id from celeriac.dead_letter where queue = 'parked_q'") == [(other,)]
    assert proj.query("select count(*) from celeriac.message where queue = 'parked_q'") == [(1,)]

    # Schedules: pause, resume, run now.
    browser.get(f"{authed}/schedules")
    assert _row(browser, "schedules", "nightly")[1] == "proj.tasks.noop"
    assert re.search(r"Migration ramp: \d+ %", browser.find_element(By.ID, "ramp").text)
    assert _click(browser, "//tr[td[1]='nightly']//button[text()='Pause']") == "Paused nightly."
    assert proj.query("select paused from celeriac.schedule where name = 'nightly'") == [(True,)]
    assert _click(browser, "//tr[td[1]='nightly']//button[text()='Resume']") == "Resumed nightly."
    assert proj.query("select paused from celeriac.schedule where name = 'nightly'") == [(False,)]
    message = _click(browser, "//tr[td[1]='nightly']//button[text()='Run now']")
    assert message.startswith("Sent nightly now (task id ")
    sent_id = message.rsplit(" ", 1)[1].rstrip(").")
    wait_for(
        lambda: proj.query("select status from celery_taskmeta where task_id = %s", sent_id) == [("SUCCESS",)],
        RESULT_TIMEOUT,
        "the schedule's task to run",
    )

    # Workers.
    browser.get(f"{authed}/workers")
    (row,) = _cell_texts(browser, "workers")
    assert row[0].startswith("proj1@")
    assert "idle" in row[2]
    assert row[3] == "2"

    # Metrics (no credentials needed), parsed with the Prometheus parser.
    status, text = _request(f"{base}/metrics")
    assert status == 200
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("celeriac_queue_delayed", (("queue", "idle"),))] == 1
    assert samples[("celeriac_queue_paused", (("queue", "idle"),))] == 0

    worker.assert_running()
    assert overview_png.stat().st_size > 10_000
    assert task_png.stat().st_size > 10_000
    print(f"dashboard screenshots: {overview_png} {task_png}")


def test_a_worker_serves_a_read_only_dashboard(
    proj: Proj, proj_worker: Callable[..., ProjWorker], browser: WebDriver
) -> None:
    port = _free_port()
    proj.app.send_task("proj.tasks.add", args=(1, 1), queue="waiting")
    proj_worker(extra_args=["--dashboard", str(port), "--read-only"])
    base = f"http://127.0.0.1:{port}"
    browser.get(f"{base}/queues")
    assert "read-only" in browser.find_element(By.TAG_NAME, "nav").text
    assert _row(browser, "queues", "waiting")[1] == "1"
    assert browser.find_elements(By.TAG_NAME, "button") == []
    status, body = _request(f"{base}/queues/waiting/pause", "POST", b"")
    assert status == 403
    assert "read-only" in body
    assert _request(f"{base}/queues/waiting/purge", "POST", b"confirm=waiting")[0] == 403
    assert proj.query("select count(*) from celeriac.queue_paused") == [(0,)]
    assert proj.query("select count(*) from celeriac.message where queue = 'waiting'") == [(1,)]
    browser.get(f"{base}/")
    assert browser.find_element(By.ID, "workers-alive").text.startswith("Workers alive: 1")
    # Without credentials only a loopback Host is served (a DNS name re-pointed at 127.0.0.1
    # gets nothing), and no page may be framed by another site's.
    assert _request(f"{base}/queues", headers={"Host": f"evil.example:{port}"})[0] == 403
    with urllib.request.urlopen(f"{base}/queues", timeout=10) as response:
        assert response.headers["X-Frame-Options"] == "DENY"
        assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]


def test_the_queue_command_pauses_resumes_and_lists(proj: Proj, celeriac_bin: Path) -> None:
    def run(*args: str) -> str:
        out = subprocess.run(
            [str(celeriac_bin), "queue", *args, "--database-url", proj.database_url],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        return out.stdout

    proj.app.send_task("proj.tasks.add", args=(1, 1), queue="q1")
    assert "paused q1" in run("pause", "q1", "--reason", "maintenance")
    assert "was paused already" in run("pause", "q1")
    listed = run("list")
    (line,) = [x for x in listed.splitlines() if x.startswith("q1 ")]
    assert line.split()[1] == "1"
    assert "(maintenance)" in line
    assert "would be deleted" in run("purge", "q1")
    assert proj.query("select count(*) from celeriac.message where queue = 'q1'") == [(1,)]
    assert run("resume", "q1").strip() == "resumed q1"
    assert run("purge", "q1", "--yes").strip() == "purged 1 message(s) from q1"
