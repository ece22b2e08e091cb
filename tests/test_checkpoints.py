"""Real checkpoints through every command: GPT-2 folders (with GPT-2's tokenizer as it ships: no pad
token, no chat template) and the book's own `GPTModel` state dict (`scratch-gpt import-book`).

Everything is a tiny stand-in built here: a random `GPT2LMHeadModel`, a byte-level BPE with
`<|endoftext|>` as its only special token, and a small re-implementation of the book's GPTModel
with the book's module names.
"""

import json
import math

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from torch import nn
from transformers import (
    AutoTokenizer,
    DataCollatorWithPadding,
    GPT2Config,
    GPT2ForSequenceClassification,
    GPT2LMHeadModel,
    PreTrainedTokenizerFast,
)

from scratch_gpt import ScratchGPTForCausalLM, ScratchGPTForSequenceClassification
from scratch_gpt.cli import main
from scratch_gpt.convert import convert_book, import_book_checkpoint
from scratch_gpt.hub import published_files
from scratch_gpt.tokenizer import CHAT_TEMPLATE, complete_tokenizer
from scratch_gpt.training.instruct import InstructionCollator, tokenize_conversation, to_messages

EOT = "<|endoftext|>"
RECORDS = [
    {"instruction": "Name the color of the sky.", "input": "", "output": "The sky is blue."},
    {"instruction": "Rewrite the sentence.", "input": "The fox is quick.", "output": "The quick fox."},
    {"instruction": "Give a number.", "input": "", "output": " 42, as a number."},
    {"instruction": "Say hello.", "input": "In French.", "output": "Bonjour!"},
] * 3
SENTENCES = [
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.",
    "### Instruction:\n### Input:\n### Response:\n",
    "The quick brown fox jumps over the lazy dog. The sky is blue. Hello, world!",
] * 10
PROBE = [[3, 17, 42, 5, 99, 11, 64, 8]]


def book_format_input(entry: dict) -> str:
    """The book's chapter-7 `format_input`."""
    text = (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request."
        "\n\n### Instruction:\n" + entry["instruction"]
    )
    return text + ("\n\n### Input:\n" + entry["input"] if entry["input"] else "")


# -------------------------------------------------------------------------- GPT-2 stand-ins
@pytest.fixture(scope="module")
def gpt2_tokenizer():
    """Like GPT-2's: byte-level BPE, `<|endoftext|>` its only special token, no pad token, no template."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=[EOT], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    backend.train_from_iterator(SENTENCES + [r["output"] for r in RECORDS], trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=EOT, eos_token=EOT, unk_token=EOT)
    assert tokenizer.pad_token is None and tokenizer.chat_template is None
    return tokenizer


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory, gpt2_tokenizer):
    """A random GPT2LMHeadModel folder with the GPT-2-style tokenizer."""
    eot = gpt2_tokenizer.eos_token_id
    config = GPT2Config(
        vocab_size=320, n_positions=128, n_embd=32, n_layer=2, n_head=4, bos_token_id=eot, eos_token_id=eot
    )
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("gpt2")
    GPT2LMHeadModel(config).save_pretrained(path)
    gpt2_tokenizer.save_pretrained(path)
    return path


def is_scratch_gpt_folder(path) -> bool:
    config = json.loads((path / "config.json").read_text())
    return config["model_type"] == "scratch_gpt" and "auto_map" in config and (path / "modeling_scratch_gpt.py").is_file()


# -------------------------------------------------------------------------- GPT-2's tokenizer, completed
def completed(gpt2_tokenizer):
    """A completed copy of the GPT-2-style tokenizer (`complete_tokenizer` changes its argument)."""
    backend = gpt2_tokenizer.backend_tokenizer
    return complete_tokenizer(PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=EOT, eos_token=EOT, unk_token=EOT))


def test_complete_tokenizer_adds_end_of_text_padding_and_the_alpaca_template(gpt2_tokenizer):
    tokenizer = completed(gpt2_tokenizer)
    assert tokenizer.pad_token == EOT and tokenizer.chat_template == CHAT_TEMPLATE
    own = PreTrainedTokenizerFast(tokenizer_object=gpt2_tokenizer.backend_tokenizer, eos_token=EOT, pad_token=EOT)
    own.chat_template = "{{ messages[0]['content'] }}"
    assert complete_tokenizer(own).chat_template == "{{ messages[0]['content'] }}"  # what is there stays
    with pytest.raises(ValueError, match="no end-of-text"):
        complete_tokenizer(PreTrainedTokenizerFast(tokenizer_object=gpt2_tokenizer.backend_tokenizer))


def test_prompt_and_training_text_are_token_identical_to_the_books(gpt2_tokenizer):
    tokenizer = completed(gpt2_tokenizer)
    eot = tokenizer.eos_token_id
    for index, entry in enumerate(RECORDS[:4]):
        messages = to_messages(entry, index, "records")
        book_prompt = tokenizer.encode(book_format_input(entry) + "\n\n### Response:\n")
        book_text = tokenizer.encode(book_format_input(entry) + "\n\n### Response:\n" + entry["output"])
        prompt = tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=True, return_dict=True)
        assert prompt["input_ids"] == book_prompt
        row = tokenize_conversation(tokenizer, messages)
        assert row["input_ids"] == book_text + [eot]  # the book's collate function appends one end-of-text
        # the answer mask covers exactly the answer and its end-of-text, although the response marker
        # is several tokens here (GPT-2's BPE has no added token for it)
        assert book_text[: len(book_prompt)] == book_prompt
        answer = len(book_text) - len(book_prompt) + 1
        assert row["assistant_mask"] == [0] * len(book_prompt) + [1] * answer


def test_collator_keeps_exactly_one_end_of_text_target_per_answer_when_it_also_pads(gpt2_tokenizer):
    tokenizer = completed(gpt2_tokenizer)
    eot = tokenizer.eos_token_id
    rows = [tokenize_conversation(tokenizer, to_messages(r, i, "records")) for i, r in enumerate(RECORDS[:4])]
    assert len({len(row["input_ids"]) for row in rows}) > 1  # padding happens
    for mask_prompt in (False, True):
        batch = InstructionCollator(tokenizer.pad_token_id, mask_prompt=mask_prompt)(rows)
        assert (batch["input_ids"] == eot).sum() > len(rows)  # end-of-text also pads ...
        assert ((batch["labels"] == eot).sum(-1) == 1).all()  # ... but is a target once per answer
        for row, labels, attention in zip(rows, batch["labels"], batch["attention_mask"]):
            last = len(row["input_ids"]) - 1
            assert labels[last] == eot and attention.sum() == last + 1 and (labels[last + 1 :] == -100).all()


def test_classifier_pools_the_last_real_token_with_gpt2_padding(gpt2_dir, gpt2_tokenizer):
    tokenizer = complete_tokenizer(AutoTokenizer.from_pretrained(gpt2_dir))
    model = ScratchGPTForSequenceClassification.from_pretrained(gpt2_dir, num_labels=2, pad_token_id=tokenizer.pad_token_id)
    texts = ["The sky is blue.", "Hello, world! The quick brown fox jumps."]
    batch = DataCollatorWithPadding(tokenizer)([tokenizer(text) for text in texts])
    assert (batch["input_ids"][0] == tokenizer.eos_token_id).any()  # padded with end-of-text
    together = model(**batch).logits
    alone = torch.cat([model(**tokenizer(text, return_tensors="pt")).logits for text in texts])
    assert (together - alone).abs().max() < 1e-5


# -------------------------------------------------------------------------- the book's GPTModel, written here
class BookLayerNorm(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.eps, self.scale, self.shift = 1e-5, nn.Parameter(torch.ones(dim)), nn.Parameter(torch.zeros(dim))

    def forward(self, x):
        mean, var = x.mean(-1, keepdim=True), x.var(-1, keepdim=True, unbiased=False)
        return self.scale * (x - mean) / torch.sqrt(var + self.eps) + self.shift


class BookGELU(nn.Module):
    def forward(self, x):
        return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


class BookAttention(nn.Module):
    def __init__(self, dim, context, heads, qkv_bias):
        super().__init__()
        self.heads = heads
        self.W_query, self.W_key, self.W_value = (nn.Linear(dim, dim, bias=qkv_bias) for _ in range(3))
        self.out_proj = nn.Linear(dim, dim)
        self.register_buffer("mask", torch.triu(torch.ones(context, context), diagonal=1))

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = (w(x).view(b, t, self.heads, c // self.heads).transpose(1, 2) for w in (self.W_query, self.W_key, self.W_value))
        scores = (q @ k.transpose(2, 3)).masked_fill(self.mask.bool()[:t, :t], -torch.inf)
        weights = torch.softmax(scores / k.shape[-1] ** 0.5, dim=-1)
        return self.out_proj((weights @ v).transpose(1, 2).reshape(b, t, c))


class BookBlock(nn.Module):
    def __init__(self, dim, context, heads, qkv_bias):
        super().__init__()
        self.att = BookAttention(dim, context, heads, qkv_bias)
        self.ff = nn.Module()
        self.ff.layers = nn.Sequential(nn.Linear(dim, 4 * dim), BookGELU(), nn.Linear(4 * dim, dim))
        self.norm1, self.norm2 = BookLayerNorm(dim), BookLayerNorm(dim)

    def forward(self, x):
        x = x + self.att(self.norm1(x))
        return x + self.ff.layers(self.norm2(x))


class BookGPT(nn.Module):
    def __init__(self, vocab=300, context=24, dim=32, layers=2, heads=4, qkv_bias=False):
        super().__init__()
        self.tok_emb, self.pos_emb = nn.Embedding(vocab, dim), nn.Embedding(context, dim)
        self.trf_blocks = nn.Sequential(*(BookBlock(dim, context, heads, qkv_bias) for _ in range(layers)))
        self.final_norm = BookLayerNorm(dim)
        self.out_head = nn.Linear(dim, vocab, bias=False)

    def forward(self, idx):
        x = self.tok_emb(idx) + self.pos_emb(torch.arange(idx.shape[1]))
        return self.out_head(self.final_norm(self.trf_blocks(x)))


def book_model(tied: bool, qkv_bias: bool) -> BookGPT:
    torch.manual_seed(0)
    model = BookGPT(qkv_bias=qkv_bias)
    for parameter in model.parameters():  # the book's norms start at 1 / 0: make every weight count
        parameter.data.normal_(0, 0.3)
    if tied:
        model.out_head.weight = model.tok_emb.weight
    return model.eval()


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("qkv_bias", [True, False])
def test_book_state_dict_imports_exactly(tmp_path, tied, qkv_bias):
    book = book_model(tied, qkv_bias)
    torch.save(book.state_dict(), tmp_path / "model.pth")
    out = import_book_checkpoint(tmp_path / "model.pth", tmp_path / "out", num_heads=4)
    ours = ScratchGPTForCausalLM.from_pretrained(out).eval()
    config = ours.config
    assert (config.vocab_size, config.max_position_embeddings, config.hidden_size, config.num_hidden_layers) == (300, 24, 32, 2)
    assert (config.qkv_bias, config.tie_word_embeddings, config.hidden_act) == (qkv_bias, tied, "gelu_new")
    x = torch.tensor(PROBE)
    with torch.no_grad():
        assert (ours(x).logits - book(x)).abs().max() < 1e-5
    assert is_scratch_gpt_folder(out)
    assert "model.safetensors" in published_files(out)  # an ordinary folder: `push` accepts it


def test_book_greedy_generation_is_identical():
    book = book_model(tied=True, qkv_bias=True)
    config, state = convert_book(book.state_dict(), num_heads=4)
    model = ScratchGPTForCausalLM(config)
    model.load_state_dict(state)
    x = torch.tensor(PROBE)[:, :4]
    expected = x
    with torch.no_grad():
        for _ in range(10):  # the book's generate_text_simple
            expected = torch.cat([expected, book(expected)[:, -1].argmax(-1, keepdim=True)], dim=1)
    got = model.eval().generate(x, max_new_tokens=10, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert torch.equal(got, expected)


def test_import_book_command_reads_the_chapter_5_dict_with_the_books_config(tmp_path, gpt2_tokenizer, capsys):
    book = book_model(tied=False, qkv_bias=False)
    torch.save({"model_state_dict": book.state_dict(), "optimizer_state_dict": {"state": {}, "param_groups": []}},
               tmp_path / "model_and_optimizer.pth")
    (tmp_path / "config.json").write_text(json.dumps({"vocab_size": 300, "emb_dim": 32, "n_heads": 4, "drop_rate": 0.1}))
    gpt2_tokenizer.save_pretrained(tmp_path / "tok")
    code = main(["import-book", str(tmp_path / "model_and_optimizer.pth"), str(tmp_path / "out"),
                 "--config-json", str(tmp_path / "config.json"), "--tokenizer", str(tmp_path / "tok")])
    assert code == 0, capsys.readouterr().err
    out = tmp_path / "out"
    with torch.no_grad():
        assert (ScratchGPTForCausalLM.from_pretrained(out)(torch.tensor(PROBE)).logits - book(torch.tensor(PROBE))).abs().max() < 1e-5
    tokenizer = AutoTokenizer.from_pretrained(out)  # saved completed, for chat and pipeline
    assert tokenizer.pad_token == EOT and tokenizer.chat_template == CHAT_TEMPLATE
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == tokenizer.eos_token_id


def bad_book_checkpoints(tmp_path):
    state = book_model(tied=True, qkv_bias=False).state_dict()
    cases = {
        "missing": ({k: v for k, v in state.items() if k != "trf_blocks.1.norm2.scale"}, "missing keys ['trf_blocks.1.norm2.scale']"),
        "unexpected": ({**state, "out_head.bias": torch.zeros(300)}, "unexpected keys ['out_head.bias']"),
        "list": ([torch.zeros(2)], "holds a list that is not a state dict"),
        "module": (BookGPT(), "is not a state dict that torch.load reads with weights_only=True"),
    }
    for name, (content, message) in cases.items():
        torch.save(content, tmp_path / f"{name}.pth")
        yield tmp_path / f"{name}.pth", message
    (tmp_path / "text.pth").write_text("not a checkpoint")
    yield tmp_path / "text.pth", "is not a state dict that torch.load reads"


def test_bad_book_checkpoints_fail_with_one_sentence(tmp_path, capsys):
    for path, message in bad_book_checkpoints(tmp_path):
        code = main(["import-book", str(path), str(tmp_path / "out"), "--num-heads", "4"])
        err = capsys.readouterr().err
        assert code == 2 and message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    good = tmp_path / "good.pth"
    torch.save(book_model(tied=True, qkv_bias=False).state_dict(), good)
    assert main(["import-book", str(good), str(tmp_path / "out")]) == 2
    assert "pass --num-heads" in capsys.readouterr().err
    assert main(["import-book", str(good), str(tmp_path / "out"), "--num-heads", "5"]) == 2  # 32 is not a multiple of 5
    assert "num_attention_heads" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# -------------------------------------------------------------------------- every command on a GPT-2 folder
def run(argv, capsys):
    code = main([str(arg) for arg in argv])
    return code, capsys.readouterr()


def test_an_unsupported_architecture_and_a_misfitting_tokenizer_are_one_sentence(tmp_path, gpt2_dir, capsys):
    bert = tmp_path / "bert"
    bert.mkdir()
    config = json.loads((gpt2_dir / "config.json").read_text())
    (bert / "config.json").write_text(json.dumps({**config, "model_type": "bert"}))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (bert / name).write_bytes((gpt2_dir / name).read_bytes())
    (tmp_path / "d.json").write_text(json.dumps(RECORDS))
    code, out = run(["finetune-instruct", "--model", bert, "--data", tmp_path / "d.json", "--output", tmp_path / "o"], capsys)
    assert code == 2 and "model type 'bert'; it reads scratch_gpt, gpt2" in out.err and "Traceback" not in out.err

    classifier = tmp_path / "gpt2-classifier"
    GPT2ForSequenceClassification(GPT2Config.from_dict(config)).save_pretrained(classifier)
    code, out = run(["export-gpt2", classifier, tmp_path / "o"], capsys)
    assert code == 2 and "holds a GPT2ForSequenceClassification; the GPT-2 checkpoints read are GPT2LMHeadModel" in out.err

    small = tmp_path / "small"  # a GPT-2 with fewer embedding rows than the tokenizer has tokens
    GPT2LMHeadModel(GPT2Config(vocab_size=100, n_positions=64, n_embd=8, n_layer=1, n_head=2)).save_pretrained(small)
    AutoTokenizer.from_pretrained(gpt2_dir).save_pretrained(small)
    code, out = run(["finetune-instruct", "--model", small, "--data", tmp_path / "d.json", "--output", tmp_path / "o"], capsys)
    assert code == 2 and "The tokenizer has" in out.err and "Traceback" not in out.err
    assert not (tmp_path / "o").exists()


def test_chat_and_export_on_a_gpt2_folder_are_exact(tmp_path, gpt2_dir, capsys):
    gpt2 = GPT2LMHeadModel.from_pretrained(gpt2_dir).eval()
    tokenizer = complete_tokenizer(AutoTokenizer.from_pretrained(gpt2_dir))
    # chat: the Alpaca prompt, greedy, the same tokens as GPT-2's own generate
    messages = [{"role": "user", "content": "Name the color of the sky."}]
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True, return_tensors="pt")
    expected = gpt2.generate(**inputs, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    expected = tokenizer.decode(expected[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    code, out = run(["chat", gpt2_dir, "--prompt", "Name the color of the sky.", "--max-new-tokens", "8"], capsys)
    assert code == 0, out.err
    assert out.out.strip() == expected.strip()
    # export-gpt2 of a GPT-2 folder: converted in, written back out, the same function
    code, out = run(["export-gpt2", gpt2_dir, tmp_path / "exported"], capsys)
    assert code == 0, out.err
    exported = GPT2LMHeadModel.from_pretrained(tmp_path / "exported").eval()
    x = torch.tensor(PROBE)
    with torch.no_grad():
        assert (exported(x).logits - gpt2(x).logits).abs().max() < 1e-5
    assert AutoTokenizer.from_pretrained(tmp_path / "exported").eos_token == EOT


@pytest.mark.slow
def test_every_training_command_takes_a_gpt2_folder_and_saves_a_scratch_gpt_folder(tmp_path, gpt2_dir, capsys):
    common = ["--max-steps", "2", "--batch-size", "4", "--no-progress", "--report-to", "none"]
    # pretrain --init-from: the GPT-2 checkpoint continues training as a ScratchGPT
    (tmp_path / "corpus.txt").write_text("\n".join(SENTENCES))
    code, out = run(["pretrain", "--data", tmp_path / "corpus.txt", "--init-from", gpt2_dir, "--tokenizer", gpt2_dir,
                     "--block-size", "32", "--eval-every", "0", "--output-dir", tmp_path / "pretrain", *common], capsys)
    assert code == 0, out.err
    assert is_scratch_gpt_folder(tmp_path / "pretrain" / "model")
    assert AutoTokenizer.from_pretrained(tmp_path / "pretrain" / "model").pad_token == EOT

    # finetune-classifier: a ScratchGPT classifier on the converted body, pooled on the last real token
    texts = [f"The sky is blue {i}." if i % 2 else f"The quick fox {i} says hello!" for i in range(20)]
    (tmp_path / "labels.csv").write_text("text,label\n" + "".join(f"{text},{i % 2}\n" for i, text in enumerate(texts)))
    code, out = run(["finetune-classifier", "--model", gpt2_dir, "--data", tmp_path / "labels.csv",
                     "--output-dir", tmp_path / "classifier", *common], capsys)
    assert code == 0, out.err
    assert is_scratch_gpt_folder(tmp_path / "classifier")
    assert json.loads((tmp_path / "classifier" / "config.json").read_text())["architectures"] == ["ScratchGPTForSequenceClassification"]

    # finetune-instruct: GPT-2's tokenizer gains end-of-text padding and the Alpaca template, saved with the model
    (tmp_path / "instructions.json").write_text(json.dumps(RECORDS))
    code, out = run(["finetune-instruct", "--model", gpt2_dir, "--data", tmp_path / "instructions.json",
                     "--output-dir", tmp_path / "instruct", "--max-new-tokens", "4", "--val-fraction", "0.25", *common], capsys)
    assert code == 0, out.err
    instruct = tmp_path / "instruct"
    assert is_scratch_gpt_folder(instruct)
    tokenizer = AutoTokenizer.from_pretrained(instruct)
    assert tokenizer.pad_token == EOT and tokenizer.chat_template == CHAT_TEMPLATE
    code, out = run(["chat", instruct, "--prompt", "Say hello."], capsys)
    assert code == 0, out.err
    code, out = run(["export-gpt2", instruct, tmp_path / "instruct-gpt2"], capsys)
    assert code == 0, out.err
    assert json.loads((tmp_path / "instruct-gpt2" / "config.json").read_text())["model_type"] == "gpt2"


@pytest.mark.slow
def test_a_lora_adapter_on_a_gpt2_base_chats_on_the_converted_base(tmp_path, gpt2_dir, capsys):
    (tmp_path / "instructions.json").write_text(json.dumps(RECORDS))
    code, out = run(["finetune-instruct", "--model", gpt2_dir, "--data", tmp_path / "instructions.json", "--lora",
                     "--output-dir", tmp_path / "adapter", "--max-new-tokens", "4", "--val-fraction", "0.25",
                     "--max-steps", "2", "--batch-size", "4", "--no-progress"], capsys)
    assert code == 0, out.err
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    code, out = run(["chat", tmp_path / "adapter", "--prompt", "Say hello.", "--max-new-tokens", "4"], capsys)
    assert code == 0 and "Traceback" not in out.err, out.err
