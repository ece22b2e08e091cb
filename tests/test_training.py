"""The Accelerate training loop: optimizer, schedule, evaluation, metrics, checkpoints, resume, divergence."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from scratch_gpt import ScratchGPTConfig, ScratchGPTForCausalLM
from scratch_gpt.training.loop import (
    MetricsLog,
    TrainingConfig,
    TrainingDiverged,
    build_optimizer,
    lr_factor,
    read_checkpoint_state,
    train,
)

VOCAB = 64
BLOCK = 16


def tiny_model(seed=0):
    torch.manual_seed(seed)
    config = ScratchGPTConfig.from_preset(
        "tiny", vocab_size=VOCAB, hidden_size=32, num_attention_heads=2, max_position_embeddings=BLOCK
    )
    return ScratchGPTForCausalLM(config)


def pattern_blocks(n, seed=0):
    """Blocks of a learnable sequence: each token is (previous * 3 + 1) mod VOCAB."""
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for start in torch.randint(0, VOCAB, (n,), generator=generator).tolist():
        ids = [start]
        for _ in range(BLOCK - 1):
            ids.append((ids[-1] * 3 + 1) % VOCAB)
        rows.append({"input_ids": ids, "labels": ids})
    return rows


def quiet(tmp_path, **overrides):
    options = dict(output_dir=str(tmp_path / "run"), batch_size=4, progress=False, report_to="none", log_every=1)
    return TrainingConfig(**{**options, **overrides})


def test_schedule_warms_up_linearly_then_decays_by_cosine_to_the_floor():
    factor = lambda step: lr_factor(step, warmup_steps=10, total_steps=110, min_lr_ratio=0.1)  # noqa: E731
    assert [factor(s) for s in range(3)] == pytest.approx([0.1, 0.2, 0.3])
    assert factor(9) == pytest.approx(1.0) and factor(10) == pytest.approx(1.0)
    assert factor(60) == pytest.approx(0.1 + 0.9 * 0.5)  # half way through the cosine
    assert factor(110) == pytest.approx(0.1) and factor(500) == pytest.approx(0.1)
    values = [factor(s) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_optimizer_skips_frozen_params_and_does_not_decay_biases_norms_embeddings():
    model = tiny_model()
    frozen = next(p for n, p in model.named_parameters() if n.endswith("mlp.fc_in.weight"))
    frozen.requires_grad_(False)
    optimizer = build_optimizer(model, TrainingConfig(weight_decay=0.1))
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    ids = lambda group: {id(p) for p in group["params"]}  # noqa: E731
    names = {id(p): n for n, p in model.named_parameters()}
    assert id(frozen) not in ids(decay) | ids(no_decay)
    assert all(p.ndim >= 2 for p in decay["params"])
    embeddings = [p for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters()]
    assert embeddings and all(id(p) in ids(no_decay) for p in embeddings)
    assert any(names[i].endswith("bias") for i in ids(no_decay))
    assert any("qkv_proj.weight" in names[i] for i in ids(decay))
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert ids(decay) | ids(no_decay) == trainable and not ids(decay) & ids(no_decay)


def test_training_lowers_the_loss_and_writes_metrics_curve_and_a_loadable_model(tmp_path):
    data = pattern_blocks(72)
    calls = []

    def evaluate_fn(model, dataloader, accelerator):
        calls.append(len(dataloader))
        return {"answer": 42.0}

    config = quiet(
        tmp_path, max_steps=40, learning_rate=1e-2, warmup_steps=4, eval_every=20, eval_at_start=True, bytes_per_token=2.0,
        peak_flops=1e12,  # on a CPU, MFU is shown only against a peak the user gives
    )
    results = train(tiny_model(), data[:64], data[64:], config, evaluate_fn=evaluate_fn, final_dir=tmp_path / "model")
    assert results["step"] == 40 and results["tokens"] == 40 * 4 * BLOCK
    assert results["eval_loss"] < results["initial_eval_loss"] - 1.0
    assert results["perplexity"] == pytest.approx(math.exp(results["eval_loss"]))
    assert results["bits_per_byte"] == pytest.approx(results["eval_loss"] / math.log(2) / 2.0)
    assert results["answer"] == 42.0 and len(calls) == 3  # start, step 20, end

    run = tmp_path / "run"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_records = [r for r in records if "train_loss" in r]
    assert [r["step"] for r in train_records] == list(range(1, 41))
    assert {"lr", "tokens_per_s", "mfu"} <= set(train_records[0])
    assert [r["step"] for r in records if "eval_loss" in r] == [0, 20, 40]
    assert (run / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    batch = torch.tensor([data[70]["input_ids"]])
    assert reloaded(batch, labels=batch).loss.item() < results["initial_eval_loss"] - 1.0


def test_an_evaluate_fn_that_returns_the_loss_replaces_the_loops_own_pass(tmp_path):
    """Classification measures loss and accuracy in one pass: the loop then runs no second one."""
    data = pattern_blocks(72)
    model = tiny_model()
    forwards = []
    model.register_forward_hook(lambda module, args, output: forwards.append(module.training))

    def evaluate_fn(model, dataloader, accelerator):
        return {"loss": 1.5, "answer": 42.0}

    results = train(model, data[:64], data[64:], quiet(tmp_path, max_steps=2), evaluate_fn=evaluate_fn)
    assert results["eval_loss"] == 1.5 and results["perplexity"] == pytest.approx(math.exp(1.5))
    assert results["answer"] == 42.0 and "loss" not in results
    assert forwards == [True, True]  # the two training steps; no evaluation forward


def test_metrics_also_go_to_tensorboard(tmp_path):
    train(tiny_model(), pattern_blocks(8), None, quiet(tmp_path, max_steps=2, report_to="tensorboard"))
    assert list((tmp_path / "run" / "tensorboard").rglob("events.out.tfevents.*"))


def test_gradient_accumulation_matches_one_large_batch(tmp_path, monkeypatch):
    # Plain SGD without clipping: the update is proportional to the gradient, so a missing 1/N
    # scaling of the accumulated loss would double it (AdamW and clipping would hide that).
    from scratch_gpt.training import loop

    sgd = lambda model, config: torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)  # noqa: E731
    monkeypatch.setattr(loop, "build_optimizer", sgd)
    data = pattern_blocks(32)
    options = dict(max_steps=4, shuffle=False, max_grad_norm=0, warmup_steps=0, min_lr_ratio=1.0)
    large, small = tiny_model(), tiny_model()
    train(large, data, None, quiet(tmp_path / "a", batch_size=8, **options))
    train(small, data, None, quiet(tmp_path / "b", batch_size=4, gradient_accumulation_steps=2, **options))
    start = tiny_model().state_dict()
    for name, weight in large.state_dict().items():
        assert not torch.equal(weight, start[name]) or "norm" in name or "embed_positions" in name  # it trained
        torch.testing.assert_close(small.state_dict()[name], weight, rtol=1e-4, atol=1e-5), name


class NaNAfter(torch.nn.Module):
    """A regression model whose inputs turn NaN from row `bad_from` on (the loop sees a NaN loss)."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 1)

    def forward(self, x, y):
        return SimpleNamespace(loss=torch.nn.functional.mse_loss(self.linear(x).squeeze(-1), y))


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(tmp_path):
    rows = [{"x": [float(i)] * 4 if i < 24 else [math.nan] * 4, "y": 1.0} for i in range(40)]
    config = quiet(tmp_path, max_steps=10, shuffle=False, save_every=2, log_every=5, learning_rate=1e-3)
    with pytest.raises(TrainingDiverged, match=r"nan.*step-00000006.*learning rate"):
        train(NaNAfter(), rows, None, config)
    checkpoints = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert checkpoints == ["step-00000004", "step-00000006"]
    weights = load_file(tmp_path / "run" / "checkpoints" / "step-00000006" / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in weights.values())


def test_checkpoints_keep_the_last_k_and_a_damaged_newest_one_is_skipped_on_resume(tmp_path):
    data = pattern_blocks(40)
    train(tiny_model(), data, None, quiet(tmp_path, max_steps=9, save_every=3, keep_checkpoints=2))
    folder = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["step-00000006", "step-00000009"]
    assert read_checkpoint_state(folder / "step-00000009")["step"] == 9

    weights = folder / "step-00000009" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated: a damaged newest checkpoint
    with pytest.raises(ValueError, match="incomplete"):
        read_checkpoint_state(folder / "step-00000009")
    with pytest.warns(UserWarning, match="Skipping checkpoint step-00000009"):
        results = train(tiny_model(), data, None, quiet(tmp_path, max_steps=12, save_every=3, resume=True))
    assert results["step"] == 12
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 13))  # resumed at 6: the log of the first run up to 6, then 7..12


def test_bad_input_fails_before_training(tmp_path):
    data = pattern_blocks(8)
    with pytest.raises(ValueError, match="fewer than one global batch"):
        train(tiny_model(), data[:3], None, quiet(tmp_path, max_steps=2))
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        quiet(tmp_path, batch_size=0)
    train(tiny_model(), data, None, quiet(tmp_path, max_steps=2, save_every=1))
    with pytest.raises(FileExistsError, match="already holds checkpoints"):
        train(tiny_model(), data, None, quiet(tmp_path, max_steps=2, save_every=1))


# A training run in its own process (fixed thread count, so every run does the same arithmetic).
SCRIPT = """
import sys, time
import torch
torch.set_num_threads(1)
sys.path.insert(0, {tests!r})
from test_training import tiny_model, pattern_blocks
from scratch_gpt.training.loop import TrainingConfig, train

class Slow(list):
    def __getitem__(self, index):  # slow enough that the test can kill the run half way
        time.sleep(0.01)
        return list.__getitem__(self, index)

output_dir, resume = sys.argv[1], sys.argv[2] == "resume"
config = TrainingConfig(output_dir=output_dir, max_steps=30, batch_size=4, gradient_accumulation_steps=2,
                        learning_rate=1e-2, warmup_steps=3, save_every=5, keep_checkpoints=2, log_every=5,
                        eval_every=10, progress=False, report_to="none", resume=resume, seed=3)
data = Slow(pattern_blocks(36))
train(tiny_model(), data, pattern_blocks(8, seed=1), config, final_dir=output_dir + "/model")
"""


@pytest.mark.slow
def test_a_run_killed_with_sigkill_and_resumed_ends_with_bitwise_identical_weights(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(SCRIPT.format(tests=str(Path(__file__).parent)))
    run = lambda folder, mode: [sys.executable, str(script), str(tmp_path / folder), mode]  # noqa: E731

    subprocess.run(run("straight", "fresh"), check=True, capture_output=True)

    killed = subprocess.Popen(run("killed", "fresh"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = tmp_path / "killed" / "checkpoints" / "step-00000010"
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(killed.pid, signal.SIGKILL)
    assert killed.wait() == -signal.SIGKILL
    assert not (tmp_path / "killed" / "model").exists()  # it really died mid-training

    subprocess.run(run("killed", "resume"), check=True, capture_output=True)
    straight = load_file(tmp_path / "straight" / "model" / "model.safetensors")
    resumed = load_file(tmp_path / "killed" / "model" / "model.safetensors")
    assert straight.keys() == resumed.keys()
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name


class StopAt:
    """A collate function that raises once it has seen `limit` batches (an interrupted run)."""

    def __init__(self, limit):
        self.limit, self.seen = limit, 0

    def __call__(self, rows):
        self.seen += 1
        if self.seen > self.limit:
            raise KeyboardInterrupt("interrupted")
        return {key: torch.tensor([row[key] for row in rows]) for key in rows[0]}


def test_a_streamed_training_set_trains_and_resumes_to_the_same_weights(tmp_path):
    import datasets

    stream = datasets.Dataset.from_list(pattern_blocks(40)).to_iterable_dataset()
    config = dict(max_steps=8, save_every=3, shuffle=False)
    whole = tiny_model()
    results = train(whole, stream, None, quiet(tmp_path / "a", **config))
    assert results["step"] == 8

    with pytest.raises(KeyboardInterrupt):  # stops during step 5, after the step-3 checkpoint
        train(tiny_model(), stream, None, quiet(tmp_path / "b", **config), collate_fn=StopAt(4))
    resumed = tiny_model(seed=1)  # other initial weights: everything must come from the checkpoint
    train(resumed, stream, None, quiet(tmp_path / "b", resume=True, **config))
    assert all(torch.equal(a, b) for a, b in zip(whole.state_dict().values(), resumed.state_dict().values()))

    with pytest.raises(ValueError, match="max_steps"):
        train(tiny_model(), stream, None, quiet(tmp_path / "c"))


def test_a_plot_that_fails_half_way_keeps_the_previous_loss_curve(tmp_path, monkeypatch):
    import matplotlib.figure

    log = MetricsLog(SimpleNamespace(is_main_process=True, log=lambda *args, **kwargs: None), tmp_path, None)
    log.log(1, {"train_loss": 2.0})
    curve = tmp_path / "loss_curve.png"
    log.plot(curve)
    good = curve.read_bytes()

    def fail_half_way(self, path, **kwargs):
        Path(path).write_bytes(b"\x89PNG half")
        raise OSError("disk full")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", fail_half_way)
    log.log(2, {"train_loss": 1.0})
    with pytest.raises(OSError, match="disk full"):
        log.plot(curve)
    assert curve.read_bytes() == good


def test_resume_with_nothing_to_resume_is_an_error_and_touches_nothing(tmp_path):
    with pytest.raises(FileNotFoundError, match="found no checkpoint"):
        train(tiny_model(), pattern_blocks(8), None, quiet(tmp_path, max_steps=2, resume=True))
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_resume_into_another_model_names_what_differs_and_keeps_the_log(tmp_path):
    data = pattern_blocks(16)
    train(tiny_model(), data, None, quiet(tmp_path, max_steps=4, save_every=2))
    log = (tmp_path / "run" / "metrics.jsonl").read_text()
    torch.manual_seed(0)
    wider = ScratchGPTForCausalLM(
        ScratchGPTConfig.from_preset("tiny", vocab_size=VOCAB, hidden_size=48, num_attention_heads=2, max_position_embeddings=BLOCK)
    )
    with pytest.raises(ValueError, match=r"another model .*hidden_size 32 vs 48"):
        train(wider, data, None, quiet(tmp_path, max_steps=6, save_every=2, resume=True))
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == log  # validated before anything was touched


def test_a_log_line_cut_by_a_kill_is_dropped_and_every_earlier_line_kept(tmp_path):
    data = pattern_blocks(16)
    train(tiny_model(), data, None, quiet(tmp_path, max_steps=4, save_every=2))
    path = tmp_path / "run" / "metrics.jsonl"
    path.write_text(path.read_text() + '{"step": 5, "train_lo')  # a kill in the middle of a write
    train(tiny_model(), data, None, quiet(tmp_path, max_steps=6, save_every=2, resume=True))
    steps = [json.loads(line)["step"] for line in path.read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_figures_are_true_or_absent_mfu_only_against_a_known_peak_perplexity_only_for_a_language_model(tmp_path):
    """On a CPU nothing knows the peak: no MFU unless --peak-flops is given, and then never clamped.
    Perplexity and bits per byte belong to next-token loss, not to a classifier's."""
    from scratch_gpt import ScratchGPTForSequenceClassification

    def records(run):
        return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]

    data = pattern_blocks(24)
    results = train(tiny_model(), data[:16], data[16:], quiet(tmp_path / "a", max_steps=2, eval_every=1, bytes_per_token=2.0))
    assert not any("mfu" in r for r in records(tmp_path / "a" / "run"))
    assert "perplexity" in results and "bits_per_byte" in results
    train(tiny_model(), data[:16], data[16:], quiet(tmp_path / "b", max_steps=2, peak_flops=1.0))  # 1 FLOP/s: far below the truth
    trained = [r for r in records(tmp_path / "b" / "run") if "mfu" in r]
    assert trained and all(r["mfu"] > 1.0 for r in trained)  # shown as measured, not clamped to 100%

    config = ScratchGPTConfig.from_preset("tiny", vocab_size=VOCAB, hidden_size=32, num_attention_heads=2, max_position_embeddings=BLOCK, num_labels=2)
    labelled = [{"input_ids": row["input_ids"], "labels": row["input_ids"][0] % 2} for row in data]
    results = train(ScratchGPTForSequenceClassification(config), labelled[:16], labelled[16:], quiet(tmp_path / "c", max_steps=2, bytes_per_token=2.0))
    assert "eval_loss" in results and "perplexity" not in results and "bits_per_byte" not in results
    assert not any("perplexity" in r for r in records(tmp_path / "c" / "run"))


def test_a_model_factory_trains_like_the_model_it_builds_and_seq_len_is_never_read_off_the_data(tmp_path):
    """`train` takes a zero-argument factory (called once, by the trainer) as well as a built model;
    the context length behind MFU is the one handed over, not the length of a data row."""
    data = pattern_blocks(16)
    calls = []

    def factory():
        calls.append(1)
        return tiny_model()

    built = train(tiny_model(), data, None, quiet(tmp_path / "a", max_steps=2), final_dir=tmp_path / "a" / "model")
    made = train(factory, data, None, quiet(tmp_path / "b", max_steps=2, peak_flops=1.0), final_dir=tmp_path / "b" / "model", seq_len=7)
    assert len(calls) == 1 and made["train_loss"] == built["train_loss"]
    weights = [load_file(tmp_path / run / "model" / "model.safetensors") for run in ("a", "b")]
    assert all(torch.equal(weights[0][name], weights[1][name]) for name in weights[0])
    records = [json.loads(line) for line in (tmp_path / "b" / "run" / "metrics.jsonl").read_text().splitlines()]
    expected = tiny_model().flops_per_token(7) / 1.0  # MFU x peak / tokens per second: the FLOPs per token
    logged = [r for r in records if "mfu" in r]
    assert logged and all(r["mfu"] / r["tokens_per_s"] == pytest.approx(expected) for r in logged)


def test_the_private_accelerate_reset_is_pinned_to_the_versions_it_is_known_to_hold_for(tmp_path):
    """`new_accelerator` resets accelerate's process-wide state with `AcceleratorState._reset_state()`
    (private: accelerate has no public reset), so that each run in a process chooses its own
    precision and plugins. Known to hold for accelerate 1.10 to 1.x (read in 1.16.0's state.py);
    before another version is allowed, check that call there and move KNOWN."""
    import tomllib

    import accelerate
    from accelerate.state import AcceleratorState, PartialState
    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    from scratch_gpt.training.loop import new_accelerator

    known = SpecifierSet(">=1.10,<2")
    root = Path(__file__).resolve().parents[1]
    pins = dict(line.split("==") for line in (root / ".ci" / "constraints.txt").read_text().splitlines() if "==" in line)
    dependencies = tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]
    allowed = next(Requirement(r).specifier for r in dependencies if Requirement(r).name == "accelerate")
    assert accelerate.__version__ in known and pins["accelerate"] in known
    assert Version("1.10") in allowed and not any(Version(v) in allowed for v in ("1.9.1", "0.34.2"))  # none older
    assert callable(AcceleratorState._reset_state)

    assert new_accelerator(quiet(tmp_path), tmp_path, tensorboard=False).mixed_precision == "no"
    # accelerate refuses another precision in the same process unless its state is reset
    assert new_accelerator(quiet(tmp_path, mixed_precision="fp16"), tmp_path, tensorboard=False).mixed_precision == "fp16"
    assert PartialState().initialized  # the process group stays
