"""`scratch-gpt chat MODEL_DIR`: chat with an instruction-tuned model in the terminal, or with
`--web` in the browser (`scratch_gpt.inference.web`).

Answers stream token by token through `reply_pieces` (`scratch_gpt.inference.generation`), the
same code the web page answers through, so a greedy answer is the same in both.
"""

import argparse
import math
import sys

from scratch_gpt.convert import add_trust_remote_code_flag
from scratch_gpt.errors import BadInput, run_reporting
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


def build_chat_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scratch-gpt chat",
        description="Chat with an instruction-tuned model; answers stream token by token. "
        "Interactive unless --prompt is given; an empty line or Ctrl-D ends, /reset forgets the conversation. "
        "--web serves the chat as a page in the browser instead (needs pip install 'scratch_gpt[web]').",
    )
    parser.add_argument("model_dir", metavar="MODEL_DIR", help="output folder of finetune-instruct (model or adapter)")
    parser.add_argument("--prompt", default=None, help="answer this one instruction and exit")
    parser.add_argument("--system", default=None, help="system prompt (default: the template's)")
    parser.add_argument(
        "--max-new-tokens", type=int, default=None, help="longest answer (default: the generation config's)"
    )
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); above 0 samples")
    parser.add_argument("--top-k", type=int, default=50, help="sample from the k likeliest tokens (with --temperature)")
    add_trust_remote_code_flag(parser)
    web = parser.add_argument_group("web page")
    web.add_argument("--web", action="store_true", help="serve the chat as a web page (Gradio) instead of the terminal")
    web.add_argument("--host", default="127.0.0.1", help="address the page listens on (default: 127.0.0.1, this machine only)")
    web.add_argument("--port", type=int, default=7860, help="port of the page (default: 7860)")
    return parser


def chat_cli(argv: list[str] | None = None) -> int:
    parser = build_chat_parser()  # no --config here: plain argparse under the error policy of scratch_gpt.errors
    return run_reporting(parser.prog, lambda: chat(parser.parse_args(argv)))


def chat(args: argparse.Namespace) -> None:
    """`scratch-gpt chat`: bad input (folder, prompt too long, --web without Gradio) is one sentence via `run_reporting`."""
    if not (math.isfinite(args.temperature) and args.temperature >= 0):
        raise BadInput(f"--temperature must be 0 (greedy) or a positive number, got {args.temperature}.")
    if args.web:
        if args.prompt is not None:
            raise BadInput("--web and --prompt do not go together; drop --prompt and type the message in the page.")
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
        return

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
