"""`scratch-gpt inspect MODEL --prompt TEXT`: look inside a model at one prompt.

One forward pass with `output_attentions=True` and `output_hidden_states=True` gives every number
the report shows; nothing is computed a second way:

- tokens: the prompt cut into tokens, each with its id and its bytes (stage 1);
- next token: the softmax of the logits at each position, its top k, and the loss of the token
  that actually comes next (stage 5);
- attention: the weights of every head, which the model returns from its eager path (stage 4);
- logit lens: each layer's hidden state put through the final norm and the head, as if the model
  ended there; the last row is the model's own prediction;
- embeddings: the tokens nearest to the prompt's tokens, by cosine of their embedding rows (stage 3).

A classifier (`ScratchGPTForSequenceClassification`) has no LM head: its report shows the pooled
token and the class probabilities, and its lens reads the classes from each layer.

`inspect_text` returns these numbers as one plain dict (JSON-ready); `scratch_gpt.inference.report`
draws it and writes report.html; `chat --web` shows the same report in its Inspect tab.
"""

import json
import math
from pathlib import Path

import torch
from transformers.convert_slow_tokenizer import bytes_to_unicode

from scratch_gpt.errors import BadInput, MissingFile

NEIGHBOUR_TOKENS = 12  # the first distinct tokens of the prompt whose nearest tokens are listed
TOKENIZER_NAMES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


# Byte-level BPE (GPT-2's, and ours) spells each byte as one printable character (transformers' table,
# byte -> character); reversed here, character -> byte, to show the exact bytes of a token (a token may
# hold half of a UTF-8 character).
BYTES = {character: byte for byte, character in bytes_to_unicode().items()}


def token_bytes(tokenizer, token_id: int) -> bytes:
    """The bytes a token stands for: from its byte-level spelling, else (special tokens, other
    tokenizers such as SentencePiece) the UTF-8 of its decoded text."""
    piece = tokenizer.convert_ids_to_tokens(token_id)
    if piece is not None and token_id not in tokenizer.added_tokens_decoder and all(c in BYTES for c in piece):
        return bytes(BYTES[c] for c in piece)
    return tokenizer.decode([token_id]).encode("utf-8")


def token_entry(tokenizer, token_id: int, **numbers) -> dict:
    """One token as the report shows it: id, text, bytes (hex), and any numbers about it."""
    token_id = int(token_id)
    text = tokenizer.decode([token_id])
    return {"id": token_id, "text": text, "bytes": token_bytes(tokenizer, token_id).hex(" "), **numbers}


def rounded(tensor: torch.Tensor):
    """A tensor as nested lists of floats with 7 decimals (a row of 1,000 weights still sums to 1 within 1e-5)."""
    return torch.round(tensor.float(), decimals=7).tolist()


# ----------------------------------------------------------------------------------------------
# Loading and checking


def is_classifier(model_dir: str) -> bool:
    config = Path(model_dir) / "config.json"
    if not config.is_file():
        return False  # a Hub id or an adapter folder: read as a causal LM
    names = json.loads(config.read_text(encoding="utf-8")).get("architectures") or []
    return any(name.endswith("ForSequenceClassification") for name in names)


def load_for_inspect(model_dir: str, trust_remote_code: bool = False):
    """(model, tokenizer) of a causal-LM folder, a LoRA adapter folder (merged into its base, see
    `convert.full_model_folder`), a classifier folder, or a Hub id; in eval mode, on the CPU."""
    from transformers import AutoTokenizer

    from scratch_gpt import ScratchGPTForCausalLM, ScratchGPTForSequenceClassification
    from scratch_gpt.convert import load_pretrained

    if Path(model_dir).is_dir() and not any((Path(model_dir) / name).is_file() for name in TOKENIZER_NAMES):
        raise MissingFile(
            f"{model_dir!r} holds no tokenizer (no tokenizer.json or tokenizer_config.json); pass a folder saved with "
            "its tokenizer, as every scratch-gpt command saves it."
        )
    tokenizer = load_pretrained(AutoTokenizer.from_pretrained, model_dir, trust_remote_code=trust_remote_code)
    kind = ScratchGPTForSequenceClassification if is_classifier(model_dir) else ScratchGPTForCausalLM
    model = load_pretrained(kind.from_pretrained, model_dir, trust_remote_code=trust_remote_code)
    return model.eval(), tokenizer


def pick(chosen: list[int] | None, count: int, what: str, flag: str, name: str) -> list[int]:
    """The chosen layers or heads (all by default), each checked against how many the model has."""
    if not chosen:
        return list(range(count))
    wrong = [number for number in chosen if not 0 <= number < count]
    if wrong:
        raise BadInput(
            f"{flag} {wrong[0]} is out of range: {name} has {count} {what}, numbered 0 to {count - 1}; pick from those."
        )
    return list(dict.fromkeys(chosen))  # in the order given, each once


def prompt_ids(tokenizer, text: str, context: int, name: str) -> torch.Tensor:
    """The prompt's token ids, (1, T); BadInput when it is empty or longer than the model's context."""
    if not text.strip():
        raise BadInput("The prompt is empty; give the text to inspect, e.g. --prompt \"I HAD always thought\".")
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    if ids.shape[1] > context:
        raise BadInput(
            f"The prompt is {ids.shape[1]} tokens but {name} reads at most {context}; shorten the prompt to fit."
        )
    return ids


# ----------------------------------------------------------------------------------------------
# The numbers


@torch.no_grad()
def inspect_text(model, tokenizer, text: str, *, layers=None, heads=None, top_k: int = 5) -> dict:
    """Every number of the report for `text`, as a JSON-ready dict (layers and heads count from 0)."""
    model = model.get_base_model() if hasattr(model, "get_base_model") else model  # PEFT: adapters sit in its layers
    config, name = model.config, str(getattr(model, "name_or_path", "") or "the model")
    ids = prompt_ids(tokenizer, text, config.max_position_embeddings, name)
    layers = pick(layers, config.num_hidden_layers, "layers", "--layers", name)
    heads = pick(heads, config.num_attention_heads, "heads", "--heads", name)
    classifier = hasattr(model, "score")
    body = model.model  # ScratchGPTModel: embeddings, blocks, final norm
    head = model.score if classifier else model.lm_head

    # The eager attention path runs when attentions are asked for: its weights are what the model used.
    no_cache = {} if classifier else {"use_cache": False}  # the classifier never caches (and sets it itself)
    outputs = model(ids.to(model.device), output_attentions=True, output_hidden_states=True, **no_cache)
    tokens = [token_entry(tokenizer, i) for i in ids[0].tolist()]
    numbers = {
        "model": name,
        "kind": "classifier" if classifier else "causal-lm",
        "prompt": text,
        "tokens": tokens,
        "layers": layers,
        "heads": heads,
        "picked": {"layer": layers[-1], "head": heads[0]},  # drawn large, with the tokens on both axes
        "attention": [  # (layer, head) -> T x T weights; row t: how much position t reads each position
            {"layer": layer, "heads": [rounded(outputs.attentions[layer][0, h]) for h in heads]} for layer in layers
        ],
    }
    numbers["logit_lens"] = logit_lens(outputs.hidden_states, body.norm, head, tokenizer, config, classifier)
    if classifier:
        numbers["classes"] = class_probabilities(outputs.logits[0], config)
        numbers["pooled_position"] = len(tokens) - 1  # one unpadded prompt: its last token is pooled
    else:
        numbers |= next_tokens(outputs.logits[0], ids[0], tokenizer, top_k)
    numbers["embeddings"] = nearest_tokens(body.embed_tokens.weight, ids[0], tokenizer, top_k)
    return numbers


def next_tokens(logits: torch.Tensor, ids: torch.Tensor, tokenizer, top_k: int) -> dict:
    """At each position: the top-k of softmax(logits), and the probability and loss (-log p) of the actual next token."""
    log_probs = logits.float().log_softmax(-1)  # (T, V)
    top = log_probs.exp().topk(min(top_k, log_probs.shape[-1]), dim=-1)
    rows = []
    for t in range(len(ids)):
        row = {"top": [token_entry(tokenizer, i, probability=p) for p, i in zip(top.values[t].tolist(), top.indices[t].tolist())]}
        if t + 1 < len(ids):
            actual = int(ids[t + 1])
            row["actual"] = token_entry(
                tokenizer, actual, probability=log_probs[t, actual].exp().item(), loss=-log_probs[t, actual].item()
            )
        rows.append(row)
    losses = [row["actual"]["loss"] for row in rows if "actual" in row]
    return {"next_token": rows, "mean_loss": sum(losses) / len(losses) if losses else None}


def logit_lens(hidden_states, norm, head, tokenizer, config, classifier: bool) -> dict:
    """Per layer and position: what the final norm and the head read from that layer's hidden state.

    `hidden_states` holds num_layers + 1 states: the embeddings, then each block's output. The last
    one is not the last block's raw output: transformers puts the model's `last_hidden_state` there,
    which is already after the final norm. Normalising it again would change it (a LayerNorm is not
    idempotent: its weight and bias apply twice), so it goes to the head as it is, and the last row is
    exactly the model's own prediction.
    """
    rows = []
    for index, state in enumerate(hidden_states):
        last = index == len(hidden_states) - 1
        probs = head(state if last else norm(state))[0].float().softmax(-1)  # (T, V or classes)
        best = probs.max(-1)
        if classifier:
            cells = [{"label": config.id2label[i], "id": i, "probability": p} for p, i in zip(best.values.tolist(), best.indices.tolist())]
        else:
            cells = [token_entry(tokenizer, i, probability=p) for p, i in zip(best.values.tolist(), best.indices.tolist())]
        where = "embeddings" if index == 0 else f"block {index - 1}"
        rows.append({"name": where + (" + final norm" if last else ""), "cells": cells})
    return {"rows": rows}


def class_probabilities(logits: torch.Tensor, config) -> list[dict]:
    probs = logits.float().softmax(-1).tolist()
    return [{"label": config.id2label[i], "probability": p} for i, p in enumerate(probs)]


def nearest_tokens(embedding: torch.Tensor, ids: torch.Tensor, tokenizer, top_k: int) -> list[dict]:
    """For the first distinct tokens of the prompt: the tokens whose embedding rows point the same way (cosine).
    Rows past the tokenizer's vocabulary (padding to a multiple of 64) are no tokens and are left out."""
    rows = embedding[: min(len(tokenizer), embedding.shape[0])].float()
    unit = rows / rows.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    found = []
    for token_id in list(dict.fromkeys(ids.tolist()))[:NEIGHBOUR_TOKENS]:
        cosine = unit @ unit[token_id]
        cosine[token_id] = -math.inf  # not itself
        best = cosine.topk(min(top_k, len(cosine) - 1))
        nearest = [token_entry(tokenizer, i, cosine=c) for c, i in zip(best.values.tolist(), best.indices.tolist())]
        found.append({"token": token_entry(tokenizer, token_id), "nearest": nearest})
    return found


# ----------------------------------------------------------------------------------------------
# The terminal's summary and the command


def inspect_command(args) -> None:
    """`scratch-gpt inspect`: load, check, compute, then write report.html and the PNGs in one atomic step."""
    from scratch_gpt.inference.report import summary, write_report
    from scratch_gpt.io_utils import atomic_directory

    model, tokenizer = load_for_inspect(args.model, args.trust_remote_code)
    numbers = inspect_text(model, tokenizer, args.prompt, layers=args.layers, heads=args.heads, top_k=args.top_k)
    with atomic_directory(args.output_dir) as folder:
        write_report(numbers, folder)
    print(summary(numbers))
    print(f"report: {Path(args.output_dir) / 'report.html'} (opens offline in any browser)")
