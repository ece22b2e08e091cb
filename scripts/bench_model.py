"""Benchmark ScratchGPT against transformers' own class with identical dimensions and weights:
GPT2LMHeadModel (`--arch gpt2`, the default) or LlamaForCausalLM (`--arch llama`: RoPE, RMSNorm,
SwiGLU, grouped key/value heads, no biases).

Rows: training step (forward + backward + AdamW) tokens/s and peak memory, and generation
tokens/s with the KV cache at batch 1 and batch 8, for ScratchGPT, ScratchGPT with the chunked
loss (`loss_chunk_size`: no full logits), and the peer.

Every measurement runs in a fresh child process that builds its one model (same seed, same
weights), so no model's memory or allocator state leaks into another's. Peak training memory is
the high-water mark above the memory held once the model is loaded: on CUDA,
`max_memory_allocated` after `reset_peak_memory_stats`; on CPU, the process's
`getrusage(RUSAGE_SELF).ru_maxrss` read at the end minus its resident size after loading (the
kernel's own high-water mark, not a sample). Repeats alternate the order (each model goes first
in turn); the table shows medians and the spread (min-max). The ratio column is
model / peer: above 1.0 means faster, or for memory, more.

    python scripts/bench_model.py                      # CPU, small dimensions
    python scripts/bench_model.py --vocab-size 50257 --batch 4 --repeats 5 --no-generate
    python scripts/bench_model.py --vocab-size 50257 --repeats 5 --no-train --compile   # compiled generation
    python scripts/bench_model.py --arch llama --kv-heads 2 --repeats 5
    python scripts/bench_model.py --preset gpt2-small --seq-len 1024 --batch 8 --device cuda --dtype bfloat16
    python scripts/bench_model.py --arch llama --preset smollm2-135m --seq-len 1024 --device cuda --dtype bfloat16
"""

import argparse
import contextlib
import gc
import multiprocessing
import resource
import statistics
import time

import torch

# scratch_gpt is imported inside the functions that build our models: the timing and memory helpers
# need only torch, so a peer's own environment (bench_peers.py's litgpt venv) imports them too.


def resident_bytes() -> int:
    """The process's memory in RAM now (VmRSS)."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:"))


def peak_bytes(device: torch.device) -> int:
    """The high-water mark so far: CUDA's allocator counter, or the kernel's maximum RSS (Linux: KiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def loaded_bytes(device: torch.device) -> int:
    """The memory held now, after a collection (on CUDA the peak counter restarts here): what
    `peak_bytes(device)` minus this leaves is the high-water mark of what runs in between.

    An optimizer's first step imports torch._dynamo and ~800 other modules (~65 MB resident) unless
    something imported them already (transformers does; the book's GPTModel, with torch alone, does
    not): one throwaway AdamW step on one number first, so that no model's figure counts an import."""
    parameter = torch.nn.Parameter(torch.zeros(1))
    parameter.grad = torch.zeros(1)
    torch.optim.AdamW([parameter]).step()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()
    return resident_bytes()


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def make_train_step(
    model, device, compile_model=False, loss_chunk_size=None, autocast_dtype=None, backend="inductor", loss_fn=None
):
    """One training step of `model` (forward + backward + AdamW) as a function of the batch.

    The loss is the transformers one, `model(input_ids=batch, labels=batch).loss`, unless `loss_fn(model, batch)`
    gives another (a peer's own training path, in bench_peers.py).
    `autocast_dtype` runs the forward under `torch.autocast` (weights stay as they are, as the
    training loop's `--mixed-precision`); `backend` is torch.compile's (e.g. "aot_eager" for a quick
    check of the traced path). The compiled wrapper and the optimizer live as long as the function.
    """
    model.train()
    step_model = torch.compile(model, backend=backend) if compile_model else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True if device.type == "cuda" else None)
    extra = {"loss_chunk_size": loss_chunk_size} if loss_chunk_size else {}

    def step(batch):
        with torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext():
            loss = loss_fn(step_model, batch) if loss_fn else step_model(input_ids=batch, labels=batch, **extra).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    return step


def timed_rate(step, batch, steps, device) -> float:
    """Tokens/s of `steps` calls of `step(batch)`, timed between device synchronizations."""
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step(batch)
    sync(device)
    return steps * batch.numel() / (time.perf_counter() - start)


def train_step_rate(model, batch, steps, device, compile_model, loss_chunk_size) -> float:
    """Tokens/s of forward + backward + AdamW, after two warm-up steps."""
    step = make_train_step(model, device, compile_model, loss_chunk_size)
    for _ in range(2):
        step(batch)
    return timed_rate(step, batch, steps, device)


@torch.no_grad()
def generate_rate(model, prompt, new_tokens, device, compile_model=False) -> float:
    """Greedy tokens/s with the KV cache. Compiled: transformers' own path, a static cache and
    `torch.compile` of the forward (on any device; it compiles on CUDA by itself)."""
    model.eval()
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    if compile_model:
        from transformers import CompileConfig

        compile_config = CompileConfig(mode="default")
        compile_config._compile_all_devices = True  # transformers' switch to compile on CPU too
        kwargs.update(cache_implementation="static", compile_config=compile_config)
        model.generate(prompt, **kwargs)  # compiles, for this prompt shape and cache length
    model.generate(prompt, **{**kwargs, "max_new_tokens": 2, "min_new_tokens": 2})  # warm-up
    sync(device)
    start = time.perf_counter()
    model.generate(prompt, **kwargs)
    sync(device)
    return prompt.shape[0] * new_tokens / (time.perf_counter() - start)


def build_config(args):
    """The ScratchGPTConfig of the shape the flags name."""
    from scratch_gpt import ScratchGPTConfig
    from scratch_gpt.configuration_scratch_gpt import LLAMA_SWITCHES

    shape = dict(max_position_embeddings=max(args.seq_len, 1024), bos_token_id=0, eos_token_id=0)
    if args.arch == "llama":
        shape.update(LLAMA_SWITCHES, num_key_value_heads=args.kv_heads or max(1, args.heads // 2))
        shape["intermediate_size"] = 8 * args.hidden_size // 3  # SwiGLU's three matrices ~ GPT-2's two at 4C
    if args.preset:
        return ScratchGPTConfig.from_preset(args.preset, **{"max_position_embeddings": shape["max_position_embeddings"]})
    return ScratchGPTConfig(
        vocab_size=args.vocab_size,
        hidden_size=args.hidden_size,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        **shape,
    )


def measure(name: str, args) -> dict:
    """In a fresh child process: build one model, then time and measure its training step (and generation)."""
    import transformers
    from scratch_gpt import ScratchGPTForCausalLM
    from scratch_gpt.convert import to_gpt2, to_llama

    transformers.logging.set_verbosity_error()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    config = build_config(args)
    torch.manual_seed(0)
    model = ScratchGPTForCausalLM(config)
    if name == "peer":  # identical dimensions and weights
        model = to_llama(model) if config.mlp_type == "swiglu" else to_gpt2(model)
    model.set_attn_implementation(args.attn)
    model = model.to(device=device, dtype=dtype)
    generator = torch.Generator().manual_seed(0)
    batch = torch.randint(0, config.vocab_size, (args.batch, args.seq_len), generator=generator).to(device)
    loaded = loaded_bytes(device)
    row = {}
    if args.train:
        chunk = args.loss_chunk_size if name == "ScratchGPT chunked" else None
        row["train tokens/s"] = train_step_rate(model, batch, args.steps, device, args.compile, chunk)
        sync(device)
        row["train peak MB"] = (peak_bytes(device) - loaded) / 2**20
    if args.generate:
        for label, prompt in (("generate tokens/s (batch 1)", batch[:1, :32]), ("generate tokens/s (batch 8)", batch[:8, :32])):
            row[label] = generate_rate(model, prompt, args.new_tokens, device, args.compile)
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default=None, help="a ScratchGPTConfig preset; default: the small CPU shape below")
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--arch", default="gpt2", choices=["gpt2", "llama"], help="the shape, and the peer class")
    parser.add_argument("--kv-heads", type=int, default=None, help="key/value heads with --arch llama (default: heads / 2)")
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--loss-chunk-size", type=int, default=256, help="tokens per chunk in the chunked-loss row (0: no such row)")
    parser.add_argument("--no-generate", dest="generate", action="store_false", help="only the training rows")
    parser.add_argument("--no-train", dest="train", action="store_false", help="only the generation rows")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--attn", default="sdpa", help="attn_implementation for both models: eager, sdpa, ...")
    parser.add_argument("--compile", action="store_true", help="torch.compile both models (generation: static cache)")
    args = parser.parse_args()
    from scratch_gpt import ScratchGPTForCausalLM

    config = build_config(args)
    peer_name = "Llama" if config.mlp_type == "swiglu" else "GPT-2"
    chunked = args.loss_chunk_size and args.train  # generation is the same code with or without it
    names = ["ScratchGPT"] + (["ScratchGPT chunked"] if chunked else []) + ["peer"]
    results = {name: {} for name in names}
    spawn = multiprocessing.get_context("spawn")
    for repeat in range(args.repeats):
        for name in names[:: -1 if repeat % 2 else 1]:  # alternate who goes first
            with spawn.Pool(1) as pool:
                row = pool.apply(measure, (name, args))
            for metric, value in row.items():
                results[name].setdefault(metric, []).append(value)
            print(f"repeat {repeat + 1} {name}: " + ", ".join(f"{k} {v:,.1f}" for k, v in row.items()), flush=True)

    with torch.device("meta"):
        params = ScratchGPTForCausalLM(config).num_parameters()
    print(
        f"\ndevice={args.device} dtype={args.dtype} attn={args.attn} compile={args.compile} "
        f"arch={args.arch} hidden={config.hidden_size} layers={config.num_hidden_layers} heads={config.num_attention_heads} "
        f"kv_heads={config.num_key_value_heads} vocab={config.vocab_size} seq={args.seq_len} batch={args.batch} "
        f"params={params / 1e6:.1f}M loss_chunk_size={args.loss_chunk_size} repeats={args.repeats} (median, min-max)"
    )
    print(f"{'model':<20}{'metric':<30}{'median':>12}{'min-max':>24}{'/ ' + peer_name:>10}")
    for name in names:
        for metric, values in results[name].items():
            median, peer = statistics.median(values), statistics.median(results["peer"][metric])
            spread = f"{min(values):,.1f}-{max(values):,.1f}"
            label = peer_name if name == "peer" else name
            print(f"{label:<20}{metric:<30}{median:>12,.1f}{spread:>24}{median / peer if peer else float('nan'):>10.3f}")


if __name__ == "__main__":
    main()
