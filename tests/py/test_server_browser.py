"""The chat page of `moxin serve` in a real browser: Debian's headless chromium driven by
selenium, on a fresh random tiny model.

References: the same server's API, asked directly over HTTP (the page must show exactly what
/v1/chat/completions answers for the same greedy request, and the server's own error messages),
and /metrics for the sequence a stopped generation must free. Skipped only where chromium or
its driver is not installed (scripts/setup.sh installs both)."""
import base64
import re
import shutil
import time

import numpy as np
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from conftest import fresh_tiny_model
from test_server import Server, data_url, photo_png, question, server_built  # noqa: F401 (autouse)

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                                reason="chromium and chromium-driver are not installed (apt; scripts/setup.sh)")
API_KEY = "browser-test-key"

# Keeps every text the last answer shows, in order, as the page changes: the streaming is
# seen from inside the page, where no step of it can be missed between two polls.
RECORD_ANSWER_TEXTS = """
window.answerTexts = [];
new MutationObserver(() => {
  const answers = document.querySelectorAll('#messages .message.assistant .text');
  const text = answers.length ? answers[answers.length - 1].textContent : '';
  if (window.answerTexts[window.answerTexts.length - 1] !== text) window.answerTexts.push(text);
}).observe(document.getElementById('messages'), {childList: true, subtree: true, characterData: true});
"""


# ---------------------------------------------------------------- fixtures and helpers

@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return fresh_tiny_model(tmp_path_factory, "tiny-browser")[0]


@pytest.fixture(scope="module")
def server(moxin_bin, model):
    s = Server(moxin_bin, model)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # --no-sandbox: CI runs as root, where chromium's sandbox refuses to start.
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1200,900"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    yield driver
    driver.quit()


def api_chat(server, messages, headers=None, **options):
    """The reference: the same request, straight to the API (not streamed)."""
    return server.request("POST", "/v1/chat/completions", {"messages": messages, **options}, headers=headers)


def image_message(text, png):
    return {"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(png)}},
                                        {"type": "text", "text": text}]}


def wait_for_state(driver, state, timeout=60):
    WebDriverWait(driver, timeout, poll_frequency=0.05).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") == state,
                                         f"the page never reached the state '{state}'")


def open_page(driver, server, state="idle"):
    driver.get(server.url + "/")
    wait_for_state(driver, state)


def set_field(driver, element_id, value):
    field = driver.find_element(By.ID, element_id)
    field.clear()
    if value != "":
        field.send_keys(str(value))


def ask(driver, text, by_enter=False):
    """Types the question, then clicks Send or presses Enter (the page's handlers run
    synchronously and enter the state "streaming" before this returns)."""
    if by_enter:
        driver.find_element(By.ID, "prompt").send_keys(text + Keys.ENTER)
    else:
        driver.find_element(By.ID, "prompt").send_keys(text)
        driver.find_element(By.ID, "send").click()


def answers(driver):
    return driver.find_elements(By.CSS_SELECTOR, "#messages .message.assistant")


def answer_text(bubble):
    return bubble.find_element(By.CLASS_NAME, "text").get_attribute("textContent")


def status_text(driver):
    return driver.find_element(By.ID, "status").get_attribute("textContent")


def ask_and_record(driver, text, by_enter=False):
    """Asks, waits for the answer to end; returns (final text, every text shown on the way)."""
    driver.execute_script(RECORD_ANSWER_TEXTS)
    ask(driver, text, by_enter)
    wait_for_state(driver, "idle")
    return answer_text(answers(driver)[-1]), driver.execute_script("return window.answerTexts")


def assert_streamed(final, shown):
    """The answer grew in the page, piece by piece, into the final text."""
    steps = [t for t in shown if t]
    print(f"[streamed] {len(steps)} texts shown on the way to {len(final)} characters")
    assert len(steps) >= 3, f"only {len(steps)} distinct texts were shown while streaming: {steps}"
    assert all(final.startswith(t) for t in steps), "a text shown while streaming is not a prefix of the answer"
    assert steps[-1] == final


# ---------------------------------------------------------------- tests

def test_image_question_streams_the_api_answer_and_the_conversation_continues(browser, server, tmp_path, seed):
    rng = np.random.default_rng(seed)
    png = photo_png(rng)
    image = tmp_path / "photo.png"
    image.write_bytes(png)
    first, second = question(rng), question(rng)
    max_tokens = int(rng.integers(24, 48))
    greedy = {"temperature": 0, "max_tokens": max_tokens}

    open_page(browser, server)
    set_field(browser, "temperature", 0)
    set_field(browser, "max-tokens", max_tokens)
    browser.find_element(By.ID, "image-input").send_keys(str(image))
    WebDriverWait(browser, 10).until(lambda d: d.find_element(By.ID, "attachment").is_displayed())
    assert browser.find_element(By.ID, "attachment-name").text == "photo.png"

    text, shown = ask_and_record(browser, first)
    status, expected = api_chat(server, [image_message(first, png)], **greedy)
    assert status == 200, expected
    assert text == expected["choices"][0]["message"]["content"]
    assert_streamed(text, shown)
    user = browser.find_elements(By.CSS_SELECTOR, "#messages .message.user")
    assert len(user) == 1 and user[0].find_element(By.TAG_NAME, "img").get_attribute("src") == data_url(png)
    # The speed line counts the tokens the API counts.
    stats = answers(browser)[0].find_element(By.CLASS_NAME, "stats").text
    match = re.match(r"(\d+) tokens · ([\d.]+) tok/s", stats)
    assert match, stats
    assert int(match.group(1)) == expected["usage"]["completion_tokens"] and float(match.group(2)) > 0

    # The next question (sent with Enter) is asked with the whole conversation, image included.
    text2, shown2 = ask_and_record(browser, second, by_enter=True)
    history = [image_message(first, png), {"role": "assistant", "content": text}, {"role": "user", "content": second}]
    status, expected2 = api_chat(server, history, **greedy)
    assert status == 200, expected2
    assert text2 == expected2["choices"][0]["message"]["content"]
    assert_streamed(text2, shown2)
    assert len(answers(browser)) == 2 and status_text(browser) == ""


# A drop or a paste of a file as the browser delivers it (a DataTransfer holding a File): only
# the user's gesture is simulated, the page's handlers and FileReader run as they would.
DELIVER_FILE = """
const [base64, name, type, gesture] = arguments;
const file = new File([Uint8Array.from(atob(base64), (c) => c.charCodeAt(0))], name, {type});
const data = new DataTransfer();
data.items.add(file);
const init = {bubbles: true, cancelable: true};
document.getElementById('prompt').dispatchEvent(gesture === 'drop'
    ? new DragEvent('drop', {...init, dataTransfer: data}) : new ClipboardEvent('paste', {...init, clipboardData: data}));
"""


@pytest.mark.parametrize("gesture", ["drop", "paste"])
def test_dropped_or_pasted_image_is_asked_about(browser, server, seed, gesture):
    rng = np.random.default_rng(seed)
    png = photo_png(rng)
    open_page(browser, server)
    set_field(browser, "temperature", 0)
    set_field(browser, "max-tokens", 12)
    browser.execute_script(DELIVER_FILE, base64.b64encode(png).decode(), "clip.png", "image/png", gesture)
    WebDriverWait(browser, 10).until(lambda d: d.find_element(By.ID, "attachment").is_displayed())
    assert browser.find_element(By.ID, "attachment-preview").get_attribute("src") == data_url(png)
    asked = question(rng)
    text, _ = ask_and_record(browser, asked)
    status, expected = api_chat(server, [image_message(asked, png)], temperature=0, max_tokens=12)
    assert status == 200 and text == expected["choices"][0]["message"]["content"]


def test_one_image_per_conversation_and_new_chat(browser, server, tmp_path, seed):
    rng = np.random.default_rng(seed)
    first, second = tmp_path / "first.png", tmp_path / "second.png"
    first.write_bytes(photo_png(rng))
    second.write_bytes(photo_png(rng))
    open_page(browser, server)
    set_field(browser, "max-tokens", 4)
    browser.find_element(By.ID, "image-input").send_keys(str(first))
    WebDriverWait(browser, 10).until(lambda d: d.find_element(By.ID, "attachment").is_displayed())
    ask_and_record(browser, question(rng))
    assert len(answers(browser)) == 1
    # The model takes one image per conversation: a second one is refused, with the way out.
    browser.find_element(By.ID, "image-input").send_keys(str(second))
    WebDriverWait(browser, 10).until(lambda d: status_text(d) != "")
    assert "already has an image" in status_text(browser) and "New chat" in status_text(browser)
    assert not browser.find_element(By.ID, "attachment").is_displayed()

    browser.find_element(By.ID, "new-chat").click()
    assert answers(browser) == [] and status_text(browser) == ""
    browser.find_element(By.ID, "image-input").send_keys(str(second))
    WebDriverWait(browser, 10).until(lambda d: d.find_element(By.ID, "attachment").is_displayed())
    asked = question(rng)
    set_field(browser, "temperature", 0)
    text, _ = ask_and_record(browser, asked)
    status, expected = api_chat(server, [image_message(asked, second.read_bytes())], temperature=0, max_tokens=4)
    assert status == 200 and text == expected["choices"][0]["message"]["content"]


def long_question(server, rng):
    """A question whose greedy answer does not end before 200 tokens (random weights rarely
    end one, but the check makes sure)."""
    for _ in range(20):
        text = question(rng)
        status, body = api_chat(server, [{"role": "user", "content": text}], temperature=0, max_tokens=200)
        assert status == 200, body
        if body["choices"][0]["finish_reason"] == "length":
            return text
    pytest.fail("20 random questions all had short greedy answers")


@pytest.mark.parametrize("how", ["button", "escape"])
def test_stop_ends_the_generation_and_frees_the_sequence(browser, server, seed, how):
    rng = np.random.default_rng(seed)
    text = long_question(server, rng)
    open_page(browser, server)
    set_field(browser, "temperature", 0)
    set_field(browser, "max-tokens", "")  # the rest of the context: far longer than the test waits
    ask(browser, text)
    WebDriverWait(browser, 30, poll_frequency=0.02).until(lambda d: len(answer_text(answers(d)[-1])) > 20)
    assert server.metrics()["moxin_running_sequences"] == 1
    if how == "button":
        browser.find_element(By.ID, "stop").click()
    else:
        browser.find_element(By.ID, "prompt").send_keys(Keys.ESCAPE)
    wait_for_state(browser, "idle", timeout=10)

    deadline = time.monotonic() + 1.0
    while server.metrics()["moxin_running_sequences"] != 0:
        assert time.monotonic() < deadline, "the stopped generation still runs on the server after 1 s"
        time.sleep(0.02)
    bubble = answers(browser)[-1]
    assert "stopped" in bubble.get_attribute("class").split()
    assert "stopped" in bubble.find_element(By.CLASS_NAME, "stats").text
    stopped_at = answer_text(bubble)
    time.sleep(0.3)
    assert answer_text(bubble) == stopped_at and stopped_at
    # What was shown is the greedy answer, cut where it was stopped.
    status, expected = api_chat(server, [{"role": "user", "content": text}], temperature=0, max_tokens=200)
    assert status == 200
    reference = expected["choices"][0]["message"]["content"]
    assert reference.startswith(stopped_at) or stopped_at.startswith(reference)


def test_non_image_files_are_refused_with_a_clear_error(browser, server, tmp_path, seed):
    rng = np.random.default_rng(seed)
    open_page(browser, server)
    notes = tmp_path / "notes.txt"
    notes.write_text("not a picture")
    browser.find_element(By.ID, "image-input").send_keys(str(notes))
    WebDriverWait(browser, 10).until(lambda d: status_text(d) != "")
    assert '"notes.txt" is not an image (text/plain)' in status_text(browser)
    assert not browser.find_element(By.ID, "attachment").is_displayed()

    # A file that claims to be an image but is not: the server's own message is shown.
    broken = tmp_path / "broken.png"
    payload = rng.integers(0, 256, size=int(rng.integers(16, 200)), dtype=np.uint8).tobytes()
    broken.write_bytes(payload)
    browser.find_element(By.ID, "image-input").send_keys(str(broken))
    WebDriverWait(browser, 10).until(lambda d: d.find_element(By.ID, "attachment").is_displayed())
    asked = question(rng)
    ask(browser, asked)
    WebDriverWait(browser, 30).until(lambda d: status_text(d) != "")
    wait_for_state(browser, "idle")
    status, expected = api_chat(server, [image_message(asked, payload)], temperature=0, max_tokens=4)
    assert status == 400
    assert status_text(browser) == expected["error"]["message"]
    # Nothing was answered: the question and the image wait in the composer to be sent again.
    assert answers(browser) == []
    assert browser.find_element(By.ID, "prompt").get_attribute("value") == asked
    assert browser.find_element(By.ID, "attachment").is_displayed()


@pytest.fixture(scope="module")
def keyed_server(moxin_bin, model):
    s = Server(moxin_bin, model, "--api-key", API_KEY)
    yield s
    s.stop()


def submit_key(driver, key):
    set_field(driver, "key-input", key)
    driver.find_element(By.ID, "key-submit").click()


def stored_key(driver):
    return driver.execute_script("return sessionStorage.getItem('moxin.apiKey')")


def test_api_key_is_asked_for_kept_for_the_session_and_asked_again_on_401(browser, keyed_server, model, seed):
    rng = np.random.default_rng(seed)
    auth = {"Authorization": f"Bearer {API_KEY}"}
    refused = keyed_server.request("GET", "/v1/models")[1]["error"]["message"]

    open_page(browser, keyed_server, state="locked")  # the page loads without the key, then asks
    assert browser.find_element(By.ID, "key-form").is_displayed()
    submit_key(browser, "wrong-" + API_KEY)
    wait_for_state(browser, "locked")
    WebDriverWait(browser, 10).until(lambda d: refused in d.find_element(By.ID, "key-message").text)
    assert stored_key(browser) is None

    submit_key(browser, API_KEY)
    wait_for_state(browser, "idle")
    assert stored_key(browser) == API_KEY
    assert not browser.find_element(By.ID, "key-form").is_displayed()
    assert browser.find_element(By.ID, "model-name").text == model.name

    # Kept for the session: a reload does not ask again.
    open_page(browser, keyed_server)
    set_field(browser, "temperature", 0)
    set_field(browser, "max-tokens", 8)
    first = question(rng)
    text, _ = ask_and_record(browser, first)
    status, expected = api_chat(keyed_server, [{"role": "user", "content": first}], headers=auth,
                                temperature=0, max_tokens=8)
    assert status == 200 and text == expected["choices"][0]["message"]["content"]

    # A key the server no longer takes: the question fails with 401 and the page asks again.
    browser.execute_script("sessionStorage.setItem('moxin.apiKey', 'revoked')")
    second = question(rng)
    ask(browser, second)
    wait_for_state(browser, "locked")
    assert refused in browser.find_element(By.ID, "key-message").text
    assert browser.find_element(By.ID, "prompt").get_attribute("value") == second
    assert len(answers(browser)) == 1
    submit_key(browser, API_KEY)
    wait_for_state(browser, "idle")
    browser.find_element(By.ID, "send").click()
    wait_for_state(browser, "idle")
    history = [{"role": "user", "content": first}, {"role": "assistant", "content": text},
               {"role": "user", "content": second}]
    status, expected = api_chat(keyed_server, history, headers=auth, temperature=0, max_tokens=8)
    assert status == 200 and answer_text(answers(browser)[-1]) == expected["choices"][0]["message"]["content"]


def test_a_server_that_went_away_is_reported(browser, moxin_bin, model, seed):
    rng = np.random.default_rng(seed)
    s = Server(moxin_bin, model)
    try:
        open_page(browser, s)
    finally:
        s.stop()
    asked = question(rng)
    ask(browser, asked)
    WebDriverWait(browser, 30).until(lambda d: status_text(d) != "")
    assert status_text(browser).startswith("cannot reach the server")
    assert browser.find_element(By.ID, "prompt").get_attribute("value") == asked and answers(browser) == []
