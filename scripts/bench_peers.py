"""ScratchGPT beside its peers, at the same shape and with the same weights, in one run.

Peers, each on its own usual path:

* transformers: `GPT2LMHeadModel` (GPT-2 shape) and `LlamaForCausalLM` (Llama shape), through
  `scratch_gpt.convert.to_gpt2` / `to_llama`; trains with its own loss (`labels=`, full logits),
  generates with `generate()` and its KV cache.
* the book ("Build a Large Language Model From Scratch", PyPI `llms-from-scratch`): chapter 4's
  `llms_from_scratch.ch04.GPTModel`, which generates with `generate_text_simple` (no cache: every
  token recomputes the whole sequence), and its KV-cache variant `llms_from_scratch.kv_cache.gpt2.GPTModel`
  (`use_cache=True` with a `KVCache`). Both train as chapter 5's `calc_loss_batch`: full logits, then
  `cross_entropy`. GPT-2 shape only; weights from ours under the book's names (`book_state_dict`, the
  inverse of `scratch_gpt.convert.convert_book`).
* litgpt (Lightning's `litgpt.GPT`): Llama shape only (it has no learned position embeddings). Weights go
  through our export to a `LlamaForCausalLM` folder (`export_model(..., "llama")`, `scratch-gpt export --to
  llama`) and then litgpt's own `convert_hf_checkpoint`, with a litgpt `Config` of the same shape registered
  under a name. It trains with its pretrain's loss (`litgpt.utils.chunked_cross_entropy` of the full
  logits) and generates with `litgpt.generate.base.generate` (batch 1) and `batched_generate_fn` (batch 8)
  on its own KV cache (`set_kv_cache`).
* ScratchGPT itself, as `scratch-gpt pretrain` runs it: the chunked loss (`--loss-chunk-size`, no full
  logits), AdamW; `generate()` with its KV cache.

Every model trains with AdamW (lr 1e-4) on the same random tokens: each step's inputs are tokens
0..seq-1 of (batch, seq + 1) and its targets tokens 1..seq (ours and transformers shift the labels
themselves). Correctness first: each model's fp32 logits on two rows of the batch must agree with
ours within `TOLERANCE` (max absolute difference), else the row is reported as disagreeing and not
timed; each model's 8 greedy tokens are compared with ours too. Timing, memory, medians and spread
as `bench_model.py` (whose helpers this imports): every measurement in a fresh child process,
repeats alternate the order, peak training memory is the high-water mark above the loaded model,
and each child times its generation 3 times (the median).
The ratio column is ours / peer: above 1.0, ours is faster (or, for memory, uses more). Every model
decodes greedily, after the same 32-token prompt, exactly `--new-tokens` tokens with no end-of-text
token to stop at (the book's and litgpt's loops have none; generate() gets `eos_token_id=None`).

The peers are installed beside the package without touching its dependencies:

    pip install --no-deps llms-from-scratch==1.0.19    # its ch04 and kv_cache models need only torch
    python3 -m venv LITGPT_VENV                         # litgpt 0.5.13 pins huggingface-hub<1.4,
    LITGPT_VENV/bin/pip install torch==2.13.0           #   which transformers 5 cannot use: its own venv,
    LITGPT_VENV/bin/pip install litgpt==0.5.13          #   torch first (a CPU torch stays: check pip list)

The litgpt child runs on that venv's python (`--litgpt-python LITGPT_VENV/bin/python`) without
scratch_gpt or transformers: it reads our weights from the exported folder. A peer that is not
installed is skipped with one line naming its install command; the other rows still run.

    python scripts/bench_peers.py --vocab-size 50257 --repeats 5 --litgpt-python LITGPT_VENV/bin/python   # ~25 min
    python scripts/bench_peers.py --preset gpt2-small --seq-len 1024 --batch 1 --arch gpt2 --repeats 3 \
        --warmup 1 --steps 2 --new-tokens 16 --peers transformers "book GPTModel"    # GPT-2 124M, ~12 min on 2 cores
    python scripts/bench_peers.py --check-only --vocab-size 512 --hidden-size 32 --seq-len 16   # logits only
"""

import argparse
import importlib.util
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_model, beside this file (it imports only torch)
from bench_model import loaded_bytes, make_train_step, peak_bytes, sync, timed_rate  # noqa: E402

TOLERANCE = 1e-4  # max |logits difference| in fp32 with the same weights
CHECK_TOKENS = 8  # greedy tokens compared with ours
LITGPT_NAME = "scratch-gpt-bench"  # the name our shape's litgpt Config is registered under
PEERS = {  # name -> (family, install command shown when it is missing; ours and transformers always are)
    "ScratchGPT": ("both", None),
    "transformers": ("both", None),
    "book GPTModel": ("gpt2", "pip install --no-deps llms-from-scratch==1.0.19"),
    "book GPTModel KV cache": ("gpt2", "pip install --no-deps llms-from-scratch==1.0.19"),
    "litgpt": (
        "llama",
        "python3 -m venv VENV && VENV/bin/pip install torch==2.13.0 && VENV/bin/pip install litgpt==0.5.13, "
        "then pass --litgpt-python VENV/bin/python",
    ),
}
METRICS = ("train tokens/s", "train peak MB", "generate tokens/s (batch 1)", "generate tokens/s (batch 8)")


# --- Weights for the peers, written by the parent (which has scratch_gpt) --------------------------------


def book_state_dict(model) -> dict[str, torch.Tensor]:
    """Our GPT-2-shaped model's weights under the book's GPTModel names (the inverse of `convert_book`)."""
    from scratch_gpt.convert import BOOK_BLOCK_NAMES, BOOK_NAMES, BOOK_QKV

    ours = model.state_dict()
    state = {theirs: ours[name] for name, theirs in BOOK_NAMES.items()}
    for i in range(model.config.num_hidden_layers):
        for name, theirs in BOOK_BLOCK_NAMES.items():
            state[f"trf_blocks.{i}.{theirs}"] = ours[f"model.layers.{i}.{name}"]
        for kind in ("weight", "bias") if model.config.qkv_bias else ("weight",):
            for qkv, part in zip(BOOK_QKV, ours[f"model.layers.{i}.attn.qkv_proj.{kind}"].chunk(3)):
                state[f"trf_blocks.{i}.{qkv}.{kind}"] = part
    return {name: tensor.clone() for name, tensor in state.items()}  # no shared storage: tied weights saved twice


def litgpt_config(config) -> dict:
    """The litgpt `Config` fields of our Llama-shaped config (no vocabulary padding: the same head)."""
    return dict(
        name=LITGPT_NAME,
        block_size=config.max_position_embeddings,
        vocab_size=config.vocab_size,
        padded_vocab_size=config.vocab_size,
        n_layer=config.num_hidden_layers,
        n_embd=config.hidden_size,
        n_head=config.num_attention_heads,
        n_query_groups=config.num_key_value_heads,
        head_size=config.head_dim,
        intermediate_size=config.intermediate_size,
        rotary_percentage=1.0,
        rope_base=config.rope_parameters["rope_theta"],
        parallel_residual=False,
        bias=False,
        norm_class_name="RMSNorm",
        norm_eps=config.rms_norm_eps,
        mlp_class_name="LLaMAMLP",
    )


def prepare(family: str, args, work: Path, peers: list[str]) -> dict:
    """Write ours (seed 0), its reference logits and the peers' weight files into `work`; the child's spec."""
    import transformers
    from bench_model import build_config
    from scratch_gpt import ScratchGPTForCausalLM
    from scratch_gpt.convert import export_model

    transformers.utils.logging.disable_progress_bar()  # save_pretrained's "Writing model shards" bar
    config = build_config(SimpleNamespace(**{**vars(args), "arch": family}))
    torch.manual_seed(0)
    model = ScratchGPTForCausalLM(config).eval()
    model.save_pretrained(work / "ours")
    spec = dict(family=family, work=str(work), vocab_size=config.vocab_size, device=args.device)
    spec["shape"] = (
        f"vocab={config.vocab_size} hidden={config.hidden_size} layers={config.num_hidden_layers} "
        f"heads={config.num_attention_heads} kv_heads={config.num_key_value_heads} params={model.num_parameters() / 1e6:.1f}M"
    )
    spec.update({name: getattr(args, name) for name in ("seq_len", "batch", "steps", "warmup", "new_tokens", "check_only", "train")})
    spec.update(loss_chunk_size=args.loss_chunk_size, prompt_len=min(32, args.seq_len), gen_batch=8)
    if family == "gpt2":
        spec["book"] = dict(
            vocab_size=config.vocab_size,
            context_length=config.max_position_embeddings,
            emb_dim=config.hidden_size,
            n_heads=config.num_attention_heads,
            n_layers=config.num_hidden_layers,
            drop_rate=config.resid_pdrop,
            qkv_bias=config.qkv_bias,
        )
        if any(peer.startswith("book") for peer in peers):
            torch.save(book_state_dict(model), work / "book.pth")
    if family == "llama" and "litgpt" in peers:
        spec["litgpt"] = litgpt_config(config)
        export_model(work / "ours", work / "hf-llama", "llama")  # `scratch-gpt export --to llama`
    ids = check_inputs(spec)
    with torch.no_grad():
        torch.save({"logits": model(ids).logits}, work / "reference.pt")
    spec["greedy_tokens"] = hf_generate(model)(ids[:1, :16], CHECK_TOKENS)[0].tolist()
    return spec


# --- In the child: one model, built on its own path ------------------------------------------------------


def check_inputs(spec) -> torch.Tensor:
    return torch.randint(0, spec["vocab_size"], (2, min(64, spec["seq_len"])), generator=torch.Generator().manual_seed(1))


def hf_generate(model):
    def generate(prompt, new_tokens):
        model.eval()  # generate() does not switch modes; after training, ours would decode on its training path
        # Exactly `new_tokens` tokens, as the book's and litgpt's loops: no end-of-text token to stop at. Not
        # min_new_tokens: its processor masks the end-of-text id in the whole (batch, vocab) scores on every
        # step (an `isin` over the vocabulary and a `where`), about 10% of a batch-8 step at the bench shape.
        kwargs = dict(max_new_tokens=new_tokens, do_sample=False, pad_token_id=0, eos_token_id=None)
        return model.generate(prompt, **kwargs)[:, prompt.shape[1] :]

    return generate


def build_ours(spec, device):
    from scratch_gpt import ScratchGPTForCausalLM

    model = ScratchGPTForCausalLM.from_pretrained(Path(spec["work"]) / "ours").to(device)
    chunk = spec["loss_chunk_size"]
    return model, lambda ids: model(ids).logits, lambda m, x, y: m(input_ids=x, labels=x, loss_chunk_size=chunk).loss, hf_generate(model)


def build_transformers(spec, device):
    import transformers
    from scratch_gpt import ScratchGPTForCausalLM
    from scratch_gpt.convert import to_gpt2, to_llama

    transformers.logging.set_verbosity_error()
    ours = ScratchGPTForCausalLM.from_pretrained(Path(spec["work"]) / "ours")
    model = (to_gpt2(ours) if spec["family"] == "gpt2" else to_llama(ours)).to(device)
    return model, lambda ids: model(ids).logits, lambda m, x, y: m(input_ids=x, labels=x).loss, hf_generate(model)


def build_book(spec, device, kv_cache: bool):
    from llms_from_scratch import ch04

    cfg = spec["book"]
    if kv_cache:
        from llms_from_scratch.kv_cache.gpt2 import GPTModel, KVCache
    else:
        GPTModel = ch04.GPTModel
    model = GPTModel(cfg)
    missing, unexpected = model.load_state_dict(torch.load(Path(spec["work"]) / "book.pth", weights_only=True), strict=False)
    if unexpected or any(not name.endswith(".att.mask") for name in missing):  # ch04's causal-mask buffers are not weights
        raise RuntimeError(f"book weights do not fit: missing {missing[:3]}, unexpected {unexpected[:3]}")
    model.to(device)

    def generate(prompt, new_tokens):
        model.eval()
        if not kv_cache:  # chapter 4's generation: the whole sequence again for every token
            return ch04.generate_text_simple(model, prompt, new_tokens, cfg["context_length"])[:, prompt.shape[1] :]
        # The KV-cache model's loop, as the book's kv-cache generate_text_simple (the wheel's own
        # kv_cache.generate calls model(..., cache=...) without use_cache=True, which gpt2.GPTModel needs).
        model.current_pos, cache, tokens = 0, KVCache(n_layers=cfg["n_layers"]), []
        with torch.no_grad():
            logits = model(prompt, use_cache=True, cache=cache)
            for _ in range(new_tokens):
                tokens.append(logits[:, -1].argmax(dim=-1, keepdim=True))
                logits = model(tokens[-1], use_cache=True, cache=cache)
        return torch.cat(tokens, dim=1)

    def loss(m, inputs, targets):  # chapter 5's calc_loss_batch
        return F.cross_entropy(m(inputs).flatten(0, 1), targets.flatten())

    return model, model, loss, generate


def build_litgpt(spec, device):
    from contextlib import redirect_stdout

    from litgpt import GPT, Config
    from litgpt import config as litgpt_configs
    from litgpt.generate.base import batched_generate_fn, generate
    from litgpt.scripts.convert_hf_checkpoint import convert_hf_checkpoint
    from litgpt.utils import chunked_cross_entropy, lazy_load

    folder = Path(spec["work"]) / "hf-llama"
    litgpt_configs.name_to_config[LITGPT_NAME] = spec["litgpt"]  # a Config of our shape, by name
    if not (folder / "lit_model.pth").exists():
        with redirect_stdout(sys.stderr):  # it prints its arguments and a progress bar
            convert_hf_checkpoint(folder, model_name=LITGPT_NAME)
    model = GPT(Config.from_name(LITGPT_NAME))
    model.load_state_dict(lazy_load(folder / "lit_model.pth"))
    model.to(device)

    def lit_generate(prompt, new_tokens):
        model.eval()
        batch, length = prompt.shape
        model.max_seq_length = length + new_tokens  # as litgpt's generate main: the cache fits the output
        model.set_kv_cache(batch_size=batch, device=device)
        if batch == 1:
            tokens = generate(model, prompt[0], length + new_tokens, temperature=0.0, include_prompt=False)
            tokens = tokens.view(1, -1)
        else:
            steps = batched_generate_fn(
                model, prompt, length + new_tokens, sample_args={"temperature": 0.0}, include_prompt=False, include_eos=False
            )
            tokens = torch.stack([torch.cat(step) for step in steps], dim=1)
        model.clear_kv_cache()
        model.max_seq_length = spec["litgpt"]["block_size"]
        return tokens

    return model, model, lambda m, x, y: chunked_cross_entropy(m(x), y), lit_generate


BUILDERS = {
    "ScratchGPT": build_ours,
    "transformers": build_transformers,
    "book GPTModel": lambda spec, device: build_book(spec, device, kv_cache=False),
    "book GPTModel KV cache": lambda spec, device: build_book(spec, device, kv_cache=True),
    "litgpt": build_litgpt,
}


def generation_rate(generate, prompt, new_tokens, device, calls: int = 3) -> float:
    """Greedy tokens/s of `generate(prompt, new_tokens)`, after a 2-token warm-up: the median of `calls`
    timed calls (one call of a small model lasts about a second, where one scheduler hiccup shows)."""
    generate(prompt, 2)
    rates = []
    for _ in range(calls):
        sync(device)
        start = time.perf_counter()
        tokens = generate(prompt, new_tokens)
        sync(device)
        if tuple(tokens.shape) != (prompt.shape[0], new_tokens):  # a loop that stopped early would look fast
            raise RuntimeError(f"generated {tuple(tokens.shape)} tokens, not {(prompt.shape[0], new_tokens)}")
        rates.append(prompt.shape[0] * new_tokens / (time.perf_counter() - start))
    return statistics.median(rates)


def measure(peer: str, spec: dict) -> dict:
    """Build one model, check its logits and greedy tokens against ours, then time its step and generation."""
    device = torch.device(spec["device"])
    torch.manual_seed(0)
    model, logits_of, loss, generate = BUILDERS[peer](spec, device)
    model.eval()
    reference = torch.load(Path(spec["work"]) / "reference.pt", weights_only=True)["logits"]
    ids = check_inputs(spec)
    with torch.no_grad():
        logits = logits_of(ids.to(device)).float().cpu()
    row = {"max |logits - ours|": (logits - reference).abs().max().item()}
    try:
        row["greedy tokens"] = generate(ids[:1, :16].to(device), CHECK_TOKENS)[0].tolist()
    except Exception as error:  # a peer whose generation is broken: its training is still measured
        row["generation failed"], generate = f"{type(error).__name__}: {error}", None
    if row["max |logits - ours|"] > TOLERANCE or spec["check_only"]:
        return row
    generator = torch.Generator().manual_seed(0)
    data = torch.randint(0, spec["vocab_size"], (spec["batch"], spec["seq_len"] + 1), generator=generator).to(device)
    inputs, targets = data[:, :-1], data[:, 1:]
    if spec["train"]:
        baseline = loaded_bytes(device)
        step = make_train_step(model, device, loss_fn=lambda m, x: loss(m, x, targets))
        for _ in range(spec["warmup"]):
            step(inputs)
        row["train tokens/s"] = timed_rate(step, inputs, spec["steps"], device)
        row["train peak MB"] = (peak_bytes(device) - baseline) / 2**20
    prompts = torch.randint(0, spec["vocab_size"], (spec["gen_batch"], spec["prompt_len"]), generator=generator).to(device)
    for batch in (1, spec["gen_batch"]) if generate else ():
        row[f"generate tokens/s (batch {batch})"] = generation_rate(generate, prompts[:batch], spec["new_tokens"], device)
    return row


def child_main(peer: str, spec_file: str) -> None:
    row = measure(peer, json.loads(Path(spec_file).read_text()))
    print("RESULT " + json.dumps(row), flush=True)


# --- In the parent: who is installed, the children, the table ---------------------------------------------


def missing_peers(args) -> dict[str, str]:
    """Peer -> why it is skipped (one line naming its install command), for those not installed."""
    missing = {}
    for peer in ("book GPTModel", "book GPTModel KV cache"):
        if importlib.util.find_spec("llms_from_scratch") is None:
            missing[peer] = "llms_from_scratch is not installed"
    litgpt_python = args.litgpt_python
    if not litgpt_python:
        missing["litgpt"] = "no --litgpt-python given (litgpt runs in a venv of its own)"
    elif subprocess.run([litgpt_python, "-c", "import litgpt"], capture_output=True, env=litgpt_env()).returncode:
        missing["litgpt"] = f"{litgpt_python} cannot import litgpt"
    return missing


def litgpt_env() -> dict:
    """The litgpt child's environment: not our PYTHONPATH, so neither scratch_gpt nor transformers 5 is seen."""
    return {name: value for name, value in os.environ.items() if name != "PYTHONPATH"}


def run_child(peer: str, spec_file: Path, args) -> dict:
    """`measure(peer)` in a fresh process of the right interpreter; a failure is returned as {"error": ...}."""
    python, env = (args.litgpt_python, litgpt_env()) if peer == "litgpt" else (sys.executable, None)
    command = [python, str(Path(__file__).resolve()), "--child", peer, str(spec_file)]
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    results = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not results:
        return {"error": (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]}
    return json.loads(results[-1][len("RESULT ") :])


def run_family(family: str, args, peers: list[str]) -> dict:
    """Every peer of one family, `args.repeats` times in alternating order: {peer: {metric: [values]}}."""
    names = [peer for peer in peers if PEERS[peer][0] in ("both", family)]
    with tempfile.TemporaryDirectory(prefix="bench_peers-") as work:
        spec = prepare(family, args, Path(work), names)
        spec_file = Path(work) / "spec.json"
        spec_file.write_text(json.dumps(spec))
        results, failed = {name: {} for name in names}, {}
        for repeat in range(1 if args.check_only else args.repeats):
            for name in names[:: -1 if repeat % 2 else 1]:
                if name in failed or (args.check_only and name == "ScratchGPT"):  # ours: the reference itself
                    continue
                row = run_child(name, spec_file, args)
                if "error" in row:
                    failed[name] = f"failed: {row['error']}"
                elif row["max |logits - ours|"] > TOLERANCE:
                    failed[name] = f"logits disagree with ours: max |difference| {row['max |logits - ours|']:.2e} > {TOLERANCE:g}; not timed"
                for metric, value in row.items():
                    results[name].setdefault(metric, []).append(value)
                timing = ", ".join(f"{k} {v:,.1f}" for k, v in row.items() if k in METRICS)
                print(f"{family} repeat {repeat + 1} {name}: {failed.get(name) or timing or 'checked'}", flush=True)
    return results, failed, spec


def report(family: str, results: dict, failed: dict, spec: dict, args) -> None:
    ours, reference = results["ScratchGPT"], spec["greedy_tokens"]
    print(
        f"\n{family} family: {spec['shape']} seq={args.seq_len} batch={args.batch} device={args.device} fp32 "
        f"repeats={args.repeats} (median, min-max; ratio = ours / peer)"
    )
    for name, row in results.items():
        if name in failed or not row:
            print(f"{name:<24}{failed.get(name, 'the reference (not run: --check-only)')}")
            continue
        diff, tokens = max(row["max |logits - ours|"]), row.get("greedy tokens", [None])[0]
        same = "the same as ours" if tokens == reference else f"DIFFERENT from ours {reference}"
        if "generation failed" in row:
            same = f"not generated: {row['generation failed'][0]}"
        print(f"{name:<24}max |logits - ours| {diff:.1e} (<= {TOLERANCE:g}); {CHECK_TOKENS} greedy tokens {same}")
        for metric in METRICS:
            if metric in row:
                median, spread = statistics.median(row[metric]), f"{min(row[metric]):,.1f}-{max(row[metric]):,.1f}"
                ratio = statistics.median(ours[metric]) / median
                print(f"{'':<24}{metric:<30}{median:>12,.1f}{spread:>24}{ratio:>10.3f}")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", nargs="+", default=["gpt2", "llama"], choices=["gpt2", "llama"], help="shape families to run")
    parser.add_argument("--peers", nargs="+", default=list(PEERS)[1:], choices=list(PEERS)[1:], help="peers beside ours")
    parser.add_argument("--litgpt-python", default=None, help="the python of a venv with litgpt (see above)")
    parser.add_argument("--preset", default=None, help="a ScratchGPTConfig preset (gpt2-small: GPT-2 124M)")
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--kv-heads", type=int, default=None, help="key/value heads in the Llama shape (default: heads / 2)")
    parser.add_argument("--vocab-size", type=int, default=50257)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2, help="untimed training steps")
    parser.add_argument("--steps", type=int, default=5, help="timed training steps")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--loss-chunk-size", type=int, default=256, help="ours, as pretrain's default")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-train", dest="train", action="store_false", help="only the checks and the generation rows")
    parser.add_argument("--check-only", action="store_true", help="only the logits and greedy-token checks, no timing")
    args = parser.parse_args(argv)
    missing = missing_peers(args)
    for peer in args.peers:
        if peer in missing:
            print(f"{peer}: skipped, {missing[peer]}; install: {PEERS[peer][1]}", flush=True)
    peers = ["ScratchGPT"] + [peer for peer in args.peers if peer not in missing]
    tables = {}
    for family in args.arch:
        if len([peer for peer in peers if PEERS[peer][0] in ("both", family)]) > 1:
            tables[family] = run_family(family, args, peers)
    for family, (results, failed, spec) in tables.items():
        report(family, results, failed, spec, args)
    return tables


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child_main(*sys.argv[2:4])
    else:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stopped by `timeout`: still remove the weights' folders
        main()
