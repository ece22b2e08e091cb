"""`scratch-gpt chat MODEL_DIR --web`: the chat as a page in the browser, served by Gradio.

Gradio is an optional extra (`pip install 'scratch_gpt[web]'`), so it is imported inside the
functions here, never when `scratch_gpt` is imported. The page answers through the same code as
the terminal chat (the tokenizer's chat template, `reply_pieces`, `chat_generation_config`), so a
greedy answer on the page is exactly the answer of `scratch-gpt chat --prompt`.

The page is a `gr.ChatInterface`, which keeps the conversation (every earlier turn goes back into
the template on each message), and a sidebar with the temperature, top-k and answer length. Its
Inspect tab shows the report of `scratch-gpt inspect` (`inference.inspect`, `inference.report`)
for a prompt typed there, or for the conversation up to the last answer: the same numbers and pictures.
"""

import os

from scratch_gpt.errors import BadInput
from scratch_gpt.inference.generation import chat_generation_config, reply_pieces

INSTALL_HINT = "pip install 'scratch_gpt[web]'"


def import_gradio():
    """The `gradio` module; OSError with the pip command when the extra is not installed."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no usage reports or version checks online
    try:
        import gradio
    except ImportError:
        raise BadInput(f"--web needs Gradio, which is not installed; run {INSTALL_HINT}.") from None
    return gradio


def message_text(content) -> str:
    """A message's text in Gradio's history: a string or parts like `{"type": "text", "text": ...}` (others skipped)."""
    if isinstance(content, str):
        return content
    parts = content if isinstance(content, list) else [content]
    return "".join(part.get("text", "") if isinstance(part, dict) else str(part) for part in parts)


def chat_page(model, tokenizer, generation_config, *, system=None, max_new_tokens=None, temperature=0.0, top_k=50):
    """A Gradio app (not yet launched) that chats with `model`.

    The keyword arguments are the starting values of the sidebar; `system` is an optional system
    prompt put before every conversation. Its API endpoint `/chat` takes the message and the three
    sidebar values and streams the answer (each update is the answer so far).
    """
    gr = import_gradio()
    context = model.config.max_position_embeddings
    answer_length = max_new_tokens or generation_config.max_new_tokens or min(256, context)
    start = [{"role": "system", "content": system}] if system else []

    def conversation(history: list[dict] | None) -> list[dict]:
        """The messages the model sees for the chat's history: the system prompt, then each turn's text."""
        return [*start, *({"role": turn["role"], "content": message_text(turn["content"])} for turn in history or [])]

    def respond(message: str, history: list[dict], temperature: float, top_k: int, max_new_tokens: int):
        """Yield the answer so far after each new piece; the history holds the earlier turns."""
        messages = [*conversation(history), {"role": "user", "content": message}]
        config = chat_generation_config(
            generation_config, max_new_tokens=int(max_new_tokens), temperature=float(temperature), top_k=int(top_k)
        )
        answer = ""
        try:
            for piece in reply_pieces(model, tokenizer, messages, config):
                answer += piece
                yield answer
        except ValueError as error:  # the conversation fills the context: shown in the page
            raise gr.Error(str(error)) from None

    name = getattr(model.config, "_name_or_path", "") or "scratch_gpt"
    with gr.Blocks(title="scratch_gpt chat", analytics_enabled=False) as page:
        with gr.Sidebar():
            gr.Markdown(f"### Settings\nModel: `{os.path.basename(str(name).rstrip('/')) or name}`")
            sliders = [
                gr.Slider(0.0, 2.0, value=temperature, step=0.05, label="Temperature (0 = greedy)"),
                gr.Slider(0, 200, value=top_k, step=1, label="Top-k (0 = all tokens)"),
                gr.Slider(1, context, value=min(answer_length, context), step=1, label="Max new tokens"),
            ]
        with gr.Tab("Chat"):
            chat = gr.ChatInterface(
                respond,
                chatbot=gr.Chatbot(render_markdown=False, label="scratch_gpt"),  # the model's text as it is
                additional_inputs=sliders,
                title="scratch_gpt chat",
                analytics_enabled=False,
                api_name="chat",
            )
        with gr.Tab("Inspect"):
            inspect_tab(gr, model, tokenizer, chat.chatbot, conversation)
    return page


def inspect_tab(gr, model, tokenizer, chatbot, conversation) -> None:
    """The Inspect tab: the report of `scratch-gpt inspect` for the prompt typed here (API endpoint
    `/inspect`), or for the conversation so far, the chat template's text up to the last answer
    (`/inspect_last_answer`, which takes the chat's history and makes it the model's messages with
    `conversation`, as the chat does). Its numbers are in a folded JSON box."""
    from scratch_gpt.inference.inspect import inspect_text
    from scratch_gpt.inference.report import pictures, report_body

    def report(text: str) -> str:
        try:
            numbers = inspect_text(model, tokenizer, text)
        except BadInput as error:  # an empty prompt, or one longer than the context: said in the page
            raise gr.Error(str(error)) from None
        return report_body(numbers, pictures(numbers), numbers_in="details")

    def last_answer(history: list[dict]) -> str:
        messages = conversation(history)
        if not any(turn["role"] == "assistant" for turn in messages):
            raise gr.Error("There is no answer yet; chat first, or type a prompt and press Inspect.")
        return report(tokenizer.apply_chat_template(messages, tokenize=False))

    gr.Markdown(
        "What the model does with a text: its tokens, the next-token odds at each position, every attention "
        "head, the logit lens and the nearest tokens by embedding (as `scratch-gpt inspect` writes them)."
    )
    prompt = gr.Textbox(label="Prompt", lines=2, placeholder="a text to look inside the model with")
    with gr.Row():
        this_prompt = gr.Button("Inspect", variant="primary")
        the_answer = gr.Button("Inspect the last answer")
    shown = gr.HTML()
    this_prompt.click(report, prompt, shown, api_name="inspect")
    the_answer.click(last_answer, chatbot, shown, api_name="inspect_last_answer")


def serve(page, *, host: str = "127.0.0.1", port: int | None = 7860, block: bool = True) -> str:
    """Launch `page` on http://host:port (no share link) and return its address; with `block`
    (the command line) serve until Ctrl-C, else return at once (tests: `page.close()` stops it)."""
    page.launch(server_name=host, server_port=port, share=False, prevent_thread_lock=not block, quiet=not block)
    return page.local_url
