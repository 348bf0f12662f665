"""agent/web_ui.py in a real browser (Debian's headless Chromium through its chromedriver) against the session's
real vLLM server (conftest `server`: the tiny Qwen3 and a LoRA adapter as `lora-adapter`): chat, agent tool boxes,
RAG sources, compare, bad input, the server down. Screenshots of each state go to the test's temp folder.

    pytest -q tests/test_web_ui.py          # needs `make browser` (chromium, chromium-driver) once
    WEB_UI_SCREENSHOTS=docs/images WEB_UI_SERVER=http://localhost:8001/v1 WEB_UI_MAX_TOKENS=256 \
        pytest -q tests/test_web_ui.py
        # the docs' screenshots: against a server you started (e.g. the bundled SmolLM2 + the demo adapter),
        # with replies long enough to end on their own
"""

import os
import shutil
import time
from pathlib import Path

import pytest

from medqwen.rag.config import RagConfig
from medqwen.serving import free_port
from medqwen.web_config import WebConfig

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
API_KEY = "sk-web-test-never-on-the-page"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium; Selenium gets the driver's path, so Selenium Manager never downloads anything."""
    if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        pytest.fail(f"{CHROMIUM} or {CHROMEDRIVER} missing: run `make browser` (apt-get chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1500"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A real Chroma store with four passages (RAG mode's knowledge base)."""
    from medqwen.rag import index_paths, open_client, open_collection

    root = tmp_path_factory.mktemp("rag")
    docs = root / "docs"
    docs.mkdir()
    (docs / "formulas.jsonl").write_text(
        '{"id": "guizhi", "title": "桂枝汤", "text": "桂枝汤治发热汗出恶风，脉浮缓。"}\n'
        '{"id": "mahuang", "title": "麻黄汤", "text": "麻黄汤治恶寒发热，无汗而喘。"}\n', encoding="utf-8")
    (docs / "herbs.md").write_text("# 人参\n人参大补元气。\n# 黄芪\n黄芪补气固表。\n", encoding="utf-8")
    cfg = RagConfig(input=[str(docs)], persist_dir=str(root / "chroma"))
    index_paths(open_collection(open_client(cfg, create=True), cfg, create=True), cfg.input, cfg, progress=False)
    return cfg


def _launch(base_url: str, persist_dir: str):
    from medqwen.web_ui import launch

    max_tokens = int(os.environ.get("WEB_UI_MAX_TOKENS", "24"))  # short replies keep the suite fast
    cfg = WebConfig(base_url=base_url, port=free_port(7900, 7999), api_key=API_KEY, temperature=0,
                    max_tokens=max_tokens,
                    persist_dir=persist_dir, max_input_chars=2000)
    return cfg, launch(cfg, block=False)


@pytest.fixture(scope="module")
def base_url(request):
    """The session's vLLM server, or the one $WEB_UI_SERVER names (it must serve `lora-adapter` too)."""
    return os.environ.get("WEB_UI_SERVER") or request.getfixturevalue("server")


@pytest.fixture(scope="module")
def page(base_url, store, browser):
    cfg, app = _launch(base_url, store.persist_dir)
    browser.get(f"http://127.0.0.1:{cfg.port}/")
    yield browser
    app.close()


class Shots:
    """Screenshots into the test's temp folder (and into $WEB_UI_SCREENSHOTS when set, e.g. docs/images)."""

    def __init__(self, folder: Path):
        self.folder = folder

    def __call__(self, driver, name: str) -> Path:
        path = self.folder / f"web_ui_{name}.png"
        driver.save_screenshot(str(path))
        if os.environ.get("WEB_UI_SCREENSHOTS"):
            shutil.copy(path, Path(os.environ["WEB_UI_SCREENSHOTS"]) / path.name)
        return path


@pytest.fixture(scope="module")
def shot(tmp_path_factory):
    return Shots(tmp_path_factory.mktemp("screenshots"))


def text_of(driver, elem_id: str) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, elem_id).text


def wait_for(driver, elem_id: str, predicate, timeout_s: float = 120.0) -> str:
    """The element's text once predicate(text) holds; fails with the text seen last."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException

    deadline = time.monotonic() + timeout_s
    text = ""
    while time.monotonic() < deadline:
        try:
            text = text_of(driver, elem_id)
        except (NoSuchElementException, StaleElementReferenceException):  # the page is still being drawn
            text = ""
        if predicate(text):
            return text
        time.sleep(0.2)
    pytest.fail(f"#{elem_id} never satisfied the check within {timeout_s:.0f}s; it shows:\n{text}")


def wait_until_done(driver, elem_id: str, predicate, quiet_s: float = 4.0, timeout_s: float = 180.0) -> str:
    """The element's text once predicate(text) holds and the text stopped changing for quiet_s (stream ended)."""
    deadline = time.monotonic() + timeout_s
    text = wait_for(driver, elem_id, predicate, timeout_s)
    since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.3)
        now = text_of(driver, elem_id)
        if now != text:
            text, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return text
    pytest.fail(f"#{elem_id} kept changing for {timeout_s:.0f}s")


def open_tab(driver, name: str) -> None:
    from selenium.webdriver.common.by import By

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # the tabs appear once Gradio has drawn the page
        tabs = [b for b in driver.find_elements(By.CSS_SELECTOR, "button[role=tab]") if b.text.strip() == name]
        if tabs:
            tabs[0].click()
            time.sleep(0.5)
            return
        time.sleep(0.3)
    pytest.fail(f"no tab named {name!r} on the page")


def choose(driver, elem_id: str, value: str) -> None:
    """Pick (or type, where custom values are allowed) a dropdown value."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    box = driver.find_element(By.CSS_SELECTOR, f"#{elem_id} input")
    box.click()
    box.send_keys(Keys.CONTROL + "a", Keys.BACKSPACE)
    box.send_keys(value)
    time.sleep(0.3)
    box.send_keys(Keys.ENTER)
    time.sleep(0.5)


def send(driver, elem_id: str, text: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    box = driver.find_element(By.CSS_SELECTOR, f"#{elem_id} textarea")
    box.clear()
    if len(text) > 1000:  # typing 100K keys takes minutes: set the value as a paste would, then press Enter
        driver.execute_script("const t = arguments[0]; t.value = arguments[1];"
                              "t.dispatchEvent(new Event('input', {bubbles: true}));", box, text)
        time.sleep(0.5)
        box.send_keys(Keys.ENTER)
    else:
        box.send_keys(text + Keys.ENTER)


def assistant_replies(driver, elem_id: str) -> list[str]:
    from selenium.webdriver.common.by import By

    bot = driver.find_element(By.ID, elem_id)
    return [m.text for m in bot.find_elements(By.CSS_SELECTOR, ".message.bot, [data-testid='bot']")]


def test_page_loads_with_models_note_and_no_secret(page, shot):
    status = wait_for(page, "server-status", lambda t: "Server up" in t)
    assert "lora-adapter" in status
    assert "no substitute for a doctor" in text_of(page, "disclaimer")
    assert API_KEY not in page.page_source
    import httpx  # the app's config as the browser fetches it: model names, never the key

    assert API_KEY not in httpx.get(page.current_url.rstrip("/") + "/config", timeout=10).text


def test_chat_streams_an_answer(page, base_url, shot):
    from medqwen.web_ui import stream_reply

    open_tab(page, "Chat")
    send(page, "chat-input", "What helps with a mild headache?")
    text = wait_until_done(page, "chat-bot", lambda t: "What helps with a mild headache?" in t
                           and len(t.split("What helps with a mild headache?", 1)[1].strip()) > 0)
    assert "Notice" not in text, text
    shot(page, "chat")
    # The same call the page makes, against the same server: the reply arrives in growing pieces.
    pieces = list(stream_reply(WebConfig(base_url=base_url, temperature=0, max_tokens=16), "lora-adapter",
                               [{"role": "user", "content": "Hello"}]))
    assert len(pieces) > 1 and all(b.startswith(a) for a, b in zip(pieces, pieces[1:])), pieces


def test_agent_shows_the_calculator_tool_call_box(page, shot):
    open_tab(page, "Agent")
    # The tiny random model calls no tool on its own: force the first turn, as agent/agent.py --force_tool does.
    choose(page, "agent-force", "calculator")
    send(page, "agent-input", "帮我计算 (12 + 8) * 3")
    text = wait_until_done(page, "agent-bot", lambda t: "tool result: calculator" in t or "tool error: calculator" in t)
    assert "tool call: calculator" in text
    shot(page, "agent")


def test_rag_shows_sources_from_the_store(page, shot):
    open_tab(page, "RAG")
    send(page, "rag-input", "桂枝汤治什么？")
    sources = wait_for(page, "rag-sources", lambda t: "桂枝汤" in t, timeout_s=60)
    assert "formulas" in sources  # the source id names the file the passage came from
    wait_until_done(page, "rag-bot", lambda t: "桂枝汤治什么？" in t and t.split("桂枝汤治什么？", 1)[1].strip() != "")
    shot(page, "rag")


def test_compare_streams_two_models_side_by_side(page, base_url, shot):
    from selenium.webdriver.common.by import By

    from medqwen.agent.agent import served_models
    from medqwen.agent.config import AgentConfig

    open_tab(page, "Compare")
    left = page.find_element(By.CSS_SELECTOR, "#compare-left-model input").get_attribute("value")
    right = page.find_element(By.CSS_SELECTOR, "#compare-right-model input").get_attribute("value")
    base = [m for m in served_models(AgentConfig(base_url=base_url)) if m != "lora-adapter"][0]
    assert (left, right) == (base, "lora-adapter")  # the base and the adapter, by default
    question = "Describe a healthy breakfast."
    send(page, "compare-input", question)
    answers = []
    for side in ("compare-left", "compare-right"):
        text = wait_until_done(page, side, lambda t: question in t and t.split(question, 1)[1].strip() != "")
        answers.append(text.split(question, 1)[1].strip())
    assert not any(a.startswith("Notice") for a in answers), answers
    assert answers[0] != answers[1], "base and adapter gave the same greedy answer: was the adapter served?"
    shot(page, "compare")


@pytest.mark.parametrize("message,expected", [
    ("   ", "the message is empty"),
    ("x" * 100_000, "The message has 100,000 characters; the limit is 2,000"),
])
def test_bad_input_gets_a_message_and_the_page_keeps_working(page, message, expected):
    open_tab(page, "Chat")
    page.find_element("css selector", "#chat-clear").click()
    wait_for(page, "chat-bot", lambda t: "Still there?" not in t, timeout_s=10)
    send(page, "chat-input", message)
    wait_for(page, "chat-bot", lambda t: expected in t, timeout_s=30)
    send(page, "chat-input", "Still there?")
    wait_until_done(page, "chat-bot", lambda t: "Still there?" in t and t.split("Still there?", 1)[1].strip() != "")


def test_unknown_model_name_gets_a_message(page):
    open_tab(page, "Chat")
    choose(page, "chat-model", "no-such-model")
    send(page, "chat-input", "Hello?")
    wait_for(page, "chat-bot", lambda t: "does not serve a model named 'no-such-model'" in t, timeout_s=30)
    choose(page, "chat-model", "lora-adapter")


def test_server_down_says_so_with_the_command(browser, store, shot):
    cfg, app = _launch(f"http://localhost:{free_port(8300, 8399)}/v1", store.persist_dir)  # nothing listens there
    try:
        browser.get(f"http://127.0.0.1:{cfg.port}/")
        status = wait_for(browser, "server-status", lambda t: "Server down" in t, timeout_s=60)
        assert "bash agent/serve_vllm.sh" in status and "make web" in status
        send(browser, "chat-input", "Hello?")
        assert "The model server is down" in wait_for(browser, "chat-bot", lambda t: "server is down" in t)
        shot(browser, "server_down")
    finally:
        app.close()
