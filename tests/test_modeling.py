"""Stages 3-5: config, embeddings, attention, the GPT body, the LM head, KV cache and generate."""

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, DynamicCache, StaticCache

from scratch_gpt import PRESETS, ScratchGPTConfig, ScratchGPTForCausalLM, ScratchGPTModel

BOOK_GPT2_SMALL = {
    "vocab_size": 50257,
    "context_length": 1024,
    "emb_dim": 768,
    "n_heads": 12,
    "n_layers": 12,
    "drop_rate": 0.1,
    "qkv_bias": False,
}


def make_model(seed=0, **overrides) -> ScratchGPTForCausalLM:
    torch.manual_seed(seed)
    return ScratchGPTForCausalLM(ScratchGPTConfig.from_preset("tiny", **overrides)).eval()


def ids(batch=2, length=12, vocab=512, seed=1):
    return torch.randint(2, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------- config
def test_book_names_build_the_same_config():
    book = ScratchGPTConfig(**BOOK_GPT2_SMALL)
    hf = ScratchGPTConfig(
        vocab_size=50257,
        max_position_embeddings=1024,
        hidden_size=768,
        num_attention_heads=12,
        num_hidden_layers=12,
        embd_pdrop=0.1,
        attn_pdrop=0.1,
        resid_pdrop=0.1,
        qkv_bias=False,
    )
    assert book.to_dict() == hf.to_dict()


@pytest.mark.parametrize(
    "preset, millions", [("gpt2-small", 124), ("gpt2-medium", 355), ("gpt2-large", 774), ("gpt2-xl", 1558)]
)
def test_presets_have_gpt2_parameter_counts(preset, millions):
    with torch.device("meta"):
        model = ScratchGPTForCausalLM(ScratchGPTConfig.from_preset(preset))
    assert round(model.num_parameters() / 1e6) == millions


def test_tiny_preset_is_listed():
    assert "tiny" in PRESETS


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(hidden_size=100, num_attention_heads=3), "hidden_size"),
        (dict(num_hidden_layers=0), "num_hidden_layers"),
        (dict(vocab_size=-5), "vocab_size"),
        (dict(attn_pdrop=1.0), "attn_pdrop"),
        (dict(drop_rate=-0.1), "pdrop"),
        (dict(hidden_act="swish-ish"), "hidden_act"),
    ],
)
def test_invalid_config_raises_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        ScratchGPTConfig(**kwargs)


def test_config_round_trips_through_auto_config(tmp_path):
    config = ScratchGPTConfig.from_preset("tiny", hidden_act="gelu")
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, ScratchGPTConfig) and loaded.hidden_act == "gelu"


# ---------------------------------------------------------------------------- forward
def test_loss_is_shifted_cross_entropy_ignoring_minus_100(tiny_model):
    input_ids = ids()
    labels = input_ids.clone()
    labels[0, :5] = -100
    out = tiny_model(input_ids, labels=labels)
    logits = out.logits[:, :-1].reshape(-1, tiny_model.config.vocab_size)
    expected = F.cross_entropy(logits, labels[:, 1:].reshape(-1), ignore_index=-100)
    torch.testing.assert_close(out.loss, expected)


def test_eager_and_sdpa_agree_with_padding():
    model = make_model()
    input_ids = ids()
    mask = torch.ones_like(input_ids)
    mask[1, :4] = 0  # left padding in the second row
    sdpa = model(input_ids, attention_mask=mask).logits
    model.set_attn_implementation("eager")
    eager = model(input_ids, attention_mask=mask).logits
    assert (eager - sdpa)[mask.bool()].abs().max() < 1e-5


def test_inputs_embeds_equals_input_ids(tiny_model):
    input_ids = ids()
    embeds = tiny_model.get_input_embeddings()(input_ids)
    torch.testing.assert_close(tiny_model(inputs_embeds=embeds).logits, tiny_model(input_ids).logits)


def test_hidden_states_attentions_and_tuples(tiny_model):
    input_ids = ids(length=7)
    out = tiny_model(input_ids, output_hidden_states=True, output_attentions=True)
    layers = tiny_model.config.num_hidden_layers
    assert len(out.hidden_states) == layers + 1 and out.hidden_states[0].shape == (2, 7, 64)
    assert len(out.attentions) == layers and out.attentions[0].shape == (2, 4, 7, 7)
    torch.testing.assert_close(out.attentions[0].sum(-1), torch.ones(2, 4, 7))  # rows are distributions
    assert torch.all(out.attentions[0].triu(1) == 0)  # causal: nothing attends to the future
    as_tuple = tiny_model(input_ids, return_dict=False, use_cache=False)
    assert isinstance(as_tuple, tuple)
    torch.testing.assert_close(as_tuple[0], out.logits)


def test_hidden_states_run_from_the_embeddings_to_the_final_norm(tiny_model):
    input_ids = ids(length=7)
    body = tiny_model.model
    out = body(input_ids, output_hidden_states=True)
    embeddings = body.embed_tokens(input_ids) + body.embed_positions(torch.arange(7))  # stage 3, dropout off in eval
    torch.testing.assert_close(out.hidden_states[0], embeddings)
    torch.testing.assert_close(out.hidden_states[-1], out.last_hidden_state)
    assert body(input_ids).hidden_states is None and body(input_ids).attentions is None


def test_modeling_file_imports_only_torch_transformers_and_its_config():
    import ast
    from pathlib import Path

    import scratch_gpt.modeling_scratch_gpt as modeling

    imported = set()
    for node in ast.walk(ast.parse(Path(modeling.__file__).read_text())):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add("." * node.level + node.module.split(".")[0])
    assert imported <= {"contextlib", "inspect", "os", "collections", "torch", "transformers", ".configuration_scratch_gpt"}


def test_logits_to_keep(tiny_model):
    input_ids = ids()
    full = tiny_model(input_ids).logits
    last = tiny_model(input_ids, logits_to_keep=1).logits
    assert last.shape == (2, 1, 512)
    torch.testing.assert_close(last, full[:, -1:])


def test_base_model_and_auto_classes(tiny_config):
    assert isinstance(AutoModel.from_config(tiny_config), ScratchGPTModel)
    assert isinstance(AutoModelForCausalLM.from_config(tiny_config), ScratchGPTForCausalLM)
    out = ScratchGPTModel(tiny_config)(ids())
    assert out.last_hidden_state.shape == (2, 12, 64)


def test_lm_head_is_tied_to_token_embedding_and_untied_on_request(tiny_model):
    assert tiny_model.lm_head.weight.data_ptr() == tiny_model.model.embed_tokens.weight.data_ptr()
    untied = make_model(tie_word_embeddings=False)
    assert untied.lm_head.weight.data_ptr() != untied.model.embed_tokens.weight.data_ptr()


def test_residual_projections_are_scaled_by_depth():
    model = make_model(num_hidden_layers=8, hidden_size=256, num_attention_heads=4)
    expected = 0.02 / (2 * 8) ** 0.5
    for projection in (model.model.layers[0].mlp.fc_out, model.model.layers[0].attn.out_proj):
        assert abs(projection.weight.std().item() - expected) < 0.1 * expected
    assert abs(model.model.layers[0].mlp.fc_in.weight.std().item() - 0.02) < 0.1 * 0.02


def test_gradient_checkpointing_gives_the_same_gradients():
    input_ids = ids()
    grads = []
    for checkpointing in (False, True):
        model = make_model().train()
        if checkpointing:
            model.gradient_checkpointing_enable()
        model(input_ids, labels=input_ids).loss.backward()
        grads.append(model.model.layers[0].attn.qkv_proj.weight.grad)
    torch.testing.assert_close(grads[0], grads[1])


def test_save_and_load_in_bfloat16(tmp_path, tiny_model):
    tiny_model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert loaded.dtype == torch.bfloat16
    assert loaded(ids()).logits.dtype == torch.bfloat16


def test_resize_token_embeddings(tiny_model):
    tiny_model.resize_token_embeddings(600)
    assert tiny_model.config.vocab_size == 600
    assert tiny_model(torch.tensor([[599, 3]])).logits.shape == (1, 2, 600)
    assert tiny_model.lm_head.weight.data_ptr() == tiny_model.model.embed_tokens.weight.data_ptr()


def test_flops_per_token_counts_block_and_head_matmuls(tiny_model):
    config = tiny_model.config
    block = sum(p.numel() for p in tiny_model.model.layers.parameters())
    head = config.vocab_size * config.hidden_size
    assert tiny_model.flops_per_token(32) == 6 * (block + head) + 12 * config.num_hidden_layers * 64 * 32


# ---------------------------------------------------------------------------- bad input
def test_too_long_input_names_the_limit(tiny_model):
    with pytest.raises(ValueError, match="max_position_embeddings is 128"):
        tiny_model(torch.zeros(1, 129, dtype=torch.long))


@pytest.mark.parametrize("training", [False, True])
def test_out_of_vocabulary_ids_are_rejected(tiny_model, training):
    tiny_model.train(training)  # on the CPU the check costs no device sync, so training checks too
    with pytest.raises(ValueError, match=r"\[0, 512\)"):
        tiny_model(torch.tensor([[1, 512]]))
    with pytest.raises(ValueError, match=r"\[0, 512\)"):
        tiny_model(torch.tensor([[-1, 2]]))


def test_float_input_ids_are_rejected(tiny_model):
    with pytest.raises(ValueError, match="integer token ids"):
        tiny_model(torch.zeros(1, 3))


# ---------------------------------------------------------------------------- KV cache
def test_incremental_decoding_with_cache_equals_full_forward(tiny_model):
    input_ids = ids(length=10)
    full = tiny_model(input_ids).logits
    cache = DynamicCache(config=tiny_model.config)
    out = tiny_model(input_ids[:, :6], cache=cache, use_cache=True)
    steps = [out.logits]
    for t in range(6, 10):
        out = tiny_model(input_ids[:, t : t + 1], cache=out.cache, use_cache=True)
        steps.append(out.logits)
    assert (torch.cat(steps, dim=1) - full).abs().max() < 1e-5


def test_past_key_values_is_accepted_as_the_old_name(tiny_model):
    input_ids = ids(length=6)
    first = tiny_model(input_ids[:, :5], use_cache=True)
    step = tiny_model(input_ids[:, 5:], past_key_values=first.cache).logits
    assert (step - tiny_model(input_ids).logits[:, 5:]).abs().max() < 1e-5


def test_static_cache_generates_like_dynamic_cache(tiny_model):
    prompt = ids(batch=1, length=5)
    dynamic = tiny_model.generate(prompt, max_new_tokens=8, do_sample=False)
    static = tiny_model.generate(prompt, max_new_tokens=8, do_sample=False, cache_implementation="static")
    assert torch.equal(dynamic, static)
    cache = StaticCache(config=tiny_model.config, max_cache_len=32)
    assert tiny_model(prompt, cache=cache, use_cache=True).logits.shape == (1, 5, 512)


def test_left_padded_batch_generates_what_each_prompt_generates_alone():
    model = make_model()
    prompts = [[5, 6, 7, 8, 9, 10], [11, 12, 13]]
    alone = [
        model.generate(torch.tensor([p]), max_new_tokens=8, do_sample=False)[0, len(p) :].tolist() for p in prompts
    ]
    pad = model.config.pad_token_id
    width = max(map(len, prompts))
    batch = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = (torch.arange(width) >= torch.tensor([[width - len(p)] for p in prompts])).long()
    together = model.generate(batch, attention_mask=mask, max_new_tokens=8, do_sample=False)
    assert together[:, width:].tolist() == alone


# ---------------------------------------------------------------------------- generate
def test_sampling_is_seeded_and_respects_top_k_1(tiny_model):
    prompt = ids(batch=1, length=4)
    kwargs = dict(max_new_tokens=10, do_sample=True, temperature=0.8, top_p=0.9)
    torch.manual_seed(3)
    first = tiny_model.generate(prompt, **kwargs)
    torch.manual_seed(3)
    assert torch.equal(first, tiny_model.generate(prompt, **kwargs))
    greedy = tiny_model.generate(prompt, max_new_tokens=10, do_sample=False)
    assert torch.equal(tiny_model.generate(prompt, max_new_tokens=10, do_sample=True, top_k=1), greedy)


def test_beam_search_scores_at_least_greedy(tiny_model):
    prompt = ids(batch=1, length=4)

    def log_prob(sequence):
        logits = tiny_model(sequence).logits.log_softmax(-1)[0, 3:-1]
        return logits.gather(-1, sequence[0, 4:, None]).sum().item()

    greedy = tiny_model.generate(prompt, max_new_tokens=6, do_sample=False)
    beams = tiny_model.generate(prompt, max_new_tokens=6, num_beams=4, do_sample=False, length_penalty=0.0)
    assert beams.shape == (1, 10)
    assert log_prob(beams) >= log_prob(greedy) - 1e-4


def test_repetition_penalty_changes_greedy_output(tiny_model):
    prompt = ids(batch=1, length=4)
    plain = tiny_model.generate(prompt, max_new_tokens=20, do_sample=False)
    penalised = tiny_model.generate(prompt, max_new_tokens=20, do_sample=False, repetition_penalty=5.0)
    new = penalised[0, 4:].tolist()
    assert len(set(new)) >= len(set(plain[0, 4:].tolist()))
    assert not torch.equal(plain, penalised)


def test_generation_stops_at_eos(tiny_model):
    prompt = ids(batch=1, length=4)
    greedy = tiny_model.generate(prompt, max_new_tokens=10, do_sample=False)[0]
    eos = int(greedy[5])  # pretend the second generated token ends the text
    first = greedy[4:].tolist().index(eos) + 4
    stopped = tiny_model.generate(prompt, max_new_tokens=10, do_sample=False, eos_token_id=eos)[0]
    assert stopped.tolist() == greedy[: first + 1].tolist()


def test_stop_strings(tiny_model, tiny_tokenizer):
    prompt = tiny_tokenizer("The quick", return_tensors="pt").input_ids
    out = tiny_model.generate(prompt, max_new_tokens=30, do_sample=False)
    text = tiny_tokenizer.decode(out[0, prompt.shape[1] :])
    stop = text[3:6]
    if not stop.strip():
        pytest.skip("the untrained model's continuation has no usable stop string")
    stopped = tiny_model.generate(
        prompt, max_new_tokens=30, do_sample=False, stop_strings=[stop], tokenizer=tiny_tokenizer
    )
    stopped_text = tiny_tokenizer.decode(stopped[0, prompt.shape[1] :])
    assert stop in stopped_text and len(stopped[0]) < len(out[0])


@pytest.mark.slow
def test_torch_compile_matches_eager_mode(tiny_model):
    input_ids = ids()
    compiled = torch.compile(tiny_model)
    torch.testing.assert_close(compiled(input_ids).logits, tiny_model(input_ids).logits, atol=1e-5, rtol=1e-5)


def test_a_decoding_step_with_a_static_cache_is_one_graph(tiny_model):
    """`generate(..., cache_implementation="static")` compiles the forward; a graph break (a check
    that reads a value back, such as the static cache's length) would split it and slow every step."""
    import torch._dynamo
    from transformers import StaticCache

    cache = StaticCache(config=tiny_model.config, max_cache_len=32)
    with torch.no_grad():
        tiny_model(ids()[:1], cache=cache, use_cache=True)  # the prompt, outside the graph
        explanation = torch._dynamo.explain(tiny_model.forward)(ids()[:1, :1], cache=cache, use_cache=True)
    assert explanation.graph_break_count == 0, explanation.break_reasons


def test_decoding_one_row_on_cpu_reads_a_head_copy_that_follows_the_weights():
    """Batch-1 decoding on a CPU multiplies by a (C, V) copy of the head (faster to read): the
    logits are the head's, a change of the weights is never served stale, and training frees it."""
    model = make_model()
    x = ids(batch=1)

    def head_logits():
        return model.lm_head(model.model(x).last_hidden_state[:, -1:])

    with torch.no_grad():
        torch.testing.assert_close(model(x, logits_to_keep=1).logits, head_logits())
        assert model._head_columns is not None, "one row without autograd should use the copy"
        model.model.embed_tokens.weight.mul_(2)  # tied to the head, changed in place
        torch.testing.assert_close(model(x, logits_to_keep=1).logits, head_logits())
        model.load_state_dict(make_model(seed=1).state_dict())
        torch.testing.assert_close(model(x, logits_to_keep=1).logits, head_logits())
        compiled = torch.compile(model, backend="aot_eager", fullgraph=True)  # the multiply-and-sum form
        torch.testing.assert_close(compiled(x, logits_to_keep=1).logits, head_logits())
    model.train()
    assert model._head_columns is None
    model(x, logits_to_keep=1)  # with autograd: the plain head, no copy
    assert model._head_columns is None


@pytest.mark.slow
def test_flex_attention_matches_sdpa_with_padding(monkeypatch):
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    model = make_model()
    input_ids = ids()
    mask = torch.ones_like(input_ids)
    mask[1, :3] = 0
    calls = []
    flex = ALL_ATTENTION_FUNCTIONS["flex_attention"]
    monkeypatch.setitem(ALL_ATTENTION_FUNCTIONS, "flex_attention", lambda *a, **k: calls.append(1) or flex(*a, **k))
    with torch.no_grad():  # FlexAttention has no CPU backward
        sdpa = model(input_ids, attention_mask=mask).logits
        model.set_attn_implementation("flex_attention")
        flexed = model(input_ids, attention_mask=mask).logits
    assert calls, "flex_attention was not used"
    assert (flexed - sdpa)[mask.bool()].abs().max() < 1e-5
