"""The GPU benchmark of issue 15: ScratchGPT against GPT2LMHeadModel, one table, one short run.

GPT-2 124M (preset `gpt2-small`), context 1024, bf16, on one CUDA device. Prints:

* a correctness line: eager, sdpa and flex logits of the same bf16 weights against an fp32 eager
  reference (relative error ||a - b|| / ||b||, tolerance `LOGITS_TOLERANCE`), and a 20-step bf16
  `pretrain` -> `finetune-instruct` -> `chat` run through `scratch_gpt.cli.main` whose logged
  losses are all finite;
* training tokens/s and MFU, with and without `torch.compile`, for ScratchGPT with sdpa and with
  flex attention (each with the chunked loss `loss_chunk_size`, as the training loop runs it, and
  without), and for GPT2LMHeadModel with the same weights (`scratch_gpt.convert.to_gpt2`);
* generation tokens/s at batch 1 and 32 (KV cache, greedy, a fixed number of new tokens);
* the ratio ScratchGPT / GPT-2 on every row, and the targets beside it.

The training step is the same for every model (`bench_model.make_train_step`): forward under
bf16 autocast with fp32 weights, as `--mixed-precision bf16` trains, backward, fused AdamW.
Generation runs bf16 weights with sdpa, uncompiled. GPT2LMHeadModel has no flex attention in
transformers, so flex rows compare with GPT-2's sdpa of the same compile setting.
MFU = tokens/s x `model.flops_per_token(seq_len)` / the device's dense bf16 peak from
`scratch_gpt.training.metrics.peak_flops` (on CPU: a measured fp32 matmul rate).

Timing: all models of one compile setting are built, warmed up (compiled once each), then timed
for `--steps` steps per repeat, `--repeats` times, the order reversed on every other repeat; the
table shows medians and the spread (min-max). The compiled rows come last and are added one by one
while `--budget-s` allows (each compile's time is estimated from the first); a row left out says so.

    PYTHONPATH=. python scripts/bench_gpu.py                  # CUDA: the issue's table
    PYTHONPATH=. python scripts/bench_gpu.py --cpu-dry-run    # the same code paths, tiny, on CPU
"""

import argparse
import copy
import gc
import io
import json
import math
import statistics
import sys
import tempfile
import time
import traceback
from contextlib import redirect_stdout
from pathlib import Path

import torch
from torch._dynamo.utils import counters

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_model, beside this file
from bench_model import generate_rate, make_train_step, sync, timed_rate  # noqa: E402

LOGITS_TOLERANCE = 2e-2  # relative error of bf16 logits against fp32 (bf16 keeps ~3 significant digits; 12 layers)
TARGETS = (
    "targets: required >= 1.00x GPT2LMHeadModel on every row; goal MFU >= 50% of the card's dense bf16 peak; "
    "the book's optimised script: 142k tokens/s on an A100, about 39% MFU"
)
FLEX = "flex_attention"


def log(message: str) -> None:
    print(message, flush=True)


class Clock:
    """Seconds since the start, and what is left of the budget."""

    def __init__(self, budget_s: float):
        self.start, self.budget_s = time.perf_counter(), budget_s

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.budget_s - self.elapsed()


def versions() -> str:
    """The versions that matter, and where transformers comes from (the carried wheel, on the GPU machine)."""
    import importlib

    parts = [f"python={sys.version.split()[0]}"]
    for name in ("torch", "transformers", "accelerate", "peft", "tokenizers", "huggingface_hub", "datasets", "triton"):
        try:
            parts.append(f"{name}={importlib.import_module(name).__version__}")
        except Exception as error:  # missing, or broken against the others: say so, go on
            parts.append(f"{name}=({type(error).__name__})")
    import transformers

    return " ".join(parts) + f" (transformers from {Path(transformers.__file__).parent})"


def check_transformers() -> None:
    """The package needs transformers >= 5.20: the carried wheel must come before the machine's own."""
    import transformers
    from packaging.version import Version

    if Version(transformers.__version__) < Version("5.20"):
        sys.exit(f"transformers {transformers.__version__} found first on the path; put the carried 5.2x wheel first (PYTHONPATH).")


def base_model(args):
    """The one set of weights every row starts from (fp32, CPU)."""
    from scratch_gpt import ScratchGPTConfig, ScratchGPTForCausalLM

    config = ScratchGPTConfig.from_preset(args.preset, max_position_embeddings=max(args.seq_len, 1024), bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    return ScratchGPTForCausalLM(config)


def flex_unavailable(device) -> str | None:
    """Why flex attention cannot train here, or None."""
    return "skipped on CPU (needs CUDA or compile)" if device.type != "cuda" else None


def relative_error(a, b) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@torch.no_grad()
def check_logits(base, args, device) -> tuple[bool, str]:
    """eager, sdpa and flex logits (bf16 weights) against fp32 eager; each within LOGITS_TOLERANCE."""
    batch = torch.randint(0, base.config.vocab_size, (2, args.seq_len), generator=torch.Generator().manual_seed(1)).to(device)
    model = copy.deepcopy(base).to(device).eval()
    model.set_attn_implementation("eager")
    reference = model(batch).logits.float()
    model = model.to(torch.bfloat16)
    errors, notes = {}, []
    for impl in ("eager", "sdpa", FLEX):
        if impl == FLEX and flex_unavailable(device):
            notes.append(f"flex: {flex_unavailable(device)}")
            continue
        model.set_attn_implementation(impl)
        errors[impl] = relative_error(model(batch).logits, reference)
    ok = all(math.isfinite(e) and e <= LOGITS_TOLERANCE for e in errors.values())
    shown = ", ".join(f"{impl} {e:.2e}" for impl, e in errors.items())
    line = f"logits bf16 vs fp32 eager, rel. error ||a-b||/||b|| <= {LOGITS_TOLERANCE:g}: {shown}"
    return ok, line + ("; " + "; ".join(notes) if notes else "")


def run_pipeline(folder: Path, device) -> tuple[bool, str]:
    """pretrain (bf16, 20 steps) -> finetune-instruct (bf16, 20 steps) -> chat, through the real CLI.
    On a CPU without bf16 kernels (a dry run) the CLI refuses bf16, so the steps run in fp32 and say so."""
    import random

    from scratch_gpt.cli import main
    from scratch_gpt.training.loop import bf16_supported

    precision, shown = ("bf16", "bf16") if bf16_supported() else ("no", "fp32 (no bf16 kernels here)")

    words = "the a model token learns reads writes returns each every small large list value key name file".split()
    rng = random.Random(0)
    corpus = folder / "corpus.jsonl"
    with corpus.open("w") as file:
        for _ in range(300):
            text = ". ".join(" ".join(rng.choice(words) for _ in range(rng.randint(4, 9))) for _ in range(3)) + "."
            file.write(json.dumps({"text": text}) + "\n")
    records = folder / "instruct.jsonl"
    with records.open("w") as file:
        for i in range(48):
            word = words[i % len(words)]
            file.write(json.dumps({"instruction": f"Say {word}.", "output": f"{word} {word}."}) + "\n")
    common = ["--max-steps", "20", "--mixed-precision", precision, "--batch-size", "8", "--no-progress", "--report-to", "none"]
    steps = [
        ("pretrain", ["pretrain", "--data", str(corpus), "--vocab-size", "400", "--block-size", "256", "--hidden-size", "64",
                      "--num-layers", "2", "--num-heads", "2", "--warmup-steps", "2", "--lr", "3e-3", "--eval-every", "10",
                      "--eval-batches", "2", "--log-every", "1", "--save-every", "0", "--output-dir", str(folder / "base"), *common]),
        ("finetune-instruct", ["finetune-instruct", "--model", str(folder / "base" / "model"), "--data", str(records), "--lr", "5e-3",
                               "--log-every", "1", "--max-new-tokens", "6", "--output-dir", str(folder / "instruct"), *common]),
    ]  # fmt: skip
    parts = []
    for name, argv in steps:
        printed = io.StringIO()
        with redirect_stdout(printed):
            code = main(argv)
        output = Path(argv[argv.index("--output-dir") + 1])
        if code != 0 or not (output / "metrics.jsonl").exists():
            log(printed.getvalue()[-2000:])
            return False, "; ".join([*parts, f"{name} rc={code}, no metrics.jsonl"])
        losses = [
            value
            for line in (output / "metrics.jsonl").read_text().splitlines()
            for key, value in json.loads(line).items()
            if key.endswith("loss") and isinstance(value, (int, float))
        ]
        finite = code == 0 and bool(losses) and all(math.isfinite(v) for v in losses)
        parts.append(f"{name} rc={code} last loss {losses[-1] if losses else float('nan'):.3f} ({len(losses)} logged, {'all finite' if finite else 'NOT FINITE'})")
        if not finite:
            log(printed.getvalue()[-2000:])
            return False, "; ".join(parts)
    printed = io.StringIO()
    with redirect_stdout(printed):
        code = main(["chat", str(folder / "instruct"), "--prompt", "Say fox.", "--max-new-tokens", "8"])
    answer = printed.getvalue().strip().replace("\n", " ")[:40]
    parts.append(f"chat rc={code} answer {answer!r}")
    return code == 0, f"{shown} {device.type}: " + "; ".join(parts)


def build(base, kind: str, attn: str, device, dtype=None):
    """A copy of the base weights on `device`: ScratchGPT ("ours") or GPT2LMHeadModel ("peer")."""
    from scratch_gpt.convert import to_gpt2

    model = copy.deepcopy(base)
    if kind == "peer":
        model = to_gpt2(model)
    model.set_attn_implementation(attn)
    return model.to(device=device, dtype=dtype)


def train_members(device) -> list[tuple[str, str, str, bool]]:
    """(row name, model kind, attention, chunked loss), most wanted first."""
    members = [
        ("ScratchGPT sdpa chunked", "ours", "sdpa", True),
        ("GPT-2 sdpa", "peer", "sdpa", False),
        ("ScratchGPT flex chunked", "ours", FLEX, True),
        ("ScratchGPT sdpa", "ours", "sdpa", False),
        ("ScratchGPT flex", "ours", FLEX, False),
    ]
    return [m for m in members if not (m[2] == FLEX and flex_unavailable(device))]


def bench_training(base, args, device, compiled: bool, clock: Clock, results: dict) -> None:
    """Warm up (compile) each member while the budget allows, then time them in alternating order."""
    batch = torch.randint(0, base.config.vocab_size, (args.batch, args.seq_len), generator=torch.Generator().manual_seed(0)).to(device)
    rows, steps, estimate = {}, {}, None  # rows: row name -> rates, or why there are none
    for name, kind, attn, chunk in train_members(device):
        row = f"train {name}{' compiled' if compiled else ''}"
        needed = (estimate or 0) * 1.3 + args.reserve_s
        if compiled and clock.left() < needed:
            rows[row] = f"skipped: time budget ({clock.left():.0f} s left, ~{needed:.0f} s needed)"
            log(f"{row}: {rows[row]}")
            continue
        try:
            model = build(base, kind, attn, device)
            step = make_train_step(model, device, compiled, chunk and args.loss_chunk_size, torch.bfloat16, args.compile_backend)
            started = time.perf_counter()
            for _ in range(args.warmup):
                loss = step(batch)
            sync(device)
            warm = time.perf_counter() - started
            estimate = max(estimate or 0, warm) if compiled else estimate
            log(f"{row}: warm-up {warm:.1f} s, loss {loss.item():.3f}")
            if compiled:  # where dynamo split the graph: each break costs speed
                reasons = dict(counters["graph_break"])
                counters["graph_break"].clear()
                for reason, count in reasons.items():
                    log(f"  graph break x{count}: {' '.join(reason.split())[:200]}")
            rows[row], steps[row] = [], step
        except Exception as error:
            rows[row] = f"failed: {type(error).__name__}: {str(error).splitlines()[0][:160] if str(error) else ''}"
            log(f"{row}: {rows[row]}")
            traceback.print_exc()
    for repeat in range(args.repeats):
        for row in list(steps)[:: -1 if repeat % 2 else 1]:
            rate = timed_rate(steps[row], batch, args.steps, device)
            rows[row].append(rate)
            log(f"repeat {repeat + 1} {row}: {rate:,.0f} tokens/s")
    results.update(rows)
    steps.clear()
    release(device)


def bench_generation(base, args, device, results: dict) -> None:
    """Greedy generation with the KV cache, bf16 weights, sdpa: both models, alternating order."""
    models = {"ours": build(base, "ours", "sdpa", device, torch.bfloat16), "peer": build(base, "peer", "sdpa", device, torch.bfloat16)}
    generator = torch.Generator().manual_seed(2)
    for size in args.gen_batches:
        prompt = torch.randint(0, base.config.vocab_size, (size, args.prompt_len), generator=generator).to(device)
        for repeat in range(args.repeats):
            for kind in ("ours", "peer")[:: -1 if repeat % 2 else 1]:
                row = f"generate {'ScratchGPT' if kind == 'ours' else 'GPT-2'} batch {size}"
                rate = generate_rate(models[kind], prompt, args.new_tokens, device)
                results.setdefault(row, []).append(rate)
                log(f"repeat {repeat + 1} {row}: {rate:,.0f} tokens/s")
    models.clear()
    release(device)


def release(device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    torch._dynamo.reset()  # compiled graphs of the models just dropped


def peer_row(row: str) -> str | None:
    """The GPT-2 row a ScratchGPT row is compared with (GPT-2 has no flex: its sdpa)."""
    if row.startswith("train "):
        return "train GPT-2 sdpa" + (" compiled" if row.endswith(" compiled") else "")
    if row.startswith("generate "):
        return "generate GPT-2 batch " + row.rsplit(" ", 1)[1]
    return None


def print_table(results: dict, flops_per_token: float, peak: float | None, peak_note: str) -> None:
    log(f"\n{'row':<42}{'tokens/s':>12}{'min-max':>22}{'MFU':>8}{'/ GPT-2':>9}")
    for row, values in results.items():
        if isinstance(values, str):
            log(f"{row:<42}{values}")
            continue
        median = statistics.median(values)
        spread = f"{min(values):,.0f}-{max(values):,.0f}"
        mfu = f"{median * flops_per_token / peak:.1%}" if peak and row.startswith("train ") else "-"
        peer = results.get(peer_row(row))
        ratio = f"{median / statistics.median(peer):.2f}x" if isinstance(peer, list) else "-"
        log(f"{row:<42}{median:>12,.0f}{spread:>22}{mfu:>8}{ratio:>9}")
    log("flex rows are divided by GPT-2's sdpa row of the same compile setting (GPT2LMHeadModel has no flex attention)")
    log(f"MFU: tokens/s x {flops_per_token / 1e6:.1f} MFLOP/token (flops_per_token) / peak {peak_note}")
    log(TARGETS)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu-dry-run", action="store_true", help="tiny shapes on CPU: the same code paths in about a minute")
    parser.add_argument("--preset", default="gpt2-small")
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per model (the compile happens here)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per model and repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--loss-chunk-size", type=int, default=256, help="as the training loop's default")
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--gen-batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--compile-backend", default="inductor")
    parser.add_argument("--budget-s", type=float, default=240, help="stop adding compiled rows past this (seconds from start)")
    parser.add_argument("--reserve-s", type=float, default=15, help="seconds kept free after the last compiled row's warm-up")
    parser.add_argument("--no-pipeline", dest="pipeline", action="store_false", help="skip the pretrain/finetune/chat check")
    args = parser.parse_args()
    if args.cpu_dry_run:  # tiny shapes; aot_eager traces the compiled path without inductor's long C++ builds
        args.preset, args.seq_len, args.batch, args.warmup, args.steps, args.repeats = "tiny", 128, 4, 2, 3, 2
        args.new_tokens, args.gen_batches, args.compile_backend, args.budget_s, args.loss_chunk_size = 8, [1, 4], "aot_eager", 100, 64
    return args


def main() -> int:
    args = parse_args()
    clock = Clock(args.budget_s)
    check_transformers()
    import transformers

    from scratch_gpt.training.metrics import measured_cpu_peak, peak_flops

    transformers.logging.set_verbosity_error()
    for limit in ("recompile_limit", "cache_size_limit"):  # one compiled model per row: never fall back to eager
        if hasattr(torch._dynamo.config, limit):
            setattr(torch._dynamo.config, limit, 64)
    device = torch.device("cpu" if args.cpu_dry_run or not torch.cuda.is_available() else "cuda")
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = peak_flops(device, "bf16")
        peak_note = f"{peak / 1e12:.0f} TFLOP/s (dense bf16, {name})" if peak else f"unknown for {name!r} (no MFU)"
    else:
        name, peak = "CPU", measured_cpu_peak()
        peak_note = f"{peak / 1e9:.0f} GFLOP/s (CPU: measured fp32 matmul, not a bf16 peak)"
    log(versions())
    base = base_model(args)
    config = base.config
    flops = float(base.flops_per_token(args.seq_len))
    log(
        f"device={name} preset={args.preset} params={base.num_parameters() / 1e6:.1f}M vocab={config.vocab_size} "
        f"seq={args.seq_len} batch={args.batch} warmup={args.warmup} steps={args.steps} repeats={args.repeats} "
        f"(median, min-max, order alternated) train: bf16 autocast, fp32 weights, fused AdamW; "
        f"generate: bf16 weights, sdpa, greedy, prompt {args.prompt_len} + {args.new_tokens} new tokens"
    )

    checks, results = [], {}

    def attempt(label, function, *fargs):
        """Run one part; a failure is reported and the rest still runs."""
        started = time.perf_counter()
        try:
            out = function(*fargs)
        except Exception as error:
            traceback.print_exc()
            out = (False, f"{label} failed: {type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}")
        log(f"[{clock.elapsed():.0f} s] {label} done in {time.perf_counter() - started:.0f} s")
        return out

    checks.append(attempt("logits check", check_logits, base, args, device))
    log(checks[-1][1])
    attempt("training, eager", bench_training, base, args, device, False, clock, results)
    attempt("generation", bench_generation, base, args, device, results)
    if args.pipeline:
        with tempfile.TemporaryDirectory() as folder:
            checks.append(attempt("pipeline", run_pipeline, Path(folder), device))
        log(checks[-1][1])
    attempt("training, compiled", bench_training, base, args, device, True, clock, results)

    if flex_unavailable(device):
        results["train ScratchGPT flex (chunked and not)"] = f"flex: {flex_unavailable(device)}"
    log(f"\n{args.preset} ScratchGPT vs GPT2LMHeadModel (scripts/bench_gpu.py), {clock.elapsed():.0f} s")
    print_table(results, flops, peak, peak_note)
    ok = all(passed for passed, _ in checks)
    log(f"correctness: {'PASS' if ok else 'FAIL'}")
    for _, line in checks:
        log(f"  {line}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
