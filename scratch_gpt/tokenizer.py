"""Stage 1: train a byte-level BPE tokenizer and ship it as a `transformers` tokenizer.

    >>> tokenizer = train_tokenizer("corpus/*.txt", vocab_size=8000, model_max_length=1024)
    >>> tokenizer.save_pretrained("my-tokenizer")      # AutoTokenizer.from_pretrained("my-tokenizer")

The tokenizer is GPT-2's recipe trained on your corpus: text is split with GPT-2's regex, every
piece is spelled in bytes (so no text is ever unknown and `decode(encode(text)) == text`), and
byte pairs are merged by frequency until the vocabulary is full. Two special tokens come first:
`<|endoftext|>` (id 0: bos, eos and document separator) and `<|pad|>` (id 1); the last id is
RESPONSE_MARKER, the end of an instruction prompt. The result is an ordinary `PreTrainedTokenizerFast`
that loads without this package, with a chat template for the book's Alpaca prompt (stage 7.2).

Command line: `scratch-gpt train-tokenizer --data PATH_OR_DATASET --vocab-size N --output-dir DIR`.
"""

import itertools
import json
import os
import sys
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from scratch_gpt.args import MIN_VOCAB_SIZE, TokenizerOptions
from scratch_gpt.errors import BadInput
from scratch_gpt.io_utils import atomic_directory
from scratch_gpt.sources import checked_texts, is_dataset, read_texts

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
SPECIAL_TOKENS = [EOS_TOKEN, PAD_TOKEN]  # ids 0 and 1, in this order
# The end of every instruction prompt, kept whole as one added (not special) token, the last id.
# Added tokens are split off before the GPT-2 regex runs, so the tokens of a prompt are always a
# prefix of the tokens of prompt + answer, even when the answer starts with whitespace (which
# the regex would otherwise glue to the prompt's final "\n").
RESPONSE_MARKER = "\n\n### Response:\n"
BYTE_ALPHABET_SIZE = 256

DEFAULT_SYSTEM_PROMPT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
)

# The book's Alpaca prompt as a chat template. Messages are [system?, user, assistant, user, ...]:
#   system (or DEFAULT_SYSTEM_PROMPT)
#   "\n\n### Instruction:\n" + user   ...   "\n\n### Response:\n" + assistant + eos_token
# and `add_generation_prompt=True` ends with RESPONSE_MARKER: a prefix of the training text (characters and tokens).
CHAT_TEMPLATE = (
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set system = messages[0]['content'] -%}{%- set turns = messages[1:] -%}"
    "{%- else -%}"
    "{%- set system = '" + DEFAULT_SYSTEM_PROMPT + "' -%}{%- set turns = messages -%}"
    "{%- endif -%}"
    "{{- system -}}"
    "{%- for message in turns -%}"
    "{%- if message['role'] == 'user' -%}"
    "{{- '\\n\\n### Instruction:\\n' + message['content'] -}}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{- '\\n\\n### Response:\\n' + message['content'] + eos_token -}}"
    "{%- else -%}"
    "{{- raise_exception('The instruction format knows the roles system (first message only), user and "
    "assistant, not ' + message['role'] + '.') -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '\\n\\n### Response:\\n' -}}{%- endif -%}"
)

TEXT_CHUNK_CHARS = 1 << 12  # a document is fed to the trainer in pieces of about this many characters,
MAX_PIECE_CHARS = 1 << 20  # cut at line ends (a longer line is cut anyway)
BATCH_SIZE = 1000  # texts handed to the Rust trainer at a time


def format_alpaca_messages(record: dict) -> list[dict]:
    """An Alpaca record (`instruction`, optional `input`, `output`) as chat messages.

    Rendered by `CHAT_TEMPLATE`: the book's prompt exactly. Without an `output`: the user message alone (a prompt).
    """
    content = record["instruction"]
    if record.get("input"):
        content += "\n\n### Input:\n" + record["input"]
    messages = [{"role": "user", "content": content}]
    if record.get("output") is not None:
        messages.append({"role": "assistant", "content": record["output"]})
    return messages


# --- reading a corpus --------------------------------------------------------------------------


def iter_texts(data, *, text_column: str = "text", encoding: str = "utf-8", errors: str = "strict") -> Iterator[str]:
    """Stream the texts of `data` in pieces for the BPE trainer, without loading the corpus.

    `data` is anything `scratch_gpt.sources.read_texts` reads (a file, folder, glob, list of paths,
    "hub:NAME" or NAME, "builtin", a `datasets` Dataset or IterableDataset), streamed; or, for the
    Python API, a list of strings or any other iterable of them, taken as the texts themselves.
    A long document is cut into pieces of about TEXT_CHUNK_CHARS characters at line ends: the
    trainer only counts the words of each piece, so the pieces teach it the same merges.
    """
    if _are_texts(data):
        texts = checked_texts(data)  # the sources' policy (blank texts skipped), one text at a time
    else:
        corpus = read_texts(data, text_column=text_column, encoding=encoding, errors=errors, streaming=True)
        texts = (text for batch in corpus.iter(batch_size=BATCH_SIZE) for text in batch["text"])
    return (piece for text in texts for piece in _pieces(text))


def _are_texts(data) -> bool:
    """A list of strings, or an iterable that is no path and no dataset: the texts themselves."""
    if isinstance(data, (list, tuple)):
        return all(isinstance(item, str) for item in data)
    return not isinstance(data, (str, os.PathLike)) and not is_dataset(data)


def _pieces(text: str) -> Iterator[str]:
    """`text` in pieces that end at the first line end after TEXT_CHUNK_CHARS characters (or are
    cut after MAX_PIECE_CHARS in a very long line); line endings are kept as they are."""
    start = 0
    while start < len(text):
        line_end = text.find("\n", start + TEXT_CHUNK_CHARS - 1)
        end = len(text) if line_end == -1 else line_end + 1
        end = min(end, start + MAX_PIECE_CHARS)
        yield text[start:end]
        start = end


def _batches(texts: Iterable[str], size: int = BATCH_SIZE) -> Iterator[list[str]]:
    texts = iter(texts)
    while batch := list(itertools.islice(texts, size)):
        yield batch


# --- training ----------------------------------------------------------------------------------


def new_bpe_tokenizer() -> Tokenizer:
    """An untrained byte-level BPE: GPT-2's pre-tokenizer regex, no prefix space, no unknown token."""
    tokenizer = Tokenizer(models.BPE())  # no unk_token: every byte is in the vocabulary
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    # Adds no special token; keeps offsets pointing at the original characters.
    tokenizer.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False)
    return tokenizer


def bpe_trainer(vocab_size: int, min_frequency: int = 2, show_progress: bool = True) -> trainers.BpeTrainer:
    return trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )


# transformers 5 writes its fast tokenizer class as "TokenizersBackend" into tokenizer_config.json, a name
# transformers 4 (and tools pinned to it: llama.cpp's converter, optimum) cannot load; "PreTrainedTokenizerFast"
# is the same class under the name both read.
def save_tokenizer(tokenizer, folder) -> None:
    """`tokenizer.save_pretrained(folder)`, readable by transformers 4.x as well as 5.x (see above)."""
    tokenizer.save_pretrained(folder)
    path = Path(folder) / "tokenizer_config.json"
    settings = json.loads(path.read_text(encoding="utf-8"))
    if settings.get("tokenizer_class") == "TokenizersBackend":
        settings["tokenizer_class"] = "PreTrainedTokenizerFast"
        path.write_text(json.dumps(settings, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def truncates_itself(tokenizer):
    """Mark transformers' "Token indices sequence length is longer than the specified maximum" warning as
    given, for a caller that cuts sequences to the model's context itself (and says so in its own words)."""
    tokenizer.deprecation_warnings["sequence-length-is-longer-than-the-specified-maximum"] = True
    return tokenizer


def train_tokenizer(
    data,
    vocab_size: int = 8192,
    *,
    min_frequency: int = 2,
    model_max_length: int | None = None,
    text_column: str = "text",
    encoding: str = "utf-8",
    errors: str = "strict",
    show_progress: bool | None = None,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on `data` (see `iter_texts` for what it may be) and wrap it.

    `vocab_size` counts the 256 bytes, the two special tokens, the merges and RESPONSE_MARKER; a small
    corpus may stop short of it, with a warning that says so. `model_max_length` is the model's context
    (`max_position_embeddings`). `show_progress`: the trainer's bar (default: when stderr is a terminal;
    elsewhere it prints only blank lines).
    """
    if not isinstance(vocab_size, int) or vocab_size < MIN_VOCAB_SIZE:
        raise BadInput(
            f"vocab_size={vocab_size} is too small: the byte alphabet needs {BYTE_ALPHABET_SIZE} entries plus "
            f"{MIN_VOCAB_SIZE - BYTE_ALPHABET_SIZE} reserved tokens ({EOS_TOKEN}, {PAD_TOKEN} and the response "
            f"marker); use at least {MIN_VOCAB_SIZE} (a few thousand is typical)."
        )
    texts = iter_texts(data, text_column=text_column, encoding=encoding, errors=errors)
    first = next(texts, None)
    if first is None:
        raise BadInput("The corpus is empty: it holds no text to train on; check --data (file, folder, column).")
    backend = new_bpe_tokenizer()
    show_progress = sys.stderr.isatty() if show_progress is None else show_progress
    trainer = bpe_trainer(vocab_size - 1, min_frequency, show_progress)  # RESPONSE_MARKER takes the last id
    backend.train_from_iterator(_batches(itertools.chain([first], texts)), trainer)
    backend.add_tokens([AddedToken(RESPONSE_MARKER, normalized=False, special=False)])
    if backend.get_vocab_size() < vocab_size:
        warnings.warn(
            f"The tokenizer has {backend.get_vocab_size():,} tokens, not the {vocab_size:,} asked for: the corpus has "
            f"no more pairs seen at least {min_frequency} times to merge; give more text for a larger vocabulary.",
            stacklevel=2,
        )
    return wrap_tokenizer(backend, model_max_length=model_max_length)


def wrap_tokenizer(backend: Tokenizer, *, model_max_length: int | None = None) -> PreTrainedTokenizerFast:
    """The `transformers` tokenizer around a trained backend: special tokens, chat template, no cleanup."""
    extra = {} if model_max_length is None else {"model_max_length": model_max_length}
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        clean_up_tokenization_spaces=False,  # cleanup would drop spaces before punctuation: not lossless
        chat_template=CHAT_TEMPLATE,
        **extra,
    )


def model_vocab_size(tokenizer, pad_to_multiple_of: int | None = 64) -> int:
    """The `vocab_size` for a model config: every id the tokenizer has, rounded up for fast matmuls.

    Ids from `len(tokenizer)` up are padding rows the tokenizer never produces.
    """
    size = len(tokenizer)
    if not pad_to_multiple_of:
        return size
    return -(-size // pad_to_multiple_of) * pad_to_multiple_of


def check_fits(tokenizer, config, where: str) -> None:
    """One clear error, before training, if the tokenizer makes ids the model has no embedding for."""
    if len(tokenizer) > config.vocab_size:
        raise BadInput(
            f"The tokenizer has {len(tokenizer)} tokens but {where} has only {config.vocab_size} embedding rows; "
            "use a matching tokenizer or a larger vocabulary."
        )


def complete_tokenizer(tokenizer):
    """Fill in what a base tokenizer such as GPT-2's lacks, in place, and return it.

    GPT-2's tokenizer comes without a pad token and without a chat template. End-of-text then pads
    (the collators mask padding by length or attention mask, never by id, so each answer keeps its
    own end-of-text target), and the chat template becomes the book's Alpaca prompt. The commands
    save the completed tokenizer with their output, so `chat` and `pipeline` work on it.
    """
    if tokenizer.eos_token is None:
        raise BadInput(
            "The tokenizer has no end-of-text (eos) token, which ends answers and pads batches; "
            "use a tokenizer that defines eos_token."
        )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.chat_template is None:
        tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def config_kwargs(tokenizer, pad_to_multiple_of: int | None = 64) -> dict:
    """What a model config takes from its tokenizer: `ScratchGPTConfig(**config_kwargs(tok), ...)`."""
    ids = {name: getattr(tokenizer, name) for name in ("bos_token_id", "eos_token_id", "pad_token_id")}
    return {"vocab_size": model_vocab_size(tokenizer, pad_to_multiple_of), **ids}


def encode_batch(tokenizer, texts: list[str]) -> list[list[int]]:
    """The token ids of many texts: `tokenizer(texts)["input_ids"]` without its per-text costs.

    The bulk path for corpora. Calling the tokenizer builds a dict and an attention mask for every
    text, about 15% more time on short texts (scripts/bench_tokenizer.py); this asks the Rust
    backend for the ids alone (no special tokens are added, as with any tokenizer made here).
    """
    backend = tokenizer.backend_tokenizer
    # A call like tokenizer(texts, padding=True, truncation=True) leaves padding and truncation
    # switched on in the backend; tokenizer(texts) switches them off again, and so does this.
    if backend.padding is not None:
        backend.no_padding()
    if backend.truncation is not None:
        backend.no_truncation()
    encodings = backend.encode_batch_fast(texts, add_special_tokens=False)
    return [encoding.ids for encoding in encodings]


def bytes_per_token(texts, tokenizer) -> float:
    """UTF-8 bytes per token over `texts` (an iterable of strings), without special tokens.

    Its compression: a loss in nats/token / (ln 2 * bytes_per_token) is bits per byte, comparable across tokenizers.
    """
    texts = [text for text in texts if text]
    if not texts:
        raise BadInput("bytes_per_token got no text to tokenize; pass a non-empty list of strings.")
    num_bytes = sum(len(text.encode("utf-8")) for text in texts)
    num_tokens = sum(len(ids) for ids in encode_batch(tokenizer, texts))
    return num_bytes / num_tokens


# --- command line ------------------------------------------------------------------------------


def _hold_out(texts: Iterable[str], held_out: list[str], every: int, max_chars: int) -> Iterator[str]:
    """Yield the texts to train on; every `every`-th text goes to `held_out` instead (up to `max_chars`)."""
    held_chars = 0
    for index, text in enumerate(texts, start=1):
        if index % every == 0 and held_chars < max_chars:
            held_out.append(text)
            held_chars += len(text)
        else:
            yield text


def train_tokenizer_command(args: TokenizerOptions) -> None:
    """`scratch-gpt train-tokenizer`: train on `--data` (every N-th text held out), save, report compression."""
    held_out: list[str] = []
    output = Path(args.output_dir)  # checked by the CLI, as every declared output
    corpus = read_texts(args.data, text_column=args.text_column, encoding=args.encoding, errors=args.encoding_errors, streaming=True)
    texts = iter_texts(corpus)  # a list of strings is texts to iter_texts, and --data is a list of paths
    if args.held_out_every:
        texts = _hold_out(texts, held_out, every=args.held_out_every, max_chars=4_000_000)
    tokenizer = train_tokenizer(texts, vocab_size=args.vocab_size, min_frequency=args.min_frequency, model_max_length=args.model_max_length)
    with atomic_directory(output) as tmp:
        save_tokenizer(tokenizer, tmp)
    print(f"vocabulary size: {len(tokenizer)} (model vocab_size padded to 64: {model_vocab_size(tokenizer)})")
    if held_out:
        held_bytes = sum(len(text.encode("utf-8")) for text in held_out)
        compression = bytes_per_token(held_out, tokenizer)
        print(f"bytes per token on the held-out slice ({held_bytes:,} bytes): {compression:.3f}")
    else:
        print("bytes per token: n/a (no text was held out; the corpus is small or --held-out-every is 0)")
    print(f"saved to {output}")
