"""Run each client of the README's "Use it with" section on a model folder, and print what it gave.

    python scripts/check_clients.py runs/quickstart/model

Needs `pip install 'scratch_gpt[eval]' trl 'transformers[serving]'` and `curl`. Everything runs
on local files in a temporary folder (a few minutes on a CPU):

1. `lm_eval --model hf --model_args pretrained=MODEL,trust_remote_code=True` on the shipped
   scratch_perplexity task (its data file written next to it);
2. `scratch-gpt evaluate MODEL --tasks scratch_choice` on three questions;
3. TRL: SFTTrainer with a PEFT LoRA, then DPOTrainer, a few steps each;
4. `scratch-gpt export MODEL OUT --to gpt2`, `transformers serve OUT`, and `curl` on its
   OpenAI-compatible /v1/completions;
5. `pipeline("text-generation")`.
"""

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TEXT = "The quick brown fox jumps over the lazy dog. " * 20
QUESTIONS = [
    {"question": "Return the", "choices": ["book", "xqzv"], "answer": 0},
    {"question": "It was a", "choices": ["surprise", "kkkk"], "answer": 0},
    {"question": "I had always thought", "choices": ["Jack Gisburn", "zzzz qqq"], "answer": 0},
]


def step(title: str, command: list[str], **kwargs) -> str:
    """Run `command`, print its command line and the tail of its output; fail loudly."""
    print(f"\n$ {' '.join(command)}", flush=True)
    result = subprocess.run(command, capture_output=True, text=True, **kwargs)
    table = [line for line in result.stdout.splitlines() if line.startswith("|")]  # lm-eval's results table
    print("\n".join(table) or result.stdout[-1500:])
    if result.returncode != 0:
        raise SystemExit(f"{title} failed:\n{result.stderr[-3000:]}")
    return result.stdout


def trl_sft_and_dpo(model_dir: str, work: Path) -> None:
    """Three SFT steps with a LoRA adapter, then three DPO steps on the merged model."""
    import datasets
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

    import scratch_gpt  # noqa: F401

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    texts = datasets.Dataset.from_dict({"text": [TEXT[:200], "It was a surprise to me.", "Return the book."] * 4})
    common = dict(max_steps=3, per_device_train_batch_size=4, logging_steps=1, report_to="none", use_cpu=True, save_strategy="no")
    sft = SFTTrainer(
        model=model, args=SFTConfig(output_dir=str(work / "sft"), max_length=min(64, model.config.max_position_embeddings), **common), train_dataset=texts,
        processing_class=tokenizer, peft_config=LoraConfig(r=8, task_type="CAUSAL_LM"),
    )
    adapters = {name: p.detach().clone() for name, p in sft.model.named_parameters() if p.requires_grad}
    sft.train()
    if not adapters or all(torch.equal(adapters[name], p) for name, p in sft.model.named_parameters() if name in adapters):
        raise SystemExit("TRL SFTTrainer trained nothing: the LoRA weights did not change.")
    losses = [round(log["loss"], 3) for log in sft.state.log_history if "loss" in log]
    print(f"TRL SFTTrainer + LoRA: {sft.model.__class__.__name__}, trainable {sft.model.num_parameters(only_trainable=True)} parameters, losses {losses}")

    pairs = datasets.Dataset.from_dict({
        "prompt": ["Return the", "It was a", "I had always thought"] * 4,
        "chosen": [" book.", " surprise.", " him a genius."] * 4,
        "rejected": [" xqzv.", " kkkk.", " zzzz qqq."] * 4,
    })
    policy = sft.model.merge_and_unload().requires_grad_(True)  # LoRA left the base weights frozen; DPO trains them all
    before = {name: p.detach().clone() for name, p in policy.named_parameters()}
    dpo = DPOTrainer(model=policy, args=DPOConfig(output_dir=str(work / "dpo"), max_length=min(64, model.config.max_position_embeddings), **common), train_dataset=pairs, processing_class=tokenizer)
    dpo.train()
    norms = [log["grad_norm"] for log in dpo.state.log_history if "grad_norm" in log]
    if all(torch.equal(before[name], p) for name, p in dpo.model.named_parameters() if name in before) or not any(norms):
        raise SystemExit(f"TRL DPOTrainer trained nothing: the weights did not change (grad_norm {norms}).")
    last = [log for log in dpo.state.log_history if "loss" in log][-1]
    print(f"TRL DPOTrainer: loss {last['loss']:.4f}, rewards/accuracies {last.get('rewards/accuracies')}, rewards/margins {last.get('rewards/margins'):.4f}")


def serve_and_curl(model_dir: str, work: Path, port: int = 8765) -> None:
    """Export to GPT-2, serve it with `transformers serve`, ask for a completion with curl."""
    gpt2_dir = work / "gpt2"
    step("export", ["scratch-gpt", "export", model_dir, str(gpt2_dir), "--to", "gpt2"])
    command = ["transformers", "serve", "--device", "cpu", "--port", str(port), str(gpt2_dir)]
    print(f"\n$ {' '.join(command)} &", flush=True)
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(120):  # wait for the server (up to two minutes)
            probe = subprocess.run(["curl", "-s", f"http://localhost:{port}/health"], capture_output=True, text=True)
            if probe.returncode == 0 and probe.stdout:
                break
            if server.poll() is not None:
                raise SystemExit(f"transformers serve exited:\n{server.stderr.read()[-3000:]}")
            time.sleep(1)
        body = json.dumps({"model": str(gpt2_dir), "prompt": "Return the", "max_tokens": 12, "temperature": 0})
        curl = ["curl", "-s", f"http://localhost:{port}/v1/completions", "-H", "Content-Type: application/json", "-d", body]
        print(f"$ {' '.join(curl[:3])} -H 'Content-Type: application/json' -d '{body}'")
        answer = subprocess.run(curl, capture_output=True, text=True, check=True).stdout
        print(answer[:800])
        if '"choices"' not in answer:
            raise SystemExit("transformers serve gave no completion")
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> int:
    model_dir = str(Path(sys.argv[1]).resolve()) if len(sys.argv) > 1 else sys.exit(__doc__)
    tasks_dir = str(Path(__import__("scratch_gpt.evaluation", fromlist=["TASKS_DIR"]).TASKS_DIR))
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "held_out.jsonl").write_text(json.dumps({"text": TEXT}) + "\n", encoding="utf-8")
        (work / "questions.jsonl").write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS), encoding="utf-8")
        step("lm_eval", ["lm_eval", "run", "--model", "hf", "--model_args", f"pretrained={model_dir},trust_remote_code=True",
                         "--tasks", "scratch_perplexity", "--include_path", tasks_dir, "--device", "cpu", "--batch_size", "8"],
             cwd=work, env=env)
        step("scratch_choice", ["scratch-gpt", "evaluate", model_dir, "--tasks", "scratch_choice", "--data", str(work / "questions.jsonl")], env=env)
        print("\n$ TRL (python): SFTTrainer(peft_config=LoraConfig(...)), then DPOTrainer", flush=True)
        trl_sft_and_dpo(model_dir, work)
        serve_and_curl(model_dir, work)
        from transformers import pipeline

        import scratch_gpt  # noqa: F401

        generator = pipeline("text-generation", model=model_dir, device="cpu")
        print("\n$ pipeline('text-generation', model=MODEL)('Return the', max_new_tokens=12, do_sample=False)")
        print(generator("Return the", max_new_tokens=12, do_sample=False)[0]["generated_text"])
    print("\nall clients ran")
    return 0


if __name__ == "__main__":
    sys.exit(main())
