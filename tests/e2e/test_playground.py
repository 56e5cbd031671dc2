"""The playground page (GET /, server/playground/) driven in headless Chromium against a real
loopback server with bearer tokens: the page loads without a token, takes one, types text,
presses Speak, receives and schedules the streamed audio, and its download link yields a file
that soundfile decodes. Chromium, chromedriver and selenium come from scripts/install_browser.sh
(run by scripts/test.sh); without them these tests skip and say so, except under CI."""

from __future__ import annotations

import base64
import io
import os
import shutil
import urllib.request

import pytest
import soundfile

from .harness import LoopbackServer

TOKEN = "play-s3cret"
SHORT_MS = 480


def _missing() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "the selenium package"
    for binary in ("chromium", "chromedriver"):
        if shutil.which(binary) is None:
            return f"the {binary} binary"
    return None


@pytest.fixture(scope="module")
def browser():
    missing = _missing()
    if missing is not None:
        message = f"{missing} is not installed: run scripts/install_browser.sh (Debian's chromium and chromium-driver, PyPI's selenium)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--autoplay-policy=no-user-gesture-required", "--mute-audio"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))
    driver.set_script_timeout(60)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def token_server(engine):
    server = LoopbackServer(engine, auth_tokens=(TOKEN,)).start()
    yield server
    server.stop()


def _wait_for_state(driver, timeout: float = 120) -> dict:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout).until(
        lambda d: d.execute_script("return window.playground.state") in ("done", "error"))
    return driver.execute_script("return window.playground")


def _fill(driver, element_id: str, value: str) -> None:
    element = driver.find_element("id", element_id)
    element.clear()
    element.send_keys(value)


def _speak(driver, server, *, token: str, fmt: str, text: str = "Hello from the playground.") -> dict:
    from selenium.webdriver.support.ui import Select

    driver.get(server.http_url + "/")
    _fill(driver, "token", token)
    driver.execute_script("document.getElementById('token').dispatchEvent(new Event('change'))")
    _fill(driver, "text", text)
    _fill(driver, "voice", "1")
    _fill(driver, "max-audio-ms", str(SHORT_MS))
    _fill(driver, "seed", "7")
    Select(driver.find_element("id", "format")).select_by_value(fmt)
    driver.find_element("id", "speak").click()
    return _wait_for_state(driver)


def _download(driver) -> bytes:
    """The bytes behind the page's download link (a blob: URL), read inside the page."""
    link = driver.find_element("id", "download")
    assert link.is_displayed() and link.get_attribute("download").startswith("speech.")
    encoded = driver.execute_async_script("""
        const done = arguments[arguments.length - 1];
        fetch(document.getElementById('download').href).then((r) => r.arrayBuffer()).then((b) => {
          let s = ''; const u = new Uint8Array(b);
          for (let i = 0; i < u.length; i++) s += String.fromCharCode(u[i]);
          done(btoa(s));
        }).catch((e) => done('error: ' + e));""")
    assert not encoded.startswith("error:"), encoded
    return base64.b64decode(encoded)


def test_the_page_loads_without_a_token_and_nothing_else_does(token_server):
    page = urllib.request.urlopen(token_server.http_url + "/", timeout=10)
    html = page.read().decode()
    assert page.status == 200 and page.headers["content-type"].startswith("text/html")
    assert "/v1/audio/speech" in html and "http://" not in html and "https://" not in html  # no external assets
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(token_server.http_url + "/v1/models", timeout=10)
    assert refused.value.code == 401


def test_speak_streams_wav_and_downloads_an_exact_file(browser, token_server):
    state = _speak(browser, token_server, token=TOKEN, fmt="wav")
    assert state["state"] == "done", state
    assert state["requestId"] and state["bytes"] > 44
    assert state["samplesQueued"] == (state["bytes"] - 44) // 2 > 0  # every sample went to Web Audio
    models = [o.text for o in browser.find_elements("css selector", "#model option")]
    assert models == list(token_server.server.model_names)  # listed with the token
    data = _download(browser)
    assert len(data) == state["bytes"]
    audio, rate = soundfile.read(io.BytesIO(data), dtype="int16")
    assert rate == 24_000 and len(audio) == state["samplesQueued"]
    assert 0 < len(audio) <= SHORT_MS * 24 + 24_000 * 0.08  # within max_audio_ms (one frame of slack)


def test_speak_in_flac_plays_once_complete_and_downloads(browser, token_server):
    state = _speak(browser, token_server, token=TOKEN, fmt="flac")
    assert state["state"] == "done", state
    assert state["samplesQueued"] == 0  # not streamed through Web Audio: played by <audio> at the end
    assert browser.find_element("id", "player").get_attribute("src").startswith("blob:")
    data = _download(browser)
    assert len(data) == state["bytes"] and data[:4] == b"fLaC"
    assert browser.find_element("id", "download").get_attribute("download") == "speech.flac"


def test_a_wrong_token_is_shown_with_the_servers_message(browser, token_server):
    state = _speak(browser, token_server, token="wrong", fmt="pcm")
    assert state["state"] == "error" and state["error"].startswith("HTTP 401")
    status = browser.find_element("id", "status")
    assert "HTTP 401" in status.text and status.get_attribute("class") == "error"
    assert not browser.find_element("id", "download").is_displayed()
