"""The chunked LM-head loss (`loss_chunk_size=`): the same loss and gradients as the usual path,
without the (tokens x vocab) logits."""

import pytest
import torch

from scratch_gpt import ScratchGPTConfig, ScratchGPTForCausalLM


def make_model() -> ScratchGPTForCausalLM:
    torch.manual_seed(0)
    return ScratchGPTForCausalLM(ScratchGPTConfig.from_preset("tiny")).eval()  # eval: no dropout


def loss_and_grads(model, **kwargs):
    model.zero_grad(set_to_none=True)
    output = model(**kwargs)
    output.loss.backward()
    return output, {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def batch():
    input_ids = torch.randint(2, 512, (3, 17), generator=torch.Generator().manual_seed(1))
    labels = input_ids.clone()
    labels[0, :5] = -100  # a prompt that is not learned
    labels[2, -4:] = -100  # padding
    return input_ids, labels


@pytest.mark.parametrize("chunk", [1, 7, 16, 1000])
@pytest.mark.parametrize("num_items", [None, 29])
def test_chunked_loss_matches_the_full_logits(chunk, num_items):
    model = make_model()
    input_ids, labels = batch()
    extra = {} if num_items is None else {"num_items_in_batch": torch.tensor(num_items)}
    full, full_grads = loss_and_grads(model, input_ids=input_ids, labels=labels, **extra)
    chunked, chunked_grads = loss_and_grads(model, input_ids=input_ids, labels=labels, loss_chunk_size=chunk, **extra)
    assert chunked.logits is None and full.logits.shape == (3, 17, model.config.vocab_size)
    torch.testing.assert_close(chunked.loss, full.loss, rtol=0, atol=1e-6)
    assert chunked_grads.keys() == full_grads.keys()
    for name, grad in full_grads.items():
        torch.testing.assert_close(chunked_grads[name], grad, rtol=0, atol=1e-5, msg=name)


def test_num_items_in_batch_is_the_denominator():
    model = make_model()
    input_ids, labels = batch()
    mean = model(input_ids=input_ids, labels=labels, loss_chunk_size=8).loss
    real = (labels[:, 1:] != -100).sum()
    summed = model(input_ids=input_ids, labels=labels, loss_chunk_size=8, num_items_in_batch=2 * real).loss
    torch.testing.assert_close(summed, mean / 2)


def test_without_gradients_and_without_labels():
    model = make_model()
    input_ids, labels = batch()
    with torch.no_grad():
        full = model(input_ids=input_ids, labels=labels).loss
        chunked = model(input_ids=input_ids, labels=labels, loss_chunk_size=5).loss
        unlabelled = model(input_ids=input_ids, loss_chunk_size=5)  # nothing to chunk: the usual logits
    torch.testing.assert_close(chunked, full, rtol=0, atol=1e-6)
    assert unlabelled.loss is None and unlabelled.logits.shape[-1] == model.config.vocab_size


def test_the_loop_chunks_the_loss_of_scratch_gpt_only():
    from accelerate import Accelerator

    from scratch_gpt import ScratchGPTForSequenceClassification
    from scratch_gpt.training.loop import TrainingConfig, loss_kwargs

    accelerator, config = Accelerator(cpu=True), TrainingConfig(output_dir="unused", loss_chunk_size=64)
    assert loss_kwargs(make_model(), accelerator, config) == {"loss_chunk_size": 64}
    assert loss_kwargs(make_model(), accelerator, TrainingConfig(output_dir="unused", loss_chunk_size=0)) == {}
    classifier = ScratchGPTForSequenceClassification(ScratchGPTConfig.from_preset("tiny", num_labels=2))
    assert loss_kwargs(classifier, accelerator, config) == {}
    assert loss_kwargs(torch.nn.Linear(2, 2), accelerator, config) == {}


def test_training_with_and_without_chunks_ends_with_the_same_weights(tmp_path):
    from scratch_gpt.training.loop import TrainingConfig, train

    data = [{"input_ids": row, "labels": row} for row in torch.randint(0, 512, (8, 16)).tolist()]
    models = []
    for chunk in (0, 10):
        model = make_model().train()
        options = dict(batch_size=4, max_steps=2, shuffle=False, progress=False, report_to="none")
        train(model, data, data[:4], TrainingConfig(output_dir=str(tmp_path / str(chunk)), loss_chunk_size=chunk, **options))
        models.append(model.state_dict())
    for name, weight in models[0].items():
        torch.testing.assert_close(models[1][name], weight, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("precision", ["bf16 weights", "bf16 autocast"])
def test_chunked_loss_in_bf16(precision):
    """In bf16 the two paths round differently, so they agree to bf16's precision, not fp32's; what
    matters is that the chunked path is not worse: both are compared with the fp32 loss and gradients."""
    model = make_model()
    input_ids, labels = batch()
    reference, reference_grads = loss_and_grads(model, input_ids=input_ids, labels=labels)
    if precision == "bf16 weights":
        model, context = model.to(torch.bfloat16), torch.autocast("cpu", enabled=False)
    else:
        context = torch.autocast("cpu", dtype=torch.bfloat16)
    with context:
        full, full_grads = loss_and_grads(model, input_ids=input_ids, labels=labels)
        chunked, chunked_grads = loss_and_grads(model, input_ids=input_ids, labels=labels, loss_chunk_size=7)
    assert chunked.loss.dtype == full.loss.dtype and torch.isfinite(chunked.loss)
    chunked_error = (chunked.loss.float() - reference.loss).abs()
    assert chunked_error < 2e-2 and chunked_error <= 2 * (full.loss.float() - reference.loss).abs() + 1e-3
    for name, grad in reference_grads.items():
        scale = grad.abs().max()
        chunked_grad_error = (chunked_grads[name].float() - grad).abs().max() / scale
        full_grad_error = (full_grads[name].float() - grad).abs().max() / scale
        assert chunked_grad_error < max(0.05, 2 * full_grad_error), (name, chunked_grad_error, full_grad_error)


def test_chunked_loss_compiles_as_one_graph():
    """torch.compile traces the chunked loss whole (fullgraph: a graph break would raise), with the same gradients."""
    from scratch_gpt.modeling_scratch_gpt import chunked_lm_loss

    torch.manual_seed(0)
    hidden = torch.randn(2, 9, 16, requires_grad=True)
    weight = torch.randn(40, 16, requires_grad=True)
    labels = torch.randint(0, 40, (2, 9))
    eager = chunked_lm_loss(hidden, weight, labels, 4)
    eager_grads = torch.autograd.grad(eager, (hidden, weight))
    compiled = torch.compile(chunked_lm_loss, backend="eager", fullgraph=True)(hidden, weight, labels, 4)
    torch.testing.assert_close(compiled, eager)
    for got, want in zip(torch.autograd.grad(compiled, (hidden, weight)), eager_grads):
        torch.testing.assert_close(got, want)
