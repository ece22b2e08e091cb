"""`scratch-gpt inspect`: the report's numbers, recomputed here from the model's own outputs.

report.html carries its numbers as JSON (`<script type="application/json" id="data">`). Each test
reads them back with its own parser and checks them against what the model returns, against the
attention module's values (captured with forward hooks), and against a merged LoRA model and a
classifier; the page opens in headless Chromium without a request or a console error; and the
Inspect tab of `chat --web` shows the same numbers.
"""

import html
import json
import os
import re
import shutil

import pytest
import torch

from scratch_gpt import ScratchGPTConfig, ScratchGPTForCausalLM, ScratchGPTForSequenceClassification
from scratch_gpt.cli import main
from scratch_gpt.tokenizer import config_kwargs

PROMPT = "The quick brown fox jumps over the lazy dog."
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]  # fmt: skip  (as tests/test_web.py)


def report_numbers(folder) -> dict:
    """The JSON a report.html holds (parsed here, not with the package's reader)."""
    page = (folder / "report.html").read_text(encoding="utf-8")
    found = re.search(r'<script type="application/json" id="data">(.*?)</script>', page, flags=re.S)
    return json.loads(found.group(1))


def inspect(model_dir, out, *extra) -> dict:
    code = main(["inspect", str(model_dir), "--prompt", PROMPT, "--output-dir", str(out), *extra])
    assert code == 0
    return report_numbers(out)


@pytest.fixture
def base_dir(make_base_dir):
    return make_base_dir()


def test_the_reports_numbers_are_the_models_own(base_dir, tmp_path, tiny_tokenizer, capsys):
    numbers = inspect(base_dir, tmp_path / "report")
    printed = capsys.readouterr().out
    model = ScratchGPTForCausalLM.from_pretrained(base_dir).eval()
    ids = tiny_tokenizer(PROMPT, return_tensors="pt")["input_ids"]

    # Values and outputs of every attention module, through hooks: V from the fused projection's
    # output, the attention output from the output projection's input.
    values, attended = {}, {}
    for index, block in enumerate(model.model.layers):
        attention = block.attn
        attention.qkv_proj.register_forward_hook(lambda m, i, o, index=index, a=attention: values.__setitem__(index, o.split(a.sizes, -1)[2]))
        attention.out_proj.register_forward_hook(lambda m, i, o, index=index: attended.__setitem__(index, i[0]))
    with torch.no_grad():
        outputs = model(ids, output_attentions=True, output_hidden_states=True)
    length, heads, size = ids.shape[1], model.config.num_attention_heads, model.config.head_dim

    # tokens: the ids, and bytes that put together are the prompt
    assert [t["id"] for t in numbers["tokens"]] == ids[0].tolist()
    assert b"".join(bytes.fromhex(t["bytes"]) for t in numbers["tokens"]) == PROMPT.encode()

    # attention: every layer and head by default; rows sum to 1, nothing above the diagonal, the model's weights
    assert numbers["layers"] == [0, 1] and numbers["heads"] == [0, 1, 2, 3]
    for layer in numbers["attention"]:
        weights = torch.tensor(layer["heads"])  # (H, T, T)
        assert torch.allclose(weights.sum(-1), torch.ones(heads, length), atol=1e-5)
        causal = torch.ones(length, length, dtype=torch.bool).tril()
        assert (weights[:, ~causal] == 0).all() and (weights[:, causal] > 0).all()
        assert torch.allclose(weights, outputs.attentions[layer["layer"]][0], atol=1e-6)
        # the weights times V are the attention's output, head by head
        v = values[layer["layer"]][0].view(length, heads, size).transpose(0, 1)  # (H, T, D)
        out = attended[layer["layer"]][0].view(length, heads, size).transpose(0, 1)
        assert torch.allclose(weights @ v, out, atol=1e-5)

    # next token: the top-k of the softmax of the logits, and the loss of each actual next token
    probs = outputs.logits[0].softmax(-1)
    top = probs.topk(5)
    for t, row in enumerate(numbers["next_token"]):
        assert [c["id"] for c in row["top"]] == top.indices[t].tolist()
        assert torch.allclose(torch.tensor([c["probability"] for c in row["top"]]), top.values[t], atol=1e-6)
        if t + 1 < length:
            assert row["actual"]["id"] == ids[0, t + 1]
            assert row["actual"]["loss"] == pytest.approx(-probs[t, ids[0, t + 1]].log().item(), abs=1e-4)
    loss = model(ids, labels=ids).loss.item()
    assert numbers["mean_loss"] == pytest.approx(loss, abs=1e-4)

    # logit lens: the last layer is the model's prediction; the others, final norm + head on the hidden state
    rows = numbers["logit_lens"]["rows"]
    assert [row["name"] for row in rows] == ["embeddings", "block 0", "block 1 + final norm"]
    assert [c["id"] for c in rows[-1]["cells"]] == outputs.logits[0].argmax(-1).tolist()
    with torch.no_grad():
        first = model.lm_head(model.model.norm(model.model.embed_tokens(ids) + model.model.embed_positions(torch.arange(length))))
    assert [c["id"] for c in rows[0]["cells"]] == first[0].argmax(-1).tolist()

    # embeddings: the nearest rows by cosine
    rows_used = model.model.embed_tokens.weight[: len(tiny_tokenizer)]
    entry = numbers["embeddings"][0]
    cosine = torch.nn.functional.cosine_similarity(rows_used, rows_used[entry["token"]["id"]].unsqueeze(0), dim=-1)
    cosine[entry["token"]["id"]] = -2
    assert [n["id"] for n in entry["nearest"]] == cosine.topk(5).indices.tolist()

    # the pictures, and the terminal's summary
    for name in ("attention.png", "attention_head.png", "logit_lens.png", "next_token.png"):
        assert (tmp_path / "report" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (tmp_path / "report" / "report.html").read_text()
    assert "http://" not in page and "https://" not in page and page.count("data:image/png;base64,") == 4
    assert f"{length} tokens: " in printed and f"mean loss of the actual next tokens: {loss:.3f}" in printed
    assert "report.html" in printed


def test_layers_heads_and_top_k_choose_what_is_shown(base_dir, tmp_path):
    numbers = inspect(base_dir, tmp_path / "report", "--layers", "1", "--heads", "2", "0", "--top-k", "3")
    assert numbers["layers"] == [1] and numbers["heads"] == [2, 0] and numbers["picked"] == {"layer": 1, "head": 2}
    assert len(numbers["attention"]) == 1 and len(numbers["attention"][0]["heads"]) == 2
    assert all(len(row["top"]) == 3 for row in numbers["next_token"])
    assert all(len(entry["nearest"]) == 3 for entry in numbers["embeddings"])


def test_an_adapter_folder_is_inspected_merged_into_its_base(base_dir, tmp_path, tiny_tokenizer):
    from peft import PeftModel, get_peft_model

    from scratch_gpt.lora import lora_config

    torch.manual_seed(1)
    adapted = get_peft_model(ScratchGPTForCausalLM.from_pretrained(base_dir), lora_config(task="causal"))
    for name, parameter in adapted.named_parameters():
        if "lora_B" in name:  # B starts at zero (no change); trained adapters are not
            torch.nn.init.normal_(parameter, std=0.5)
    adapted.save_pretrained(tmp_path / "adapter")
    tiny_tokenizer.save_pretrained(tmp_path / "adapter")
    numbers = inspect(tmp_path / "adapter", tmp_path / "report")

    merged = PeftModel.from_pretrained(ScratchGPTForCausalLM.from_pretrained(base_dir), tmp_path / "adapter").merge_and_unload()
    ids = tiny_tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = merged.eval()(ids).logits[0]
        base_logits = ScratchGPTForCausalLM.from_pretrained(base_dir).eval()(ids).logits[0]
    shown = torch.tensor([[c["probability"] for c in row["top"]] for row in numbers["next_token"]])
    ids_shown = [[c["id"] for c in row["top"]] for row in numbers["next_token"]]
    assert torch.allclose(shown, logits.softmax(-1).topk(5).values, atol=1e-6)
    assert ids_shown == logits.topk(5).indices.tolist() != base_logits.topk(5).indices.tolist()  # the adapter counts


def test_a_classifier_shows_the_pooled_token_and_its_class_probabilities(tmp_path, tiny_tokenizer, capsys):
    labels = {0: "ham", 1: "spam", 2: "other"}
    config = ScratchGPTConfig.from_preset("tiny", hidden_size=32, max_position_embeddings=64, num_labels=3, id2label=labels,
                                          label2id={v: k for k, v in labels.items()}, **config_kwargs(tiny_tokenizer))  # fmt: skip
    torch.manual_seed(0)
    ScratchGPTForSequenceClassification(config).save_pretrained(tmp_path / "classifier")
    tiny_tokenizer.save_pretrained(tmp_path / "classifier")
    numbers = inspect(tmp_path / "classifier", tmp_path / "report")
    printed = capsys.readouterr().out

    model = ScratchGPTForSequenceClassification.from_pretrained(tmp_path / "classifier").eval()
    ids = tiny_tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        probs = model(ids).logits[0].softmax(-1)
    assert numbers["kind"] == "classifier" and numbers["pooled_position"] == ids.shape[1] - 1
    assert [c["label"] for c in numbers["classes"]] == ["ham", "spam", "other"]
    assert torch.allclose(torch.tensor([c["probability"] for c in numbers["classes"]]), probs, atol=1e-6)
    pooled = numbers["logit_lens"]["rows"][-1]["cells"][-1]  # the lens reads classes; its last cell is the prediction
    assert pooled["label"] == labels[int(probs.argmax())] and pooled["probability"] == pytest.approx(probs.max().item(), abs=1e-6)
    assert "next_token" not in numbers and (tmp_path / "report" / "classes.png").is_file()
    assert "pooled token: " in printed and "spam" in printed


@pytest.mark.parametrize(
    "case, argv, expected",
    [
        ("empty prompt", ["--prompt", "  "], "--prompt is empty; give the text to inspect"),
        ("too long", ["--prompt", "the lazy dog " * 60], "tokens but"),
        ("layer", ["--prompt", PROMPT, "--layers", "0", "2"], "--layers 2 is out of range: "),
        ("head", ["--prompt", PROMPT, "--heads", "4"], "--heads 4 is out of range: "),
        ("no tokenizer", ["--prompt", PROMPT], "holds no tokenizer"),
    ],
)
def test_bad_input_is_one_sentence_and_writes_nothing(base_dir, tmp_path, capsys, case, argv, expected):
    model_dir = base_dir
    if case == "no tokenizer":
        model_dir = tmp_path / "weights_only"
        model_dir.mkdir()
        for name in ("config.json", "model.safetensors"):
            shutil.copy(base_dir / name, model_dir / name)
    code = main(["inspect", str(model_dir), *argv, "--output-dir", str(tmp_path / "report")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("scratch-gpt inspect: error: ") and expected in err and err.endswith("."), err
    if case == "too long":
        assert "reads at most 64" in err
    assert not (tmp_path / "report").exists()


@pytest.mark.slow
def test_the_report_opens_offline_in_chromium_without_a_request_or_an_error(base_dir, tmp_path):
    from playwright.sync_api import sync_playwright

    assert os.path.exists(CHROMIUM), f"{CHROMIUM} is missing; run apt-get install -y chromium."
    inspect(base_dir, tmp_path / "report")
    url = (tmp_path / "report" / "report.html").as_uri()
    requests, errors = [], []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.on("request", lambda request: requests.append(request.url))
            page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(url, wait_until="load")
            sizes = page.eval_on_selector_all("img", "images => images.map(i => [i.complete, i.naturalWidth])")
            page.locator(".chip").nth(3).click()  # the page's one script: the token's row is marked
            marked = page.eval_on_selector_all("tr.lit", "rows => rows.map(r => r.id)")
            page.screenshot(path=tmp_path / "report.png", full_page=True)
        finally:
            browser.close()
    assert requests == [url] and errors == []
    assert len(sizes) == 4 and all(done and width > 100 for done, width in sizes)
    assert marked == ["next-3"]
    assert (tmp_path / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def tab_numbers(fragment: str) -> dict:
    """The JSON the Inspect tab's report holds in its folded box (html-escaped there)."""
    return json.loads(html.unescape(re.search(r'<pre class="data">(.*?)</pre>', fragment, flags=re.S).group(1)))


@pytest.mark.slow
def test_the_inspect_tab_of_the_chat_page_shows_the_reports_numbers(make_base_dir, tmp_path):
    from gradio_client import Client

    from scratch_gpt.inference import web
    from scratch_gpt.inference.generation import load_for_chat
    from scratch_gpt.inference.inspect import inspect_text

    model_dir = make_base_dir(max_position_embeddings=256)
    numbers = inspect(model_dir, tmp_path / "report")
    model, tokenizer, saved_config = load_for_chat(str(model_dir))
    system = "Answer in one word."
    page = web.chat_page(model, tokenizer, saved_config, system=system, max_new_tokens=8)
    try:
        client = Client(web.serve(page, port=None, block=False), verbose=False)
        shown = client.predict(PROMPT, api_name="/inspect")
        assert tab_numbers(shown) == numbers and shown.count("data:image/png;base64,") == 4

        # the chat's history, as Gradio's Chatbot holds it (content as a list of parts), after the system prompt
        turns = [("user", "Say fox."), ("assistant", "fox")]
        history = [{"role": role, "content": [{"type": "text", "text": text}]} for role, text in turns]
        shown = client.predict(history, api_name="/inspect_last_answer")
        messages = [{"role": "system", "content": system}, *({"role": r, "content": t} for r, t in turns)]
        expected = json.loads(json.dumps(inspect_text(model, tokenizer, tokenizer.apply_chat_template(messages, tokenize=False))))
        assert tab_numbers(shown) == expected and expected["prompt"].endswith("Say fox.\n\n### Response:\nfox<|endoftext|>")
        assert expected["prompt"].startswith(system)  # the text the chat answered, system prompt included

        with pytest.raises(Exception, match="The prompt is empty"):
            client.predict("", api_name="/inspect")
    finally:
        page.close()
