"""The dashboard end to end: ``attn-probe dashboard RUN`` serves the app, headless Chromium renders it.

It checks what no AppTest can: the page a browser draws shows the run's most misleading example and its findings,
and a token that is an HTML payload is drawn as text, never as markup (no element, no script run). Selenium drives
Debian's chromium + chromium-driver (``.ci/run`` installs them); it never downloads a browser or a driver.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import (
    NoAlertPresentException,
    NoSuchFrameException,
    StaleElementReferenceException,
    TimeoutException,
    UnexpectedAlertPresentException,
)
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from attn_probe import Probe
from attn_probe.report import example_statements, misleading_ranking
from attn_probe.store import load_run

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
PAYLOAD = "<img src=x onerror=alert(1)>"
TEXTS = ["a gorgeous, witty movie", "dull and slow", f"great film {PAYLOAD} truly", "superb acting"]
METHODS = ["raw_attention", "attention_rollout", "leave_one_out"]
SERVER_START_S = 60
PAGE_RENDER_S = 90


# ------------------------------------------------------------------------------------------------------
# a run with a payload token, served by attn-probe dashboard
# ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def payload_run(tmp_path_factory, tokenizer, tiny_bert) -> Path:
    """A run of the tiny BERT on four texts; in one, an HTML payload the tokenizer keeps as one token."""
    root = tmp_path_factory.mktemp("dashboard")
    tokenizer.add_tokens([PAYLOAD])  # an added token matches literally, spaces included: one token, unsplit
    tiny_bert.resize_token_embeddings(len(tokenizer), mean_resizing=False)  # random rows: a random model
    # The model directory beside the run is what `attn-probe run --model` takes: the run can be redone by hand.
    tiny_bert.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    assert PAYLOAD in tokenizer.tokenize(TEXTS[2])
    Probe(tiny_bert, tokenizer, name="tiny").run(TEXTS, root / "run", methods=METHODS, progress=False)
    return root / "run"


@pytest.fixture(scope="module")
def served(payload_run, tmp_path_factory) -> Iterator[str]:
    """The dashboard of the run, for every test of the module (one server start); its address."""
    with dashboard(payload_run, tmp_path_factory.mktemp("server") / "dashboard.log") as url:
        yield url


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def dashboard(run: Path, log: Path) -> Iterator[str]:
    """``attn-probe dashboard RUN`` on a free port until the block ends, then Ctrl-C; yields its address."""
    port = free_port()
    command = [sys.executable, "-m", "attn_probe.cli", "dashboard", str(run), "--port", str(port)]
    # the repository root as working directory finds dashboards/ even where the editable install predates it
    env = {**os.environ, "STREAMLIT_SERVER_FILE_WATCHER_TYPE": "none"}  # nothing to reload: spare the 2 cores
    with log.open("w") as stream:  # a file, not a pipe: a chatty server never blocks on a full pipe
        # its own process group: Ctrl-C reaches the command and Streamlit as in a terminal, and nothing outlives us
        with interruptible():
            server = subprocess.Popen(
                command, cwd=REPO, env=env, stdout=stream, stderr=subprocess.STDOUT, start_new_session=True
            )
        try:
            wait_healthy(server, port, log)
            yield f"http://127.0.0.1:{port}"
        finally:
            code = stop(server)
    assert code == 130, f"attn-probe dashboard did not stop on Ctrl-C with 130 but {code}:\n{log.read_text()}"


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """Children started inside take Ctrl-C as a terminal's foreground job does. A shell's background job (a CI
    script's ``make test &``) ignores SIGINT, and an ignored signal stays ignored across exec; a handled one is
    reset to the default, which Python turns into KeyboardInterrupt."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def wait_healthy(server: subprocess.Popen, port: int, log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"attn-probe dashboard exited with {server.returncode}:\n{log.read_text()}")
        if health(port) == "ok":
            return
        time.sleep(0.5)
    pytest.fail(f"the dashboard did not answer on port {port} within {SERVER_START_S} s:\n{log.read_text()}")


def health(port: int) -> str:
    """Streamlit's health answer ("ok" once the app can be served); "" while nothing listens."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=5) as answer:
            return answer.read().decode().strip()
    except OSError:  # refused while starting; urllib's HTTPError (503 before ready) is an OSError too
        return ""


def stop(server: subprocess.Popen) -> int:
    """Ctrl-C to the whole group, as a terminal sends it; SIGKILL if it has not exited 20 s later."""
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGINT)
        try:
            return server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
    return server.wait()


# ------------------------------------------------------------------------------------------------------
# the browser
# ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def driver() -> Iterator[webdriver.Chrome]:
    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or chromedriver is None:
        pytest.skip(
            "Debian chromium + chromium-driver not installed: apt-get install chromium chromium-driver; "
            ".ci/run installs them"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = chromium  # with the driver's path below, selenium-manager is never asked
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking"):
        options.add_argument(argument)
    options.add_argument("--window-size=1400,2000")
    options.set_capability("unhandledPromptBehavior", "ignore")  # an alert stays open for the test to see
    browser = webdriver.Chrome(options=options, service=Service(executable_path=chromedriver))
    try:
        yield browser
    finally:
        browser.quit()


def flat(text: str) -> str:
    return " ".join(text.split())


def page_text(browser: webdriver.Chrome) -> str:
    """The text drawn: the page's and that of each frame (components render in iframes)."""
    texts = [browser.execute_script("return document.body.innerText")]
    for frame in browser.find_elements(By.TAG_NAME, "iframe"):
        browser.switch_to.frame(frame)
        try:
            texts.append(browser.execute_script("return document.body ? document.body.innerText : ''"))
        finally:
            browser.switch_to.default_content()
    return flat("\n".join(texts))


def wait_for_text(browser: webdriver.Chrome, url: str, expected: list[str]) -> str:
    """Open ``url`` and wait until every ``expected`` string is drawn; the page text."""
    browser.get(url)
    # Streamlit redraws as the script runs: a frame found a moment ago may be gone when switched to
    waiting = WebDriverWait(
        browser,
        PAGE_RENDER_S,
        poll_frequency=0.5,
        ignored_exceptions=(StaleElementReferenceException, NoSuchFrameException),
    )
    try:
        waiting.until(lambda b: page_is_sound(b) and all(flat(text) in page_text(b) for text in expected))
    except UnexpectedAlertPresentException as alert:
        pytest.fail(f"an alert opened on {url}: the page ran a script from the data ({alert.alert_text})")
    except TimeoutException:
        shown = page_text(browser)
        missing = [text for text in expected if flat(text) not in shown]
        pytest.fail(f"{url}: not drawn within {PAGE_RENDER_S} s: {missing}\npage text: {shown}")
    return page_text(browser)


def page_is_sound(browser: webdriver.Chrome) -> bool:
    """True while the page shows no Python exception and no payload turned markup; either fails the test at once
    with what is wrong, rather than after the whole wait for text that will never come."""
    shown = browser.find_elements(By.CSS_SELECTOR, '[data-testid="stException"]')
    if shown:
        pytest.fail(f"the dashboard shows an exception: {flat(shown[0].text)}")
    images = images_with_src_x(browser)
    if images:
        pytest.fail(f"the payload token became an <img> element: {images}")
    return True


def images_with_src_x(browser: webdriver.Chrome) -> list[str]:
    """``<img>`` elements whose src attribute is "x", in the page and in each frame: the payload as markup."""
    return in_every_frame(
        browser,
        "return [...document.querySelectorAll('img')].filter(i => i.getAttribute('src') === 'x').map(i => i.outerHTML)",
    )


def table_cells(browser: webdriver.Chrome, text: str) -> list[str]:
    """Table cells (``td``, ``th``) whose whole text is ``text``, in the page and in each frame."""
    script = "return [...document.querySelectorAll('td, th')].filter(c => c.textContent.trim() === arguments[0])"
    return in_every_frame(browser, script + ".map(c => c.outerHTML)", text)


def in_every_frame(browser: webdriver.Chrome, script: str, *arguments: str) -> list[str]:
    """The lists ``script`` returns in the page and in each of its frames, joined."""
    found = list(browser.execute_script(script, *arguments))
    for frame in browser.find_elements(By.TAG_NAME, "iframe"):
        browser.switch_to.frame(frame)
        try:
            found += browser.execute_script(script, *arguments)
        finally:
            browser.switch_to.default_content()
    return found


def alert_text(browser: webdriver.Chrome) -> str | None:
    try:
        return browser.switch_to.alert.text
    except NoAlertPresentException:
        return None


# ------------------------------------------------------------------------------------------------------
# the tests
# ------------------------------------------------------------------------------------------------------
def default_example(run_dir: Path) -> int:
    """The example the run page opens on: the most misleading one (the smallest id when none is ranked)."""
    run = load_run(run_dir)
    ranking = misleading_ranking(run.table("findings"))
    return int(ranking.index[0]) if not ranking.empty else int(run.table("examples")["example_id"].min())


def payload_example(run_dir: Path) -> int:
    examples = load_run(run_dir).table("examples")
    return int(examples.loc[examples["text"].str.contains(PAYLOAD, regex=False), "example_id"].iloc[0])


# (driver first: without a browser the tests skip before a run is built and a server started)
def test_the_run_page_opens_on_the_most_misleading_example_and_its_findings(driver, payload_run, served):
    example = default_example(payload_run)
    statements = example_statements(load_run(payload_run).table("findings"), example)
    assert statements, f"example {example} has no findings to look for"
    wait_for_text(driver, served, [f"Example {example}", statements[0][1]])


def test_a_token_that_is_html_is_drawn_as_text(driver, payload_run, served, tmp_path):
    example = payload_example(payload_run)
    wait_for_text(driver, f"{served}/?example={example}", [f"Example {example}", PAYLOAD])
    assert alert_text(driver) is None, "the payload token ran a script: an alert is open"
    assert not images_with_src_x(driver), "the payload token became an <img> element"
    assert table_cells(driver, PAYLOAD), "the token view has no table cell that is the payload token, as text"
    screenshot = tmp_path / "dashboard.png"
    driver.save_screenshot(str(screenshot))
    assert screenshot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n") and screenshot.stat().st_size > 1000
    print(f"screenshot of example {example}: {screenshot}")
