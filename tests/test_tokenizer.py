"""Stage 1: the byte-level BPE tokenizer (scratch_gpt/tokenizer.py) and `scratch-gpt train-tokenizer`."""

import json
import os
import random
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import datasets
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from tokenizers import pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from scratch_gpt import ScratchGPTConfig, ScratchGPTForCausalLM
from scratch_gpt.cli import main as scratch_gpt_main
from scratch_gpt.io_utils import mark_output
from scratch_gpt.tokenizer import (
    CHAT_TEMPLATE,
    DEFAULT_SYSTEM_PROMPT,
    EOS_TOKEN,
    MIN_VOCAB_SIZE,
    PAD_TOKEN,
    RESPONSE_MARKER,
    TEXT_CHUNK_CHARS,
    config_kwargs,
    encode_batch,
    format_alpaca_messages,
    iter_texts,
    model_vocab_size,
    train_tokenizer,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
VOCAB_SIZE = 600
WORDS = "the of and to in is that it for was on with as his he by at from this had not but are".split()
EXTRAS = ["naïve café", "日本語のテキスト", "emoji 🤖🚀", "e\u0301", "def f(x):\n    return x\n", "\t\ttabs", "a  b   c"]


def make_texts(n: int = 400, seed: int = 0) -> list[str]:
    """Deterministic documents: common English words, some code and some non-ASCII text."""
    rng = random.Random(seed)
    texts = []
    for _ in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(20, 80))]
        words.insert(rng.randrange(len(words)), rng.choice(EXTRAS))
        texts.append(" ".join(words).capitalize() + ".\n\n")
    return texts


def write_corpus(folder: Path, n_files: int = 3) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    texts = make_texts()
    files = []
    for i in range(n_files):
        file = folder / f"part{i}.txt"
        file.write_text("".join(texts[i::n_files]), encoding="utf-8")
        files.append(file)
    return files


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(make_texts(), vocab_size=VOCAB_SIZE, model_max_length=128, show_progress=False)


# --- the transformers tokenizer ----------------------------------------------------------------


def test_special_tokens_ids_and_settings(tokenizer):
    assert isinstance(tokenizer, PreTrainedTokenizerFast)
    assert tokenizer.bos_token == tokenizer.eos_token == EOS_TOKEN
    assert tokenizer.bos_token_id == tokenizer.eos_token_id == 0
    assert (tokenizer.pad_token, tokenizer.pad_token_id) == (PAD_TOKEN, 1)
    assert tokenizer.model_max_length == 128
    assert tokenizer.clean_up_tokenization_spaces is False
    assert tokenizer.chat_template == CHAT_TEMPLATE
    assert MIN_VOCAB_SIZE < len(tokenizer) <= VOCAB_SIZE
    # The response marker is one ordinary (not special) token with the last id.
    assert tokenizer.convert_tokens_to_ids(RESPONSE_MARKER) == len(tokenizer) - 1
    assert RESPONSE_MARKER not in tokenizer.all_special_tokens
    marked = tokenizer.encode("Hi" + RESPONSE_MARKER + "  ok")
    assert len(tokenizer) - 1 in marked
    assert tokenizer.decode(marked, skip_special_tokens=True) == "Hi" + RESPONSE_MARKER + "  ok"
    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    assert backend["model"]["type"] == "BPE" and backend["model"]["unk_token"] is None
    assert backend["pre_tokenizer"] == {
        "type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True
    }
    assert backend["decoder"]["type"] == "ByteLevel"
    # Every byte is in the vocabulary, so nothing is ever unknown.
    assert set(pre_tokenizers.ByteLevel.alphabet()) <= set(tokenizer.get_vocab())


def test_encoding_adds_no_special_tokens(tokenizer):
    encodings = (tokenizer("the cat")["input_ids"], tokenizer.encode("the cat"), tokenizer(["x", "the"])["input_ids"][1])
    for ids in encodings:
        assert 0 not in ids and 1 not in ids
    # The special tokens themselves are single tokens when they appear in text.
    assert tokenizer.encode(f"a{EOS_TOKEN}b{PAD_TOKEN}")[1::2] == [0, 1]


TRICKY_PIECES = [
    " ", "  ", "   ", "\n", "\n\n", "\r\n", "\t", "\x00", "\x07", "\x7f", "\u200b", "\ufeff", "e\u0301",
    "\u0301\u0301", "🤖", "👨‍👩‍👧", "🇫🇷", "中文", "日本語", "한국어", "ǅ", "ﬁ", "'s", " 's", "the", " the",
    "\U0010ffff", "\ud7ff", "Ω", "ẞ",
]
any_text = st.one_of(
    st.text(alphabet=st.characters(codec="utf-8"), max_size=200),
    st.lists(st.sampled_from(TRICKY_PIECES), max_size=40).map("".join),
    st.lists(st.one_of(st.sampled_from(TRICKY_PIECES), st.text(max_size=5)), max_size=30).map("".join),
)


@settings(max_examples=300, deadline=None)
@given(text=any_text)
def test_decode_encode_is_lossless(tokenizer, text):
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.decode(ids) == text
    assert encode_batch(tokenizer, [text, "the " + text]) == tokenizer([text, "the " + text])["input_ids"]
    assert tokenizer.decode(tokenizer.encode(text)) == text
    assert all(0 <= i < len(tokenizer) for i in ids)
    assert (0 in ids) == (EOS_TOKEN in text)


def test_bulk_encoding_ignores_padding_and_truncation_left_by_an_earlier_call(tokenizer):
    texts = ["short", "a much longer text than the first one, with many words in it"]
    expected = tokenizer(texts)["input_ids"]
    tokenizer(texts, padding=True, truncation=True, max_length=3)  # leaves both on in the Rust backend
    assert encode_batch(tokenizer, texts) == expected


# --- chat template -----------------------------------------------------------------------------


def book_prompt(entry: dict) -> str:
    """The book's `format_input` plus its response part, written out independently."""
    text = (
        "Below is an instruction that describes a task. "
        "Write a response that appropriately completes the request."
        f"\n\n### Instruction:\n{entry['instruction']}"
    )
    text += f"\n\n### Input:\n{entry['input']}" if entry["input"] else ""
    return text + "\n\n### Response:\n"


@pytest.mark.parametrize(
    "entry",
    [
        {"instruction": "Rewrite the sentence in passive voice.", "input": "The chef cooks the meal.",
         "output": "The meal is cooked by the chef."},
        {"instruction": "Name a primary color.", "input": "", "output": "Red."},
    ],
)
def test_chat_template_renders_the_book_prompt(tokenizer, entry):
    messages = format_alpaca_messages(entry)
    prompt = tokenizer.apply_chat_template(messages[:1], add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    assert prompt == book_prompt(entry)
    assert full == book_prompt(entry) + entry["output"] + EOS_TOKEN
    assert format_alpaca_messages({**entry, "output": None}) == messages[:1]


def test_chat_template_system_message_and_turns(tokenizer):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Bye"},
    ]
    rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert rendered == (
        "Be brief.\n\n### Instruction:\nHi\n\n### Response:\nHello.<|endoftext|>"
        "\n\n### Instruction:\nBye\n\n### Response:\n"
    )
    assert DEFAULT_SYSTEM_PROMPT not in rendered
    with pytest.raises(Exception, match="roles"):
        tokenizer.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)


@settings(max_examples=100, deadline=None)
@given(instruction=any_text, answer=any_text.filter(lambda s: EOS_TOKEN not in s and PAD_TOKEN not in s))
@example(instruction="", answer="  ")  # answers that start with whitespace, which the GPT-2 regex would
@example(instruction="Hi", answer="\n\nYes")  # glue to the prompt's final newline without RESPONSE_MARKER
@example(instruction="Hi\n", answer=" \t x")
def test_generation_prompt_is_a_prefix_in_text_and_tokens(tokenizer, instruction, answer):
    user = [{"role": "user", "content": instruction}]
    prompt = tokenizer.apply_chat_template(user, add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template(user + [{"role": "assistant", "content": answer}], tokenize=False)
    assert full.startswith(prompt) and full.endswith(EOS_TOKEN)
    prompt_ids = tokenizer.apply_chat_template(user, add_generation_prompt=True)["input_ids"]
    full_ids = tokenizer.apply_chat_template(user + [{"role": "assistant", "content": answer}])["input_ids"]
    assert full_ids[: len(prompt_ids)] == prompt_ids
    assert full_ids[-1] == tokenizer.eos_token_id


# --- saving, loading, determinism --------------------------------------------------------------

SAMPLE = "Hello  wörld 🤖 中文 e\u0301\n\n\tthe end.\r\n"


def test_save_and_autotokenizer_round_trip(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert type(loaded) is type(tokenizer)
    assert loaded(SAMPLE)["input_ids"] == tokenizer(SAMPLE)["input_ids"]
    assert loaded.decode(loaded.encode(SAMPLE)) == SAMPLE
    assert (loaded.bos_token_id, loaded.eos_token_id, loaded.pad_token_id) == (0, 0, 1)
    assert loaded.model_max_length == 128 and loaded.clean_up_tokenization_spaces is False
    assert loaded.chat_template == CHAT_TEMPLATE


def test_loads_where_scratch_gpt_cannot_be_imported(tokenizer, tmp_path, run_without_scratch_gpt):
    tokenizer.save_pretrained(tmp_path / "tok")
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]
    code = textwrap.dedent(
        f"""
        import json
        from transformers import AutoTokenizer, PreTrainedTokenizerFast
        tok = AutoTokenizer.from_pretrained({str(tmp_path / "tok")!r})
        assert isinstance(tok, PreTrainedTokenizerFast), type(tok)
        ids = tok({SAMPLE!r})["input_ids"]
        print(json.dumps({{
            "ids": ids,
            "decoded": tok.decode(ids),
            "special": [tok.bos_token_id, tok.eos_token_id, tok.pad_token_id],
            "chat": tok.apply_chat_template({messages!r}, tokenize=False),
            "modules": sorted(m for m in sys.modules if m.startswith("scratch_gpt") and sys.modules[m]),
        }}))
        """
    )
    out = json.loads(run_without_scratch_gpt(code).strip().splitlines()[-1])
    assert out["ids"] == tokenizer(SAMPLE)["input_ids"]
    assert out["decoded"] == SAMPLE
    assert out["special"] == [0, 0, 1]
    assert out["chat"] == tokenizer.apply_chat_template(messages, tokenize=False)
    assert out["modules"] == []


def test_same_corpus_and_settings_give_a_byte_identical_tokenizer_json(tmp_path):
    files = write_corpus(tmp_path / "corpus")
    train_tokenizer(tmp_path / "corpus", vocab_size=VOCAB_SIZE, show_progress=False).save_pretrained(tmp_path / "a")
    train_tokenizer(tmp_path / "corpus", vocab_size=VOCAB_SIZE, show_progress=False).save_pretrained(tmp_path / "b")
    # A second process: other hash seeds, other thread pool.
    script = (
        "import sys; from scratch_gpt.tokenizer import train_tokenizer; "
        f"train_tokenizer(sys.argv[1], vocab_size={VOCAB_SIZE}, show_progress=False).save_pretrained(sys.argv[2])"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345", "TOKENIZERS_PARALLELISM": "true"}
    subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "corpus"), str(tmp_path / "c")],
        cwd=REPO_ROOT, env=env, check=True, timeout=300, capture_output=True,
    )
    reference = (tmp_path / "a" / "tokenizer.json").read_bytes()
    assert (tmp_path / "b" / "tokenizer.json").read_bytes() == reference
    assert (tmp_path / "c" / "tokenizer.json").read_bytes() == reference
    # The corpus matters: different text gives a different vocabulary.
    files[0].write_text("zebra quartz " * 500, encoding="utf-8")
    other = train_tokenizer(tmp_path / "corpus", vocab_size=VOCAB_SIZE, show_progress=False)
    other.save_pretrained(tmp_path / "d")
    assert (tmp_path / "d" / "tokenizer.json").read_bytes() != reference


# --- working with the model --------------------------------------------------------------------


def test_model_vocab_size_fits_every_id_and_padding_is_never_produced(tokenizer):
    size = len(tokenizer)
    assert sorted(tokenizer.get_vocab().values()) == list(range(size))  # ids are 0..len-1, no gaps
    padded = model_vocab_size(tokenizer)
    assert padded % 64 == 0 and size <= padded < size + 64
    assert model_vocab_size(tokenizer, pad_to_multiple_of=None) == size
    assert model_vocab_size(tokenizer, pad_to_multiple_of=1) == size
    assert tokenizer.convert_ids_to_tokens(list(range(size, padded))) == [None] * (padded - size)

    text = "".join(make_texts(50, seed=1)) + "".join(TRICKY_PIECES) + EOS_TOKEN + PAD_TOKEN
    ids = tokenizer(text)["input_ids"]
    assert max(ids) < size
    kwargs = config_kwargs(tokenizer)
    assert kwargs == {"vocab_size": padded, "bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 1}
    config = ScratchGPTConfig.from_preset("tiny", max_position_embeddings=len(ids), **kwargs)
    model = ScratchGPTForCausalLM(config).eval()
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits
    assert logits.shape == (1, len(ids), padded)


# --- corpus sources ----------------------------------------------------------------------------


def vocab_of(data, **kwargs) -> str:
    return train_tokenizer(data, vocab_size=VOCAB_SIZE, show_progress=False, **kwargs).backend_tokenizer.to_str()


def test_folder_glob_and_list_of_paths_read_the_same_files(tmp_path):
    files = write_corpus(tmp_path / "corpus")
    (tmp_path / "corpus" / ".hidden").write_bytes(b"\xff\xfe not text")  # hidden files are skipped
    reference = vocab_of(tmp_path / "corpus")
    assert vocab_of(str(tmp_path / "corpus" / "*.txt")) == reference
    assert vocab_of(files) == reference
    assert vocab_of(str(tmp_path / "corpus")) == reference


def test_text_files_are_streamed_in_bounded_pieces_that_rebuild_the_file(tmp_path):
    line = "one line of text\r\n"
    content = line * (8 * TEXT_CHUNK_CHARS // len(line)) + "no newline at the end"
    (tmp_path / "big.txt").write_text(content, encoding="utf-8", newline="")
    pieces = list(iter_texts(tmp_path / "big.txt"))
    assert "".join(pieces) == content  # line endings kept, nothing lost
    assert len(pieces) >= 8 and max(map(len, pieces)) < TEXT_CHUNK_CHARS + len(line)
    assert all(piece.endswith("\r\n") for piece in pieces[:-1])


def test_iterators_are_consumed_lazily():
    consumed = []

    def texts():
        for text in make_texts():
            consumed.append(text)
            yield text

    stream = iter_texts(texts())
    next(stream)
    assert len(consumed) == 1
    tokenizer = train_tokenizer(texts(), vocab_size=VOCAB_SIZE, show_progress=False)
    assert len(tokenizer) > MIN_VOCAB_SIZE


def test_datasets_iterables_and_jsonl_give_the_same_tokenizer(tmp_path):
    texts = make_texts()
    reference = vocab_of(texts)
    assert vocab_of(iter(texts)) == reference
    assert vocab_of(datasets.Dataset.from_dict({"text": texts})) == reference
    assert vocab_of(datasets.Dataset.from_dict({"text": texts}).to_iterable_dataset()) == reference
    table = datasets.Dataset.from_dict({"body": texts, "id": range(len(texts))})
    assert vocab_of(table, text_column="body") == reference
    with open(tmp_path / "data.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"text": text}) + "\n" for text in texts)
    assert vocab_of(tmp_path / "data.jsonl") == reference


# --- bad input ---------------------------------------------------------------------------------


def test_empty_corpus(tmp_path):
    (tmp_path / "empty.txt").write_text("", encoding="utf-8")
    for data in ([], ["", ""], tmp_path / "empty.txt", datasets.Dataset.from_dict({"text": [""]})):
        with pytest.raises(ValueError, match="corpus is empty"):
            train_tokenizer(data, vocab_size=VOCAB_SIZE, show_progress=False)
    (tmp_path / "folder").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no .txt, .md"):
        train_tokenizer(tmp_path / "folder", vocab_size=VOCAB_SIZE, show_progress=False)


@pytest.mark.parametrize("vocab_size", [0, 100, 256, MIN_VOCAB_SIZE - 1])
def test_vocab_size_too_small(vocab_size):
    with pytest.raises(ValueError, match=f"vocab_size={vocab_size} is too small.*at least {MIN_VOCAB_SIZE}"):
        train_tokenizer(make_texts(), vocab_size=vocab_size, show_progress=False)
    # The smallest legal size holds exactly the bytes and the special tokens, and still round-trips.
    smallest = train_tokenizer(make_texts(), vocab_size=MIN_VOCAB_SIZE, show_progress=False)
    assert len(smallest) == MIN_VOCAB_SIZE and smallest.decode(smallest.encode(SAMPLE)) == SAMPLE


def test_missing_file_and_unmatched_glob(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        train_tokenizer(tmp_path / "nope.txt", vocab_size=VOCAB_SIZE)
    with pytest.raises(FileNotFoundError, match="matches no .txt, .md"):
        train_tokenizer(str(tmp_path / "*.txt"), vocab_size=VOCAB_SIZE)
    write_corpus(tmp_path / "corpus")
    with pytest.raises(FileNotFoundError, match="nope.txt"):  # a missing file fails before any training
        train_tokenizer([tmp_path / "corpus" / "part0.txt", tmp_path / "nope.txt"], vocab_size=VOCAB_SIZE)


def test_missing_text_column(tmp_path):
    with pytest.raises(ValueError, match="no column 'text'.*body"):
        train_tokenizer(datasets.Dataset.from_dict({"body": ["a b c"]}), vocab_size=VOCAB_SIZE)


def test_non_utf8_file_fails_or_is_replaced(tmp_path):
    write_corpus(tmp_path / "corpus")
    bad = tmp_path / "corpus" / "latin1.txt"
    bad.write_bytes("first line\ncaf\u00e9 cr\u00e8me br\u00fbl\u00e9e\n".encode("latin-1") * 50)
    with pytest.raises(ValueError, match=r"latin1\.txt' is not UTF-8 text .*on line 2\).*replace"):
        train_tokenizer(tmp_path / "corpus", vocab_size=VOCAB_SIZE, show_progress=False)
    tokenizer = train_tokenizer(tmp_path / "corpus", vocab_size=VOCAB_SIZE, errors="replace", show_progress=False)
    assert "\ufffd" in "".join(iter_texts(bad, errors="replace"))
    assert len(tokenizer) > MIN_VOCAB_SIZE
    with pytest.raises(ValueError, match="errors must be"):
        train_tokenizer(bad, vocab_size=VOCAB_SIZE, errors="ignore")


# --- command line ------------------------------------------------------------------------------


def test_cli_trains_saves_and_reports(tmp_path, capsys):
    write_corpus(tmp_path / "corpus")
    out = tmp_path / "out" / "tok"
    code = scratch_gpt_main(
        ["train-tokenizer", "--data", str(tmp_path / "corpus"), "--vocab-size", str(VOCAB_SIZE),
         "--output", str(out), "--model-max-length", "256"]
    )
    printed = capsys.readouterr().out
    assert code == 0
    loaded = AutoTokenizer.from_pretrained(out)
    assert f"vocabulary size: {len(loaded)}" in printed
    bpt = re.search(r"bytes per token on the held-out slice \(([\d,]+) bytes\): ([\d.]+)", printed)
    assert bpt and int(bpt[1].replace(",", "")) > 0 and 1.0 < float(bpt[2]) < 20.0
    assert loaded.model_max_length == 256 and loaded.pad_token_id == 1
    assert sorted(p.name for p in out.parent.iterdir()) == ["tok"]  # no temporary folder left behind


def test_cli_holds_out_texts_from_training(tmp_path, capsys):
    # Every 2nd document holds a word found nowhere else: held out, it never becomes a token.
    texts = [text + (" xylophonezzz" if i % 2 else "") for i, text in enumerate(make_texts(200))]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    args = ["train-tokenizer", "--data", str(tmp_path / "data.jsonl"), "--vocab-size", "1000", "--output"]
    assert scratch_gpt_main(args + [str(tmp_path / "held"), "--held-out-every", "2"]) == 0
    assert scratch_gpt_main(args + [str(tmp_path / "all"), "--held-out-every", "0"]) == 0
    assert "bytes per token: n/a" in capsys.readouterr().out
    assert scratch_gpt_main(args + [str(tmp_path / "x"), "--held-out-every", "1"]) == 2  # returned, as by every command
    assert "at least 2" in capsys.readouterr().err
    assert len(AutoTokenizer.from_pretrained(tmp_path / "held").tokenize(" xylophonezzz")) > 3
    assert len(AutoTokenizer.from_pretrained(tmp_path / "all").tokenize(" xylophonezzz")) == 1


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing", "does not exist"),
        ("empty", "corpus is empty"),
        ("latin1", "is not UTF-8 text"),
        ("small-vocab", "is too small"),
        ("hub", "hub-user/no-such-dataset"),  # offline in tests: the Hub cannot be reached
    ],
)
def test_cli_bad_input_is_one_line_on_stderr_with_exit_2(tmp_path, capsys, case, message):
    out = tmp_path / "out"
    mark_output(out)  # an earlier output of scratch-gpt, which a good run would replace
    (out / "keep.txt").write_text("a good artifact", encoding="utf-8")
    data, vocab = tmp_path / "data.txt", VOCAB_SIZE
    if case == "empty":
        data.write_text("", encoding="utf-8")
    elif case == "latin1":
        data.write_bytes("caf\u00e9\n".encode("latin-1"))
    elif case == "small-vocab":
        data.write_text("".join(make_texts(20)), encoding="utf-8")
        vocab = 10
    elif case == "hub":
        data = "hub:hub-user/no-such-dataset"
    code = scratch_gpt_main(["train-tokenizer", "--data", str(data), "--vocab-size", str(vocab), "--output", str(out)])
    captured = capsys.readouterr()
    assert code == 2
    assert message in captured.err and "Traceback" not in captured.err
    assert len(captured.err.strip().splitlines()) == 1
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert (out / "keep.txt").read_text(encoding="utf-8") == "a good artifact"  # the old artifact is untouched


def test_cli_replace_invalid_utf8(tmp_path, capsys):
    data = tmp_path / "data.txt"
    data.write_bytes("".join(make_texts(100)).encode("utf-8") + "caf\u00e9\n".encode("latin-1"))
    args = ["train-tokenizer", "--data", str(data), "--vocab-size", str(VOCAB_SIZE), "--output", str(tmp_path / "o")]
    assert scratch_gpt_main(args) == 2
    assert scratch_gpt_main(args + ["--replace-invalid-utf8"]) == 0
    assert "vocabulary size" in capsys.readouterr().out


def test_cli_help(capsys):
    assert scratch_gpt_main(["train-tokenizer", "--help"]) == 0  # returned, as by every command
    assert "--vocab-size" in capsys.readouterr().out


def test_a_corpus_too_small_for_the_vocabulary_says_so_and_prints_no_blank_lines(capfd):
    import warnings

    from scratch_gpt.tokenizer import train_tokenizer

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tokenizer = train_tokenizer(["a tiny corpus, a tiny corpus"], vocab_size=8192)  # stderr is not a terminal here
    said = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    assert len(tokenizer) < 300 and len(said) == 1, said
    assert f"has {len(tokenizer):,} tokens, not the 8,192 asked for" in said[0]
    assert capfd.readouterr().err.strip() == ""  # the trainer's bar is off where it would print blank lines
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train_tokenizer(["a tiny corpus, a tiny corpus"], vocab_size=len(tokenizer))  # reached: no warning
