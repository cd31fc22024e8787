"""The web page in a real browser: headless Chromium (Debian's `chromium`, or $SEQ2SEQ_CHROMIUM)
driven by Playwright, against a real `seq2seq serve` of the session's reverse-task model.

Playwright drives the installed browser (`executable_path`); it never downloads one of its own.
Without a browser the test skips with the reason; under CI=true it fails instead."""

import os
import shutil

import pytest

from conftest import Server, skip_unless_ci


def chromium_path() -> str:
    for candidate in (os.environ.get("SEQ2SEQ_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if candidate and (path := shutil.which(candidate)):
            return path
    skip_unless_ci("no Chromium found (apt-get install chromium, or set SEQ2SEQ_CHROMIUM)")


@pytest.fixture(scope="module")
def browser():
    path = chromium_path()
    try:
        from playwright.sync_api import sync_playwright
    except ModuleNotFoundError:
        skip_unless_ci("playwright is not installed: pip install -e '.[dev]'")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def web(reverse_model, tmp_path_factory):
    s = Server(reverse_model, log=tmp_path_factory.mktemp("web") / "server.log")
    yield s
    assert s.stop() == 0


@pytest.fixture(scope="module")
def translator(reverse_model):
    from seq2seq.translate import Translator
    return Translator.load(reverse_model)


def test_typing_shows_the_translation_nbest_and_attention(browser, web, translator):
    page = browser.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    requests = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(f"http://127.0.0.1:{web.port}/")
    page.wait_for_selector("body[data-ready=true]")
    assert page.input_value("#beam") == "3"  # the recipe's beam
    sentence = "c a f f e b"
    page.locator("#source").press_sequentially(sentence, delay=30)  # typed; translated when typing pauses

    (best,) = translator.translate_with_details([sentence], return_attention=True, beam=3, nbest=3)
    page.wait_for_function("(text) => document.querySelector('#translation').textContent === text", arg=best[0].text)
    cells = (len(best[0].tokens) + 1) * (len(best[0].src_tokens) + 1)
    page.wait_for_function(f"document.querySelectorAll('#heatmap td.cell').length === {cells}")
    assert page.locator("#hypotheses li").count() == len(best)
    assert page.locator("#hypotheses li .text").all_inner_texts() == [t.text for t in best]
    assert [float(x) for x in page.locator("#hypotheses li .score").all_inner_texts()] == \
        pytest.approx([t.score for t in best], abs=2e-3)

    # hovering a target piece lights up the source piece it attends to most
    row = 1
    page.locator("#heatmap tbody tr").nth(row).hover()
    weights = best[0].attention[row].tolist()
    # Every piece gets the highlight colour with its weight as alpha: rgba(245, 158, 11, w), which
    # the browser writes as rgb(245, 158, 11) when w is 1. A piece without it is a broken highlight.
    alphas = page.eval_on_selector_all(
        "#source-pieces .piece",
        "spans => spans.map(s => { const m = s.style.background.match("
        "/rgba?\\(245, 158, 11(?:, ([\\d.e-]+))?\\)/); return m ? (m[1] === undefined ? 1 : Number(m[1])) : null; })")
    assert None not in alphas, alphas
    assert alphas == pytest.approx(weights, abs=0.01)  # the browser keeps alpha to about 1/255
    assert alphas.index(max(alphas)) == weights.index(max(weights))

    # Enter translates at once, with the beam chosen on the page
    page.select_option("#beam", "1")
    page.locator("#source").fill("d d a")
    page.locator("#source").press("Enter")
    page.wait_for_function("(text) => document.querySelector('#translation').textContent === text",
                           arg=translator.translate(["d d a"], beam=1)[0])
    assert page.locator("#hypotheses li").count() == 1
    assert errors == []
    assert all(url.startswith(f"http://127.0.0.1:{web.port}/") for url in requests)  # nothing from elsewhere
    page.close()


def test_a_rejected_request_is_shown_as_an_error(browser, web):
    page = browser.new_page()
    page.goto(f"http://127.0.0.1:{web.port}/")
    page.wait_for_selector("body[data-ready=true]")
    page.locator("#source").fill("a " * 3000)  # over --max-line-chars
    page.locator("#source").press("Enter")
    page.wait_for_selector("#status.error")
    assert "characters; the limit is 5000" in page.text_content("#status")
    page.close()
