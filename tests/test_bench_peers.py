"""scripts/bench_peers.py at tiny size: the logits check against a peer that CI has (transformers), the
one-line skip of a peer that is not installed, the book's weight names, and a disagreeing peer left untimed."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_peers.py"
TINY = ["--vocab-size", "512", "--hidden-size", "32", "--layers", "2", "--heads", "4", "--seq-len", "16", "--batch", "2"]


@pytest.fixture(scope="module")
def bench_peers():
    path = list(sys.path)
    spec = importlib.util.spec_from_file_location("bench_peers", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # it puts scripts/ on sys.path, for bench_model
    yield module
    sys.path[:] = path


@pytest.mark.slow
def test_transformers_logits_agree_and_missing_peers_are_skipped_in_one_line(bench_peers, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["bench_peers.py"])
    book_installed = importlib.util.find_spec("llms_from_scratch") is not None
    tables = bench_peers.main([*TINY, "--check-only", "--peers", "transformers", "book GPTModel", "litgpt"])
    out = capsys.readouterr().out
    lines = out.splitlines()

    # litgpt runs only on its own venv's python: without --litgpt-python, one line names how to get one.
    skipped = [line for line in lines if line.startswith("litgpt: skipped")]
    assert len(skipped) == 1 and "pip install torch==2.13.0" in skipped[0] and "--litgpt-python" in skipped[0]
    if not book_installed:
        assert "book GPTModel: skipped, llms_from_scratch is not installed; install: pip install --no-deps" in out

    for family in ("gpt2", "llama"):
        results, failed, spec = tables[family]
        assert not failed, failed
        row = results["transformers"]
        assert row["max |logits - ours|"][0] <= bench_peers.TOLERANCE
        assert row["greedy tokens"][0] == spec["greedy_tokens"] and len(spec["greedy_tokens"]) == bench_peers.CHECK_TOKENS
        assert "train tokens/s" not in row  # --check-only: nothing timed
        assert "litgpt" not in results
    assert out.count("transformers            max |logits - ours|") == 2
    assert out.count("greedy tokens the same as ours") >= 2


def test_book_names_are_the_inverse_of_convert_book(bench_peers, tiny_model):
    from scratch_gpt.convert import convert_book

    book = bench_peers.book_state_dict(tiny_model)
    assert all(name.startswith(("tok_emb", "pos_emb", "final_norm", "out_head", "trf_blocks.")) for name in book)
    config, state = convert_book(book, num_heads=tiny_model.config.num_attention_heads)
    ours = tiny_model.state_dict()
    assert set(state) == set(ours)
    assert all(torch.equal(state[name], ours[name]) for name in ours)
    assert config.hidden_size == tiny_model.config.hidden_size and config.num_hidden_layers == tiny_model.config.num_hidden_layers


def test_a_peer_whose_logits_disagree_is_reported_and_not_timed(bench_peers, capsys, monkeypatch):
    timed = {"train tokens/s": 100.0, "train peak MB": 10.0, "generate tokens/s (batch 1)": 5.0, "generate tokens/s (batch 8)": 20.0}
    calls = []

    def fake_child(peer, spec_file, args):
        calls.append(peer)
        if peer == "transformers":
            return {"max |logits - ours|": 0.5, "greedy tokens": [1, 2, 3]}
        return {"max |logits - ours|": 0.0, "greedy tokens": [1, 2, 3], **timed}

    monkeypatch.setattr(bench_peers, "run_child", fake_child)
    tables = bench_peers.main([*TINY, "--arch", "gpt2", "--peers", "transformers", "--repeats", "2"])
    out = capsys.readouterr().out
    assert calls.count("transformers") == 1 and calls.count("ScratchGPT") == 2  # not run again once it disagreed
    results, failed, _ = tables["gpt2"]
    assert failed["transformers"].startswith("logits disagree with ours: max |difference| 5.00e-01 > 0.0001; not timed")
    assert "transformers            logits disagree with ours" in out
    assert results["ScratchGPT"]["train tokens/s"] == [100.0, 100.0]


def test_generation_is_timed_on_exactly_the_new_tokens_even_past_an_end_of_text_token(bench_peers, tiny_model):
    # The book's and litgpt's loops never stop at an end-of-text token; generate() would, so the bench turns it off.
    prompt = torch.randint(0, tiny_model.config.vocab_size, (2, 5), generator=torch.Generator().manual_seed(0))
    first = tiny_model.generate(prompt[:1], max_new_tokens=1, do_sample=False, pad_token_id=0)[0, -1].item()
    tiny_model.generation_config.eos_token_id = first  # generate()'s default would stop right there
    assert tiny_model.generate(prompt[:1], max_new_tokens=6, do_sample=False, pad_token_id=0).shape[1] == 5 + 1  # stopped
    generate = bench_peers.hf_generate(tiny_model)
    assert generate(prompt, 6).shape == (2, 6)
    assert bench_peers.generation_rate(generate, prompt, 6, torch.device("cpu")) > 0

    with pytest.raises(RuntimeError, match=r"generated \(2, 3\) tokens, not \(2, 6\)"):  # a loop that stopped early
        bench_peers.generation_rate(lambda ids, new: generate(ids, min(new, 3)), prompt, 6, torch.device("cpu"))
