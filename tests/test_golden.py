"""Artifacts saved by older versions keep loading, with and without the package, with the same logits.

The folders under tests/golden/ were written once by tests/golden/make_golden.py at the commit that
added them; they are never regenerated.
"""

import json
from pathlib import Path

import pytest
import torch

GOLDEN = Path(__file__).parent / "golden"
KINDS = {"causal_lm": "AutoModelForCausalLM", "classifier": "AutoModelForSequenceClassification"}


def expected(kind: str) -> dict:
    return json.loads((GOLDEN / kind / "expected.json").read_text())


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_golden_folder_loads_with_the_package(kind):
    import transformers

    import scratch_gpt  # noqa: F401  (registers the Auto classes)

    want = expected(kind)
    model = getattr(transformers, KINDS[kind]).from_pretrained(GOLDEN / kind).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(GOLDEN / kind)
    assert tokenizer(want["text"][0])["input_ids"] == [i for i, m in zip(want["input_ids"][0], want["attention_mask"][0]) if m]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor(want["input_ids"]), attention_mask=torch.tensor(want["attention_mask"])).logits
    torch.testing.assert_close(logits, torch.tensor(want["logits"]), atol=1e-6, rtol=0)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_golden_folder_loads_without_the_package(kind, run_without_scratch_gpt):
    code = f"""
import json, torch, transformers
want = json.load(open({str(GOLDEN / kind / "expected.json")!r}))
model = transformers.{KINDS[kind]}.from_pretrained({str(GOLDEN / kind)!r}, trust_remote_code=True).eval()
with torch.no_grad():
    logits = model(input_ids=torch.tensor(want["input_ids"]), attention_mask=torch.tensor(want["attention_mask"])).logits
print((logits - torch.tensor(want["logits"])).abs().max().item())
"""
    assert float(run_without_scratch_gpt(code).strip().splitlines()[-1]) <= 1e-6
