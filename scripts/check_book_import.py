"""Check `scratch-gpt import-book` against the book's own GPTModel (the PyPI package `llms-from-scratch`).

    pip install --no-deps llms-from-scratch      # the book's code; needs only torch here
    python scripts/check_book_import.py          # small shapes, a few seconds
    python scripts/check_book_import.py --gpt2-124m   # the book's GPT_CONFIG_124M shape (slower)

For each of tied / untied head and with / without query-key-value bias it saves a random GPTModel
the way the book does (`model.pth`, and chapter 5's `model_and_optimizer.pth`), imports it with
`import_book_checkpoint`, loads the folder with `from_pretrained` and prints the largest fp32 logit
difference (also relative to the largest logit: the same sums in another order round differently,
more so for large logits) and whether greedy generation (the book's `generate_text_simple`) agrees.
"""

import argparse
import tempfile
from pathlib import Path

import torch
from llms_from_scratch.ch04 import GPTModel, generate_text_simple

from scratch_gpt import ScratchGPTForCausalLM
from scratch_gpt.convert import import_book_checkpoint

SMALL = {"vocab_size": 1000, "context_length": 64, "emb_dim": 64, "n_heads": 4, "n_layers": 2, "drop_rate": 0.0}
GPT2_124M = {"vocab_size": 50257, "context_length": 256, "emb_dim": 768, "n_heads": 12, "n_layers": 12, "drop_rate": 0.0}


def check(config: dict, tied: bool, chapter5: bool, folder: Path) -> tuple[float, float, bool]:
    torch.manual_seed(123)
    book = GPTModel(config).eval()
    if tied:
        book.out_head.weight = book.tok_emb.weight
    path = folder / "model.pth"
    if chapter5:
        optimizer = torch.optim.AdamW(book.parameters(), lr=4e-4, weight_decay=0.1)
        torch.save({"model_state_dict": book.state_dict(), "optimizer_state_dict": optimizer.state_dict()}, path)
    else:
        torch.save(book.state_dict(), path)
    ours = ScratchGPTForCausalLM.from_pretrained(import_book_checkpoint(path, folder / "out", config=config)).eval()

    ids = torch.randint(0, config["vocab_size"], (2, 16))
    with torch.no_grad():
        expected_logits = book(ids)
        difference = (ours(ids).logits - expected_logits).abs().max().item()
        scale = expected_logits.abs().max().item()
        expected = generate_text_simple(book, ids[:1, :6], max_new_tokens=10, context_size=config["context_length"])
    generated = ours.generate(ids[:1, :6], max_new_tokens=10, do_sample=False, eos_token_id=None, pad_token_id=0)
    return difference, difference / scale, torch.equal(generated, expected)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpt2-124m", action="store_true", help="the book's 124M shape instead of a small one")
    args = parser.parse_args()
    base = GPT2_124M if args.gpt2_124m else SMALL
    print(f"{'qkv_bias':>8} {'tied':>5} {'file':>24} {'max |logit diff|':>17} {'relative':>9} {'greedy equal':>12}")
    failed = False
    for qkv_bias in (False, True):
        for tied in (False, True):
            for chapter5 in (False, True):
                with tempfile.TemporaryDirectory() as folder:
                    difference, relative, same = check({**base, "qkv_bias": qkv_bias}, tied, chapter5, Path(folder))
                name = "model_and_optimizer.pth" if chapter5 else "model.pth"
                print(f"{qkv_bias!s:>8} {tied!s:>5} {name:>24} {difference:>17.2e} {relative:>9.1e} {same!s:>12}")
                failed |= (difference > 1e-5 and relative > 1e-6) or not same
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
