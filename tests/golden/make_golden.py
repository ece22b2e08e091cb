"""Write the golden folders under tests/golden/ (run once, with the code of the commit that added them).

They pin that artifacts saved by older versions of scratch_gpt keep loading, with and without the
package, and give the same logits (tests/test_golden.py). Never regenerate them to make a test pass.
"""

import json
from pathlib import Path

import torch

from scratch_gpt import ScratchGPTConfig, ScratchGPTForCausalLM, ScratchGPTForSequenceClassification
from scratch_gpt.tokenizer import config_kwargs, train_tokenizer

HERE = Path(__file__).parent
TEXT = ["Every effort moves you forward.", "The golden folder keeps old artifacts loading.", "def f(x):\n    return x\n"] * 30
PROMPT = "Every effort moves you"


def main() -> None:
    tokenizer = train_tokenizer(TEXT, vocab_size=300, model_max_length=32, show_progress=False)
    config = ScratchGPTConfig.from_preset("tiny", hidden_size=32, num_attention_heads=4, num_hidden_layers=2,
                                          max_position_embeddings=32, **config_kwargs(tokenizer, pad_to_multiple_of=None))
    inputs = tokenizer([PROMPT, "The golden"], return_tensors="pt", padding=True, padding_side="left")
    for name, cls, extra in (("causal_lm", ScratchGPTForCausalLM, {}),
                             ("classifier", ScratchGPTForSequenceClassification,
                              dict(num_labels=3, id2label={0: "a", 1: "b", 2: "c"}, label2id={"a": 0, "b": 1, "c": 2}))):
        torch.manual_seed(0)
        model = cls(ScratchGPTConfig(**{**config.to_dict(), **extra})).eval()
        folder = HERE / name
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        with torch.no_grad():
            logits = model(**inputs).logits
        expected = {"text": [PROMPT, "The golden"], "input_ids": inputs["input_ids"].tolist(),
                    "attention_mask": inputs["attention_mask"].tolist(), "logits": logits.tolist()}
        (folder / "expected.json").write_text(json.dumps(expected))


if __name__ == "__main__":
    main()
