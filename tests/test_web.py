"""`scratch-gpt chat MODEL_DIR --web`: the Gradio page, through its API and in a real headless browser.

The browser test needs Chromium from the system packages (`apt-get install -y chromium`,
as `.ci/run` does) and the `playwright` package; without them it fails, it
never skips. Nothing here reaches the network: the page is served on 127.0.0.1.
"""

import os
import socket
import sys
import threading

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # before gradio is imported: no reports online

import pytest  # noqa: E402

from scratch_gpt.inference import web  # noqa: E402
from scratch_gpt.cli import main  # noqa: E402
from scratch_gpt.inference.generation import chat_generation_config, load_for_chat, reply_pieces  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [  # as root, offline: no sandbox, no GPU, no background traffic to the closed network
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ANSWER_TOKENS = 12


@pytest.fixture
def model_dir(make_base_dir):
    """A tiny random causal LM with the project's tokenizer and chat template; greedy answers are fixed."""
    return make_base_dir(max_position_embeddings=256)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def chat_prompt(model_dir, prompt: str, capsys) -> str:
    """What `scratch-gpt chat MODEL_DIR --prompt PROMPT` prints (greedy), run in-process."""
    capsys.readouterr()
    code = main(["chat", str(model_dir), "--prompt", prompt, "--max-new-tokens", str(ANSWER_TOKENS)])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    return printed.out.removesuffix("\n")


def test_web_without_gradio_says_which_pip_install_to_run(model_dir, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gradio", None)  # `import gradio` now fails, as without the extra
    code = main(["chat", str(model_dir), "--web"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.strip() == (
        "scratch-gpt chat: error: --web needs Gradio, which is not installed; run pip install 'scratch_gpt[web]'."
    )


def test_web_and_prompt_do_not_go_together(model_dir, capsys):
    code = main(["chat", str(model_dir), "--web", "--prompt", "hi"])
    err = capsys.readouterr().err
    assert code == 2 and "--web and --prompt do not go together" in err and len(err.strip().splitlines()) == 1


def test_history_parts_become_plain_text():
    assert web.message_text("hi") == "hi"
    assert web.message_text([{"type": "text", "text": "Say "}, {"type": "text", "text": "fox."}]) == "Say fox."
    assert web.message_text([{"type": "file", "file": {"path": "x.png"}}]) == ""


@pytest.fixture
def serve_chat(monkeypatch):
    """Factory: run `scratch-gpt chat MODEL_DIR --web ...` in-process and return the page's address.

    `web.serve` is wrapped so the command returns once the page is up instead of serving until
    Ctrl-C; every page started is closed after the test.
    """
    pages = []
    serve = web.serve

    def serve_in_background(page, **options):
        pages.append(page)
        return serve(page, **options, block=False)

    monkeypatch.setattr(web, "serve", serve_in_background)

    def start(model_dir, *options) -> str:
        code = main(["chat", str(model_dir), "--web", "--port", str(free_port()), *options])
        assert code == 0 and len(pages) == 1
        return pages[0].local_url

    yield start
    for page in pages:
        page.close()


@pytest.mark.slow
def test_page_streams_the_greedy_answer_of_chat_prompt_and_keeps_history(model_dir, serve_chat, capsys):
    from gradio_client import Client

    expected = chat_prompt(model_dir, "Say fox.", capsys)
    assert expected.strip()
    client = Client(serve_chat(model_dir, "--max-new-tokens", str(ANSWER_TOKENS)), verbose=False)
    # the sidebar values come after the message: temperature 0 (greedy), top-k, max new tokens
    job = client.submit("Say fox.", 0.0, 50, ANSWER_TOKENS, api_name="/chat")
    updates = list(job)
    assert job.result() == expected
    assert len(updates) > 1 and all(expected.startswith(update) for update in updates)  # streamed, growing

    # the second turn is answered with the first one in the chat template
    second = client.predict("Again.", 0.0, 50, ANSWER_TOKENS, api_name="/chat")
    conversation = [
        {"role": "user", "content": "Say fox."},
        {"role": "assistant", "content": expected},
        {"role": "user", "content": "Again."},
    ]
    model, tokenizer, saved_config = load_for_chat(str(model_dir))
    greedy = chat_generation_config(saved_config, max_new_tokens=ANSWER_TOKENS)
    assert second == "".join(reply_pieces(model, tokenizer, conversation, greedy))


@pytest.mark.slow
def test_browser_chat_page_streams_a_reply_and_takes_a_screenshot(model_dir, serve_chat, tmp_path, capsys):
    """The page of `scratch-gpt chat --web`, driven by Playwright in the system's headless Chromium."""
    from playwright.sync_api import expect, sync_playwright

    assert os.path.exists(CHROMIUM), f"{CHROMIUM} is missing; run apt-get install -y chromium."
    expected = chat_prompt(model_dir, "Say fox.", capsys).strip()
    url = serve_chat(model_dir, "--max-new-tokens", str(ANSWER_TOKENS))
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"),  # a fresh profile
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1100, "height": 700},
        )
        try:
            page = browser.new_page()
            page.goto(url)
            expect(page.get_by_text("Max new tokens")).to_be_visible(timeout=30_000)  # the sidebar
            # record every text the answer bubble shows, to see it grow piece by piece
            page.evaluate(
                """() => { window.seen = [];
                new MutationObserver(() => {
                  const bots = document.querySelectorAll('.message.bot');
                  if (bots.length) window.seen.push(bots[bots.length - 1].innerText);
                }).observe(document.body, {childList: true, subtree: true, characterData: true}); }"""
            )
            box = page.get_by_role("textbox").first
            box.fill("Say fox.")
            box.press("Enter")
            expect(page.locator(".message.bot").last).to_have_text(expected, timeout=30_000)
            whole = " ".join(expected.split())
            seen = {" ".join(text.split()) for text in page.evaluate("window.seen")}
            parts = {text for text in seen if text and whole.startswith(text) and text != whole}
            assert parts, seen  # the page showed the answer in part before it was complete: streamed
            page.screenshot(path=tmp_path / "chat.png")
        finally:
            browser.close()
    assert (tmp_path / "chat.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_closing_the_reply_early_stops_generation(model_dir):
    """The page's Stop button closes the reply generator; the model then stops within a step."""
    model, tokenizer, saved_config = load_for_chat(str(model_dir))
    steps = []
    model.register_forward_hook(lambda module, inputs, output: steps.append(1))
    config = chat_generation_config(saved_config, max_new_tokens=200)
    config.eos_token_id = None  # no early end: only the stop can end it before 200 tokens
    pieces = reply_pieces(model, tokenizer, [{"role": "user", "content": "Say fox."}], config)
    next(pieces)
    threads = threading.active_count()
    pieces.close()  # stops generation and returns once the generating thread has ended
    assert threading.active_count() == threads - 1
    assert len(steps) < 20, len(steps)  # the first piece took a few tokens; then at most one more step
