"""Do our exports load where transformers 4.x reads them (llama.cpp's converter and optimum pin it)?

Run by `scripts/check_older_readers.sh`, in two environments:

    python scripts/check_older_readers.py write DIR   # this package, transformers 5: models, tokens, logits
    python scripts/check_older_readers.py read DIR    # transformers 4.57, without this package

`write` trains a byte-level BPE, builds four small models with random weights (GPT-2-shaped; Llama-,
Qwen2- and Qwen3-shaped with a RoPE base of 100,000, which transformers 4.x takes from `rope_theta`),
saves each with `scratch-gpt export --to gpt2|llama|qwen2|qwen3`, and records the token ids and the
logits transformers 5 gives for a text. `read` loads every folder with `AutoTokenizer` and
`AutoModelForCausalLM` (no remote code) and fails unless the ids are equal and the logits agree to 1e-4.
"""

import json
import sys
from pathlib import Path

TEXT = "Return the sum of the two numbers, and say why it is so."
SHAPES = {  # export target -> (preset, ScratchGPT switches)
    "gpt2": ("tiny", {}),
    "llama": ("smollm2-135m", {"rope_theta": 100_000.0}),
    "qwen2": ("smollm2-135m", {"rope_theta": 100_000.0, "qkv_bias": True}),
    "qwen3": ("qwen3-0.6b", {"rope_theta": 100_000.0}),
}


def write(folder: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from scratch_gpt import ScratchGPTConfig, ScratchGPTForCausalLM
    from scratch_gpt.cli import main
    from scratch_gpt.tokenizer import config_kwargs, save_tokenizer, train_tokenizer

    tokenizer = train_tokenizer([TEXT * 20, "def add(a, b):\n    return a + b\n" * 20], vocab_size=300)
    record = {}
    for target, (preset, switches) in SHAPES.items():
        sizes = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
        if preset == "tiny":
            sizes["num_key_value_heads"] = 4
        config = ScratchGPTConfig.from_preset(preset, **sizes, **switches, **config_kwargs(tokenizer))
        torch.manual_seed(0)
        model = ScratchGPTForCausalLM(config)
        with torch.no_grad():  # weights larger than the init, so that the logits are not all alike
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.05)
        source = folder / f"{target}-scratch"
        model.save_pretrained(source)
        save_tokenizer(tokenizer, source)
        if main(["export", str(source), str(folder / target), "--to", target, "--overwrite"]) != 0:
            sys.exit(f"export --to {target} failed")
        native = AutoModelForCausalLM.from_pretrained(folder / target).eval()
        ids = AutoTokenizer.from_pretrained(folder / target)(TEXT)["input_ids"]
        with torch.no_grad():
            logits = native(torch.tensor([ids])).logits[0]
        record[target] = {"ids": ids, "logits": logits.tolist(), "class": type(native).__name__}
    (folder / "expected.json").write_text(json.dumps(record))
    print(f"wrote {', '.join(SHAPES)} to {folder}")


def read(folder: Path) -> None:
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    expected = json.loads((folder / "expected.json").read_text())
    failed = []
    for target, want in expected.items():
        config = json.loads((folder / target / "config.json").read_text())
        tokenizer = AutoTokenizer.from_pretrained(folder / target)
        model = AutoModelForCausalLM.from_pretrained(folder / target).eval()
        ids = tokenizer(TEXT)["input_ids"]
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0]
        difference = (logits - torch.tensor(want["logits"])).abs().max().item() if ids == want["ids"] else float("inf")
        theta = getattr(model.config, "rope_theta", None)
        ok = ids == want["ids"] and difference < 1e-4 and type(model).__name__ == want["class"]
        print(f"{target}: {type(model).__name__}, tokenizer {type(tokenizer).__name__}, ids equal {ids == want['ids']}, "
              f"max |logit difference| {difference:.2e}, rope_theta {theta} (config: {config.get('rope_theta')}) "
              f"{'OK' if ok else 'FAILED'}")  # fmt: skip
        if not ok:
            failed.append(target)
    print(f"transformers {transformers.__version__}: {'all load as transformers 5 does' if not failed else 'FAILED: ' + ', '.join(failed)}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    mode, folder = sys.argv[1], Path(sys.argv[2])
    folder.mkdir(parents=True, exist_ok=True)
    write(folder) if mode == "write" else read(folder)
