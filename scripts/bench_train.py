"""Training speed of ScratchGPT vs transformers' GPT2LMHeadModel with identical dimensions.

Both models are trained by the same loop (`scratch_gpt.training.loop.train`) on the same random
token blocks; each run happens in a fresh child process (so the peak memory is its own) and the
two models alternate over `--rounds` rounds, each going first in turn. Printed: medians over the
rounds with their spread (min-max) of tokens/s, MFU (against the best matmul peak measured during
the run, with the same FLOPs-per-token formula for both) and peak memory, with the ratio
ScratchGPT / GPT-2. Peak memory is the high-water mark above the memory held once the model is
loaded: CUDA's `max_memory_allocated`, or on CPU `ru_maxrss` minus the resident size after loading.
ScratchGPT trains with the loop's chunked loss (`--loss-chunk-size`, 0: the full logits).

    python scripts/bench_train.py                                   # small CPU model, fp32
    python scripts/bench_train.py --gpt2-124m --mixed-precision bf16 --batch-size 16   # on a GPU
"""

import argparse
import multiprocessing
import resource
import statistics
import tempfile
import time

import torch


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden-size", type=int, default=128)
    parser.add_argument("--num-layers", type=int, default=4)
    parser.add_argument("--num-heads", type=int, default=4)
    parser.add_argument("--vocab-size", type=int, default=2048)
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--gpt2-124m", action="store_true", help="GPT-2 small: 768 wide, 12 layers, 12 heads, vocab 50257, context 1024")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=30, help="measured optimizer steps")
    parser.add_argument("--warmup", type=int, default=5, help="steps run before measuring")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--loss-chunk-size", type=int, default=256, help="ScratchGPT's loss, chunk by chunk (0: off)")
    parser.add_argument("--mixed-precision", default="no", choices=["no", "bf16", "fp16"])
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    if args.gpt2_124m:
        args.hidden_size, args.num_layers, args.num_heads, args.vocab_size, args.context = 768, 12, 12, 50257, 1024
    return args


def scratch_config(args):
    from scratch_gpt import ScratchGPTConfig

    return ScratchGPTConfig(
        vocab_size=args.vocab_size,
        hidden_size=args.hidden_size,
        num_hidden_layers=args.num_layers,
        num_attention_heads=args.num_heads,
        max_position_embeddings=args.context,
        bos_token_id=0,
        eos_token_id=0,
    )


def build(kind: str, args):
    """ScratchGPT, or transformers' GPT2LMHeadModel with the same dimensions and weights."""
    from scratch_gpt import ScratchGPTForCausalLM
    from scratch_gpt.convert import to_gpt2

    torch.manual_seed(0)
    model = ScratchGPTForCausalLM(scratch_config(args))
    return model if kind == "scratch_gpt" else to_gpt2(model).train()


def flops_per_token(args) -> float:
    """The same count for both models: ScratchGPT's own formula (forward + backward)."""
    from scratch_gpt import ScratchGPTForCausalLM

    with torch.device("meta"):
        return float(ScratchGPTForCausalLM(scratch_config(args)).flops_per_token(args.context))


def measured_matmul_peak(device: str, dtype: torch.dtype) -> float:
    """FLOP/s of a large square matmul: the practical peak MFU is measured against."""
    n = 8192 if device == "cuda" else 2048
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    repeats = 20 if device == "cuda" else 5
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    if device == "cuda":
        torch.cuda.synchronize()
    return 2 * n**3 * repeats / (time.perf_counter() - start)


def measure(kind: str, args) -> dict:
    """Runs in a child process: train `kind` for warmup + steps, return its speed and peak memory."""
    import json

    import transformers

    from scratch_gpt.training.loop import TrainingConfig, train

    transformers.logging.set_verbosity_error()

    torch.manual_seed(0)
    model = build(kind, args)
    total = args.warmup + args.steps
    blocks = torch.randint(0, args.vocab_size, (total * args.batch_size, args.context)).tolist()
    data = [{"input_ids": ids, "labels": ids} for ids in blocks]
    if torch.cuda.is_available():
        model.cuda()
        torch.cuda.reset_peak_memory_stats()
        loaded = torch.cuda.memory_allocated()
    else:
        with open("/proc/self/status") as status:  # resident size now, with the model loaded
            loaded = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:"))
    with tempfile.TemporaryDirectory() as folder:
        config = TrainingConfig(
            output_dir=folder,
            max_steps=total,
            batch_size=args.batch_size,
            mixed_precision=args.mixed_precision,
            compile=args.compile,
            log_every=1,
            progress=False,
            report_to="none",
            shuffle=False,
            loss_chunk_size=args.loss_chunk_size,
        )
        train(model, data, None, config)
        records = [json.loads(line) for line in open(f"{folder}/metrics.jsonl")][args.warmup :]
    step_tokens = args.batch_size * args.context
    seconds = sum(step_tokens / r["tokens_per_s"] for r in records)
    if torch.cuda.is_available():
        peak_memory = torch.cuda.max_memory_allocated() - loaded
    else:
        peak_memory = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - loaded  # the kernel's high-water mark
    return {"tokens_per_s": step_tokens * len(records) / seconds, "peak_memory": peak_memory, "loss": records[-1]["train_loss"]}


def main():
    args = parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if args.mixed_precision == "bf16" else torch.float16 if args.mixed_precision == "fp16" else torch.float32
    peak = measured_matmul_peak(device, dtype)  # measured again each round; the best counts
    fpt = flops_per_token(args)
    name = torch.cuda.get_device_name() if device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(
        f"device: {name}; dims {args.hidden_size}x{args.num_layers} layers, {args.num_heads} heads, vocab {args.vocab_size}, "
        f"context {args.context}, batch {args.batch_size}, {args.mixed_precision}, compile={args.compile}\n"
        f"{dtype} matmul peak: {peak / 1e12:.3f} TFLOP/s; {fpt / 1e6:.1f} MFLOP per token"
    )
    results = {"scratch_gpt": [], "gpt2": []}
    spawn = multiprocessing.get_context("spawn")
    for round_ in range(args.rounds):
        peak = max(peak, measured_matmul_peak(device, dtype))
        for kind in list(results)[:: -1 if round_ % 2 else 1]:  # alternate who goes first
            with spawn.Pool(1) as pool:
                result = pool.apply(measure, (kind, args))
            print(f"round {round_ + 1} {kind}: {result['tokens_per_s']:,.0f} tokens/s, {result['peak_memory'] / 2**20:,.0f} MB", flush=True)
            results[kind].append(result)

    def median(kind, key):
        return statistics.median(r[key] for r in results[kind])

    def spread(kind, key, scale=1.0):
        values = [r[key] * scale for r in results[kind]]
        return f"{min(values):,.0f}-{max(values):,.0f}"

    print(f"\nbest measured matmul peak: {peak / 1e12:.3f} TFLOP/s; medians over {args.rounds} rounds (min-max)")
    print(f"{'model':<14}{'tokens/s':>12}{'(min-max)':>18}{'MFU':>8}{'peak MB':>10}{'(min-max)':>16}{'final loss':>12}")
    for kind in results:
        mfu = median(kind, "tokens_per_s") * fpt / peak
        print(
            f"{kind:<14}{median(kind, 'tokens_per_s'):>12,.0f}{spread(kind, 'tokens_per_s'):>18}{mfu:>8.1%}"
            f"{median(kind, 'peak_memory') / 2**20:>10,.0f}{spread(kind, 'peak_memory', 2**-20):>16}{median(kind, 'loss'):>12.3f}"
        )
    ratio = median("scratch_gpt", "tokens_per_s") / median("gpt2", "tokens_per_s")
    memory = median("scratch_gpt", "peak_memory") / median("gpt2", "peak_memory")
    print(f"ratio scratch_gpt / gpt2 (medians): {ratio:.2f}x tokens/s, {memory:.2f}x peak memory")

if __name__ == "__main__":
    main()
