"""Benchmark ScratchGPT against transformers' own class with identical dimensions and weights:
GPT2LMHeadModel (`--arch gpt2`, the default) or LlamaForCausalLM (`--arch llama`: RoPE, RMSNorm,
SwiGLU, grouped key/value heads, no biases).

Rows: training step (forward + backward + AdamW) tokens/s and peak memory, and generation
tokens/s with the KV cache at batch 1 and batch 8. Both models are built in this process with
the same weights, run on the same batches, alternately (each goes first in every other
repeat), median of `--repeats`; the ratio column
is ScratchGPT / peer (above 1.0 means ScratchGPT is faster, or for memory, uses more).

    python scripts/bench_model.py                      # CPU, small dimensions
    python scripts/bench_model.py --arch llama --kv-heads 2 --repeats 5
    python scripts/bench_model.py --preset gpt2-small --seq-len 1024 --batch 8 --device cuda --dtype bfloat16
    python scripts/bench_model.py --arch llama --preset smollm2-135m --seq-len 1024 --device cuda --dtype bfloat16
"""

import argparse
import gc
import os
import statistics
import threading
import time

import torch
from scratch_gpt import ScratchGPTConfig, ScratchGPTForCausalLM
from scratch_gpt.configuration_scratch_gpt import LLAMA_SWITCHES
from scratch_gpt.convert import to_gpt2, to_llama


class PeakMemory:
    """Peak memory during a block: CUDA's allocator counter, or the process RSS sampled every ms on CPU."""

    def __init__(self, device: torch.device):
        self.device = device

    def __enter__(self):
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.base = self.peak = self._rss()
            self.running = True
            self.thread = threading.Thread(target=self._sample, daemon=True)
            self.thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self.running = False
            self.thread.join()
        self.megabytes = (self.peak - self.base) / 2**20

    def _sample(self):
        while self.running:
            self.peak = max(self.peak, self._rss())
            time.sleep(0.001)

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def train_step_rate(model, batch, steps, device, compile_model) -> tuple[float, float]:
    """Tokens/s and peak MB of forward + backward + AdamW, after two warm-up steps."""
    model.train()
    step_model = torch.compile(model) if compile_model else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    with PeakMemory(device) as memory:
        for step in range(steps + 2):
            if step == 2:
                sync(device)
                start = time.perf_counter()
            loss = step_model(input_ids=batch, labels=batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        sync(device)
    elapsed = time.perf_counter() - start
    del optimizer
    return steps * batch.numel() / elapsed, memory.megabytes


@torch.no_grad()
def generate_rate(model, prompt, new_tokens, device) -> float:
    model.eval()
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    model.generate(prompt, **{**kwargs, "max_new_tokens": 2, "min_new_tokens": 2})  # warm-up
    sync(device)
    start = time.perf_counter()
    model.generate(prompt, **kwargs)
    sync(device)
    return prompt.shape[0] * new_tokens / (time.perf_counter() - start)


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
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--attn", default="sdpa", help="attn_implementation for both models: eager, sdpa, ...")
    parser.add_argument("--compile", action="store_true", help="torch.compile both models for the training rows")
    args = parser.parse_args()

    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    shape = dict(max_position_embeddings=max(args.seq_len, 1024), bos_token_id=0, eos_token_id=0)
    if args.arch == "llama":
        shape.update(LLAMA_SWITCHES, num_key_value_heads=args.kv_heads or max(1, args.heads // 2))
        shape["intermediate_size"] = 8 * args.hidden_size // 3  # SwiGLU's three matrices ~ GPT-2's two at 4C
    if args.preset:
        config = ScratchGPTConfig.from_preset(args.preset, **{"max_position_embeddings": shape["max_position_embeddings"]})
    else:
        config = ScratchGPTConfig(
            vocab_size=args.vocab_size,
            hidden_size=args.hidden_size,
            num_hidden_layers=args.layers,
            num_attention_heads=args.heads,
            **shape,
        )
    torch.manual_seed(0)
    ours = ScratchGPTForCausalLM(config)
    peer_name = "Llama" if config.mlp_type == "swiglu" else "GPT-2"
    theirs = to_llama(ours) if peer_name == "Llama" else to_gpt2(ours)  # identical dimensions and weights
    models = {}
    for name, model in (("ScratchGPT", ours), (peer_name, theirs)):
        model.set_attn_implementation(args.attn)
        models[name] = model.to(device=device, dtype=dtype)

    generator = torch.Generator().manual_seed(0)
    batch = torch.randint(0, config.vocab_size, (args.batch, args.seq_len), generator=generator).to(device)
    prompt1 = batch[:1, :32]
    prompt8 = batch[:8, :32]

    results = {name: {} for name in models}
    for repeat in range(args.repeats):
        order = list(models.items())[:: -1 if repeat % 2 else 1]  # alternate who goes first
        for name, model in order:
            # train on a copy so both models start every repeat from the same weights
            state = {k: v.clone() for k, v in model.state_dict().items()}
            rate, memory = train_step_rate(model, batch, args.steps, device, args.compile)
            model.load_state_dict(state)
            row = results[name]
            row.setdefault("train tokens/s", []).append(rate)
            row.setdefault("train peak MB", []).append(memory)
            for label, prompt in (("generate tokens/s (batch 1)", prompt1), ("generate tokens/s (batch 8)", prompt8)):
                row.setdefault(label, []).append(generate_rate(model, prompt, args.new_tokens, device))

    print(
        f"\ndevice={device} dtype={args.dtype} attn={args.attn} compile={args.compile} "
        f"arch={args.arch} hidden={config.hidden_size} layers={config.num_hidden_layers} heads={config.num_attention_heads} "
        f"kv_heads={config.num_key_value_heads} repeats={args.repeats} (medians) "
        f"vocab={config.vocab_size} seq={args.seq_len} batch={args.batch} params={ours.num_parameters() / 1e6:.1f}M"
    )
    print(f"{'metric':<30}{'ScratchGPT':>14}{peer_name:>14}{'ratio':>10}")
    for metric in results["ScratchGPT"]:
        a, b = (statistics.median(results[name][metric]) for name in ("ScratchGPT", peer_name))
        print(f"{metric:<30}{a:>14.1f}{b:>14.1f}{a / b if b else float('nan'):>10.3f}")


if __name__ == "__main__":
    main()
