"""`scratch-gpt export MODEL OUT --to gguf`, proven in llama.cpp (through llama-cpp-python).

Tiny models of each shape are trained a few dozen steps here (so that their predictions are not
flat), exported, and run by llama.cpp next to transformers on a held-out text, llama.cpp with an f32
KV cache (its default, f16, adds about 1e-3 of its own). The metric: at every position, the
log-probability of every token of the vocabulary (log-softmax of the logits, in float64), llama.cpp's
against our model's:

- f32: the relative error of the log-probability of the actual next token is at most 0.1% at every
  position; no log-probability of the vocabulary is off by more than 1e-4 in the Llama family, 5e-3
  in GPT-2's (llama.cpp's CPU GELU looks its values up in an f16 table; measured: 3e-6 and 9e-4);
- f16: no log-probability off by more than 0.02 (measured: at most 5e-3);
- q8_0 (widths are multiples of 32): no log-probability off by more than 0.3 (measured: at most 0.14;
  these rows are only 64 numbers wide).

Greedy decoding gives the same 20 token ids, llama.cpp tokenizes as our tokenizer does, and
llama-cpp-python's chat completion (the chat template in the file) answers as `scratch-gpt chat`.
"""

import contextlib
import json

import gguf
import llama_cpp  # the test extra installs it (and gguf), as the llama-cpp extra does
import numpy as np
import pytest
import torch
from conftest import TINY_CORPUS

from scratch_gpt.cli import main

HELD_OUT = "The lazy dog predicts the next word, and attention returns a + b.\nHello, tokens!"
STEPS = 60

LLAMA = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
             rope_theta=10000.0, rms_norm_eps=1e-5)  # fmt: skip
LLAMA3_ROPE = dict(rope_type="llama3", factor=4.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=32)
# shape name -> (preset, overrides, the llama.cpp architecture it becomes)
SHAPES = {
    "gpt2": ("tiny", dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2), "gpt2"),
    "gpt2-untied-no-bias": ("tiny", dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, tie_word_embeddings=False,
                                         qkv_bias=False, attention_bias=False, mlp_bias=False), "gpt2"),  # fmt: skip
    "llama": ("smollm2-135m", LLAMA, "llama"),
    "qwen2": ("smollm2-135m", dict(LLAMA, qkv_bias=True), "qwen2"),
    "qwen3": ("smollm2-135m", dict(LLAMA, qk_norm=True, head_dim=32), "qwen3"),
    "llama3-rope-biases": ("smollm2-135m", dict(LLAMA, rope_scaling=LLAMA3_ROPE, qkv_bias=True, attention_bias=True, mlp_bias=True), "llama"),
}


def train_briefly(model, tokenizer, steps: int = STEPS):
    """A few dozen AdamW steps on the tiny corpus: predictions that are no longer flat."""
    ids = torch.tensor(tokenizer("".join(TINY_CORPUS[:5]) * 4)["input_ids"])
    blocks = ids[: len(ids) // 64 * 64].view(-1, 64)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for step in range(steps):
        batch = blocks[step % len(blocks) :][:4]
        model(input_ids=batch, labels=batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval()


@pytest.fixture(scope="module")
def trained_folders(tmp_path_factory, tiny_tokenizer):
    """shape name -> a folder with a briefly trained tiny model of that shape and the project's tokenizer."""
    from scratch_gpt import ScratchGPTConfig, ScratchGPTForCausalLM
    from scratch_gpt.tokenizer import config_kwargs

    root, folders = tmp_path_factory.mktemp("gguf"), {}
    for name, (preset, overrides, _) in SHAPES.items():
        config = ScratchGPTConfig.from_preset(preset, max_position_embeddings=128, **overrides, **config_kwargs(tiny_tokenizer))
        torch.manual_seed(0)
        model = train_briefly(ScratchGPTForCausalLM(config), tiny_tokenizer)
        model.save_pretrained(root / name)
        tiny_tokenizer.save_pretrained(root / name)
        folders[name] = root / name
    return folders


def export(folder, out, outtype="f32"):
    assert main(["export", str(folder), str(out), "--to", "gguf", "--outtype", outtype]) == 0
    return out / "model.gguf"


F32 = 0  # ggml's type number of float32


def load(path, **options):
    """The GGUF file in llama.cpp, every position's logits kept, an f32 KV cache."""
    return llama_cpp.Llama(
        model_path=str(path), n_ctx=128, logits_all=True, verbose=False, n_threads=1, type_k=F32, type_v=F32, **options
    )


def log_probs(path, ids: list[int]) -> np.ndarray:
    """llama.cpp's log-softmax at every position of `ids` (positions x vocabulary), in float64."""
    with contextlib.closing(load(path)) as llm:
        llm.eval(ids)
        logits = torch.tensor(np.array(llm.scores[: len(ids)]), dtype=torch.float64)
    return torch.log_softmax(logits, dim=-1).numpy()


def our_log_probs(folder, ids: list[int]) -> np.ndarray:
    from scratch_gpt import ScratchGPTForCausalLM

    model = ScratchGPTForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].double()
    return torch.log_softmax(logits, dim=-1).numpy()


def differences(ours: np.ndarray, theirs: np.ndarray, ids: list[int]) -> tuple[float, float]:
    """(max relative error of the next token's log-probability, max absolute difference of any log-probability)."""
    positions = np.arange(len(ids) - 1)
    ours_next, theirs_next = ours[positions, ids[1:]], theirs[positions, ids[1:]]
    return float(np.max(np.abs(theirs_next - ours_next) / np.abs(ours_next))), float(np.max(np.abs(theirs - ours)))


@pytest.mark.slow
@pytest.mark.parametrize("shape", SHAPES)
def test_f32_log_probabilities_match_transformers_within_a_tenth_of_a_percent(trained_folders, tmp_path, tiny_tokenizer, shape):
    path = export(trained_folders[shape], tmp_path / "out")
    reader = gguf.GGUFReader(path)
    assert reader.fields["general.architecture"].contents() == SHAPES[shape][2]
    ids = tiny_tokenizer(HELD_OUT)["input_ids"]
    ours = our_log_probs(trained_folders[shape], ids)
    assert np.mean(np.max(ours, axis=-1)) > -2.5  # trained: the likeliest token is far above 1/448 (-6.1)
    relative, absolute = differences(ours, log_probs(path, ids), ids)
    assert relative <= 1e-3 and absolute <= (5e-3 if SHAPES[shape][2] == "gpt2" else 1e-4), (relative, absolute)


@pytest.mark.slow
@pytest.mark.parametrize("shape", ["gpt2", "llama"])
@pytest.mark.parametrize("outtype, bound", [("f16", 0.02), ("q8_0", 0.3)])
def test_f16_and_q8_0_log_probabilities_stay_within_their_bounds(trained_folders, tmp_path, tiny_tokenizer, shape, outtype, bound):
    path = export(trained_folders[shape], tmp_path / "out", outtype)
    ids = tiny_tokenizer(HELD_OUT)["input_ids"]
    _, absolute = differences(our_log_probs(trained_folders[shape], ids), log_probs(path, ids), ids)
    assert absolute <= bound, absolute
    sizes = {"f16": 2, "q8_0": 34 / 32}
    f32_size = export(trained_folders[shape], tmp_path / "f32").stat().st_size
    assert path.stat().st_size < f32_size * (sizes[outtype] / 4 + 0.1)  # the matrices shrank as promised


def greedy_ids(step, prompt: list[int], count: int = 20) -> list[int]:
    ids = list(prompt)
    for _ in range(count):
        ids.append(int(np.argmax(step(ids))))
    return ids[len(prompt) :]


@pytest.mark.slow
@pytest.mark.parametrize("shape", ["gpt2", "llama"])
def test_greedy_decoding_gives_the_same_20_tokens(trained_folders, tmp_path, tiny_tokenizer, shape):
    from scratch_gpt import ScratchGPTForCausalLM

    path = export(trained_folders[shape], tmp_path / "out")
    model = ScratchGPTForCausalLM.from_pretrained(trained_folders[shape]).eval()
    prompt = tiny_tokenizer("The quick brown")["input_ids"]
    with torch.no_grad():
        ours = greedy_ids(lambda ids: model(input_ids=torch.tensor([ids])).logits[0, -1].numpy(), prompt)
    expected = model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=20)[0, len(prompt) :].tolist()
    assert ours[: len(expected)] == expected  # the loop is transformers' greedy decoding (until an end-of-text)
    with contextlib.closing(load(path)) as llm:

        def llama_step(ids):
            llm.reset()
            llm.eval(ids)
            return llm.scores[len(ids) - 1]

        assert greedy_ids(llama_step, prompt) == ours
    assert len(set(ours)) > 3  # a text, not one token repeated


def pre_tokenized_tokenizer(pre_tokenizer, corpus, ignore_merges=False):
    """A byte-level BPE like ours, trained here, with another pre-tokenizer (as SmolLM2's, Qwen2's, Llama 3's)."""
    from tokenizers import Tokenizer, decoders, models, trainers
    from tokenizers import pre_tokenizers as pre
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(ignore_merges=ignore_merges))
    backend.pre_tokenizer = pre_tokenizer(pre)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"], initial_alphabet=pre.ByteLevel.alphabet())
    backend.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>", bos_token="<|endoftext|>")


QWEN2_SPLIT = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
LLAMA3_SPLIT = QWEN2_SPLIT.replace(r"\p{N}|", r"\p{N}{1,3}|")
PRE_TOKENIZERS = {  # llama.cpp's name -> how the tokenizer splits text before BPE
    "smollm": (lambda pre: pre.Sequence([pre.Digits(individual_digits=True), pre.ByteLevel(add_prefix_space=False)]), False),
    "qwen2": (lambda pre: pre.Sequence([pre.Split(__import__("tokenizers").Regex(QWEN2_SPLIT), "isolated"),
                                        pre.ByteLevel(add_prefix_space=False, use_regex=False)]), False),  # fmt: skip
    "llama-bpe": (lambda pre: pre.Sequence([pre.Split(__import__("tokenizers").Regex(LLAMA3_SPLIT), "isolated"),
                                            pre.ByteLevel(add_prefix_space=False, use_regex=False)]), True),  # fmt: skip
}
TRICKY = (
    "Hello, world!  It's 2024: 12345 apples & 3.14 pies.\n\n\tdef add(a, b):\n    return a + b\n"
    "Ünïcödé ünd émojis 🦙🚀, 我想在 I'VE we'll DON'T   trailing   \n\n\n### Response:\n<|endoftext|>x"
)


@pytest.mark.slow
@pytest.mark.parametrize("pre_tokenizer", ["gpt-2", *PRE_TOKENIZERS])
def test_llama_cpp_tokenizes_as_the_tokenizer_does(trained_folders, tmp_path, tiny_tokenizer, pre_tokenizer):
    from scratch_gpt import ScratchGPTForCausalLM

    folder = trained_folders["llama"]
    tokenizer = tiny_tokenizer
    if pre_tokenizer != "gpt-2":
        make, ignore_merges = PRE_TOKENIZERS[pre_tokenizer]
        tokenizer = pre_tokenized_tokenizer(make, [*TINY_CORPUS, "12345 3.14 I'VE we'll"] * 3, ignore_merges)
        folder = tmp_path / "model"
        ScratchGPTForCausalLM.from_pretrained(trained_folders["llama"]).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    path = export(folder, tmp_path / "out")
    assert gguf.GGUFReader(path).fields["tokenizer.ggml.pre"].contents() == pre_tokenizer
    with contextlib.closing(load(path, vocab_only=True)) as llm:
        for text in (TRICKY, HELD_OUT, *TINY_CORPUS[:5]):
            ids = tokenizer(text)["input_ids"]
            assert llm.tokenize(text.encode(), add_bos=False, special=True) == ids, text
            assert llm.detokenize(ids, special=True).decode() == tokenizer.decode(ids)


def test_a_tokenizer_llama_cpp_cannot_split_alike_is_refused_in_one_sentence():
    from scratch_gpt.errors import BadInput
    from scratch_gpt.gguf_export import pre_tokenizer_name

    ours = {"model": {"type": "BPE"}, "decoder": {"type": "ByteLevel"},
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}}  # fmt: skip
    assert pre_tokenizer_name(ours) == "gpt-2"
    for change in (
        {"pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": True, "use_regex": True}},  # GPT-2 with a prefix space
        {"pre_tokenizer": {"type": "Whitespace"}},
        {"pre_tokenizer": {"type": "Sequence", "pretokenizers": [{"type": "Split", "pattern": {"Regex": r"\w+"}, "behavior": "Isolated"},
                                                                  {"type": "ByteLevel", "use_regex": False}]}},  # fmt: skip
        {"model": {"type": "Unigram"}},
        {"normalizer": {"type": "Lowercase"}},
    ):
        with pytest.raises(BadInput, match=r"^llama\.cpp cannot tokenize exactly as this tokenizer does: .*\.$"):
            pre_tokenizer_name({**ours, **change})


@pytest.mark.slow
def test_the_chat_template_in_the_file_answers_as_scratch_gpt_chat(trained_folders, tmp_path, capsys):
    """A tiny instruction-tuned model (each instruction asks for one sentence of the corpus): llama-cpp-python's
    chat completion, greedy, renders the prompt with the chat template in the file and answers as `chat` does."""
    names = ["one", "two", "three", "four"]
    records = [{"instruction": f"Write sentence {name}.", "output": text} for name, text in zip(names, TINY_CORPUS)] * 10
    (tmp_path / "toy.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "instruct"
    argv = ["finetune-instruct", "--model", str(trained_folders["gpt2"]), "--data", str(tmp_path / "toy.jsonl"), "--output", str(out),
            "--mask-prompt", "--lr", "5e-3", "--max-steps", "60", "--batch-size", "8", "--max-new-tokens", "12", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    path = export(out, tmp_path / "gguf")
    answers = []
    with contextlib.closing(load(path)) as llm:
        for prompt, system in (("Write sentence one.", None), ("Write sentence three.", None), ("Write sentence two.", "Be brief.")):
            capsys.readouterr()
            assert main(["chat", str(out), "--prompt", prompt, *(["--system", system] if system else [])]) == 0
            expected = capsys.readouterr().out.strip()
            messages = [*([{"role": "system", "content": system}] if system else []), {"role": "user", "content": prompt}]
            reply = llm.create_chat_completion(messages, temperature=0.0, max_tokens=12)
            assert reply["choices"][0]["message"]["content"].strip() == expected, prompt
            answers.append(expected)
    assert len(set(answers)) > 1 and max(len(answer.split()) for answer in answers) >= 3, answers  # texts, not one word


ALPACA_MODELFILE = '''FROM ./model.gguf

TEMPLATE """{{- if .System }}{{ .System }}{{ else }}{{ "Below is an instruction that describes a task. Write a response that appropriately completes the request." }}{{ end }}
{{- range .Messages }}
{{- if eq .Role "user" }}{{ "\\n\\n### Instruction:\\n" }}{{ .Content }}
{{- else if eq .Role "assistant" }}{{ "\\n\\n### Response:\\n" }}{{ .Content }}{{ "<|endoftext|>" }}
{{- end }}
{{- end }}{{ "\\n\\n### Response:\\n" }}"""

PARAMETER stop "<|endoftext|>"
PARAMETER stop "### Instruction:"
PARAMETER num_ctx 128
'''


@pytest.mark.slow
def test_the_modelfile_translates_the_alpaca_template_to_ollamas_syntax(trained_folders, tmp_path):
    export(trained_folders["gpt2"], tmp_path / "out", "f16")
    assert (tmp_path / "out" / "Modelfile").read_text() == ALPACA_MODELFILE
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [".scratch_gpt", "Modelfile", "model.gguf"]


CHATML = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}{{ '<|im_start|>system\\nYou are helpful.<|im_end|>\\n' }}"
    "{% endif %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def test_a_chatml_template_is_read_as_turns_and_an_unusual_one_is_left_to_ollama(tiny_tokenizer):
    from scratch_gpt.gguf_export import modelfile, render_with_pieces, turn_pieces

    def renderer(template):
        return lambda messages, prompt: tiny_tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=prompt, chat_template=template
        )

    pieces = turn_pieces(renderer(CHATML))
    assert pieces == dict(
        default_system="<|im_start|>system\nYou are helpful.<|im_end|>\n", system_before="<|im_start|>system\n",
        system_after="<|im_end|>\n", user_before="<|im_start|>user\n", user_after="<|im_end|>\n",
        assistant_before="<|im_start|>assistant\n", assistant_after="<|im_end|>\n", generation_prompt="<|im_start|>assistant\n",
    )  # fmt: skip
    conversation = [{"role": "system", "content": "Hi."}, {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                    {"role": "user", "content": "c"}]  # fmt: skip
    assert render_with_pieces(pieces, conversation) == renderer(CHATML)(conversation, True)
    numbered = "{% for m in messages %}{{ loop.index }}. {{ m['content'] }}\n{% endfor %}"  # not the same text around every turn
    assert turn_pieces(renderer(numbered)) is None
    tokenizer = tiny_tokenizer.__class__(tokenizer_object=tiny_tokenizer.backend_tokenizer, eos_token="<|endoftext|>", chat_template=numbered)
    text, has_template = modelfile(tokenizer, 128)
    assert not has_template and "TEMPLATE" not in text and 'PARAMETER stop "<|endoftext|>"' in text


def test_every_tensor_name_is_one_llama_cpp_knows_for_its_architecture(tiny_tokenizer):
    from scratch_gpt import ScratchGPTConfig, ScratchGPTForCausalLM
    from scratch_gpt.gguf_export import gguf_architecture, gguf_tensors

    for preset, overrides, architecture in SHAPES.values():
        config = ScratchGPTConfig.from_preset(preset, max_position_embeddings=128, vocab_size=448, **overrides)
        assert gguf_architecture(config) == architecture
        model = ScratchGPTForCausalLM(config)
        arch = next(a for a, name in gguf.MODEL_ARCH_NAMES.items() if name == architecture)
        known = {gguf.TENSOR_NAMES[t].format(bid=i) for t in gguf.MODEL_TENSORS[arch] for i in range(config.num_hidden_layers)}
        names = {name.rsplit(".", 1)[0] for name in gguf_tensors(model, architecture)}
        assert names <= known, names - known
