"""`scratch-gpt chat MODEL_DIR`: chat with an instruction-tuned model in the terminal, or in the browser (`--web`).

Answers stream token by token through `reply_pieces` (`scratch_gpt.inference.generation`), the
same code the web page answers through, so a greedy answer is the same in both.
"""

import sys

from scratch_gpt.args import ChatOptions
from scratch_gpt.inference.generation import (
    chat_generation_config,
    load_for_chat,
    reply_pieces,
)


def stream_reply(model, tokenizer, messages: list[dict], generation_config) -> str:
    """Print the answer to `messages` piece by piece as it is generated; return it."""
    answer = ""
    for piece in reply_pieces(model, tokenizer, messages, generation_config):
        print(piece, end="", flush=True)
        answer += piece
    print()
    return answer


def chat(args: ChatOptions) -> None:
    """`scratch-gpt chat`: one answer (`--prompt`), a conversation in the terminal, or the web page (`--web`)."""
    if args.web:
        from scratch_gpt.inference import web

        web.import_gradio()  # a missing extra is reported before the model loads
    model, tokenizer, saved_config = load_for_chat(args.model_dir, args.trust_remote_code)
    settings = {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature, "top_k": args.top_k}
    if args.web:
        page = web.chat_page(model, tokenizer, saved_config, system=args.system, **settings)
        web.serve(page, host=args.host, port=args.port)
        return
    generation_config = chat_generation_config(saved_config, **settings)
    system = [{"role": "system", "content": args.system}] if args.system else []
    if args.prompt is not None:
        stream_reply(model, tokenizer, [*system, {"role": "user", "content": args.prompt}], generation_config)
    else:
        converse(model, tokenizer, system, generation_config)


def converse(model, tokenizer, system: list[dict], generation_config) -> None:
    """The terminal conversation: an empty line or Ctrl-D ends it, /reset forgets it."""
    history: list[dict] = []
    while True:
        try:
            line = input("\n>>> ").strip()
        except EOFError:
            break
        if not line:
            break
        if line == "/reset":
            history = []
            continue
        history.append({"role": "user", "content": line})
        try:
            answer = stream_reply(model, tokenizer, [*system, *history], generation_config)
        except ValueError as error:
            print(f"{error}", file=sys.stderr)
            history = []
            continue
        history.append({"role": "assistant", "content": answer})
