"""Fine-tuning benchmark on realistic small tasks: ScratchGPT vs transformers' GPT-2, same weights.

`--task classifier`: SMS spam vs ham. The data is a synthetic SMS collection built here
(templates with many slot values, about 13% spam as in the public SMS Spam Collection, ham that
uses spam words like "free" or "won", typos, and 2% flipped labels so that 100% is out of
reach). The project column is the real command, `scratch-gpt finetune-classifier`; the peer
column is transformers' `GPT2ForSequenceClassification` with the same weights (converted with
`scratch_gpt.convert.to_gpt2`), the same initial head, data, splits and training loop, training
the same parameters (the last block + final norm + head, or LoRA on the same projections).

`--task instruct`: Alpaca-style records of six small checkable tasks (capitals, reversal,
opposites, sums, parity, word length); `scratch-gpt finetune-instruct --mask-prompt` against
`GPT2LMHeadModel` with the same weights, data, split, collator and loop: held-out loss before and
after, and exact-match accuracy of greedy answers to the held-out instructions.

The peer runs through the real command too: the command's step 4, the module-level function
`make_trainable(model, args)` of `scratch_gpt.training.classify` / `.instruct`, is patched here
(`unittest.mock.patch.object`) with one that returns transformers' model with the same weights, so
the commands themselves carry no benchmark hook.

The ratio column is ScratchGPT / GPT-2; 1.0 means the same result. The table holds quality only:
on CPU the run that goes first in a process pays one-off costs for every new batch shape, which
swamps any speed difference (swapping the order swapped a 4x gap), so training speed is measured
by `scripts/bench_model.py` instead, with both models interleaved on fixed shapes.

    scratch-gpt quickstart --output-dir runs/quickstart      # a small pre-trained base model
    python scripts/bench_finetune.py --model runs/quickstart/model
    python scripts/bench_finetune.py --model runs/quickstart/model --lora --balance
    python scripts/bench_finetune.py --model runs/quickstart/model --task instruct
"""

import argparse
import csv
import json
import random
import tempfile
from pathlib import Path
from unittest import mock

import torch
from peft import LoraConfig, get_peft_model
from transformers import GPT2ForSequenceClassification

from scratch_gpt import ScratchGPTForCausalLM, ScratchGPTForSequenceClassification
from scratch_gpt.cli import parse_command
from scratch_gpt.convert import to_gpt2
from scratch_gpt.training import classify, instruct

NAMES = ["Sam", "Alex", "mum", "Jo", "Priya", "Tom", "Lena", "dad", "Chris", "Kim"]
TIMES = ["7", "half 6", "noon", "8pm", "tomorrow", "later", "10ish", "lunch"]
PLACES = ["station", "pub", "gym", "library", "cafe", "office", "park", "cinema"]
THINGS = ["milk", "the keys", "bread", "my charger", "the tickets", "some pizza", "coffee", "the parcel"]
PRIZES = ["iPhone", "holiday", "£1000 voucher", "Nokia phone", "cruise", "gift card", "laptop", "car"]
MONEY = ["£500", "£2000", "$1,000", "£250", "£5000", "$750"]
URLS = ["www.claim-now.co.uk", "bit.ly/w1nner", "prize-centre.com", "secure-verify.net", "txt4free.biz"]

HAM = [
    "hey {name}, are we still on for {time}?",
    "can you pick up {thing} on the way home",
    "running late, be there in {n} mins",
    "ok see you at the {place} at {time}",
    "thanks for {thing} {name}! x",
    "I won't make it to the {place} today, feeling rubbish",
    "free tonight? fancy the {place} around {time}",
    "lol I just won the office quiz, they gave me {thing}",
    "did you call {name} back? she wants {thing}",
    "the {place} is closed so meet at the {place2} instead",
    "sorry missed your call, in the {place}, will ring you at {time}",
    "text me when you get to the {place}",
    "{name} says dinner at {time}, bring {thing}",
    "is the offer on {thing} still on at the shop?",
]
SPAM = [
    "CONGRATULATIONS! You have won a {prize}. Call 0{phone} now to claim.",
    "URGENT: your account has been suspended, verify your details at {url}",
    "FREE entry into our {prize} draw! Text WIN to {short} now. 18+ only",
    "You have been selected for a {money} cash reward. Reply YES to {short}",
    "Lowest rates on loans! Get {money} today, apply at {url}",
    "Your mobile number has won {money}! To claim call 0{phone}. T&Cs apply",
    "Claim your free {prize} now at {url}, offer ends {time}",
    "Txt STOP to {short} to end. You are a winner of a {prize}!!",
    "Dear customer, a {money} refund is waiting. Visit {url} to receive it",
    "{name}, you have 1 unclaimed {prize}. Call 0{phone} before {time}",
]


def typo(text: str, rng: random.Random) -> str:
    """Swap two neighbouring letters once in a while, like a hurried thumb."""
    if len(text) < 4 or rng.random() > 0.3:
        return text
    i = rng.randrange(len(text) - 1)
    return text[:i] + text[i + 1] + text[i] + text[i + 2 :]


def sms_dataset(n: int, seed: int = 0, spam_share: float = 0.13, label_noise: float = 0.02) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        spam = rng.random() < spam_share
        slots = dict(
            name=rng.choice(NAMES),
            time=rng.choice(TIMES),
            place=rng.choice(PLACES),
            place2=rng.choice(PLACES),
            thing=rng.choice(THINGS),
            n=rng.randint(2, 40),
            prize=rng.choice(PRIZES),
            money=rng.choice(MONEY),
            url=rng.choice(URLS),
            phone=rng.randint(7_000_000_000, 7_999_999_999),
            short=rng.randint(80000, 89999),
        )
        text = typo(rng.choice(SPAM if spam else HAM).format(**slots), rng)
        if rng.random() < label_noise:
            spam = not spam
        rows.append({"text": text, "label": "spam" if spam else "ham"})
    return rows


def gpt2_peer(model_dir: str, ours: ScratchGPTForSequenceClassification) -> GPT2ForSequenceClassification:
    """GPT-2's classifier with the body of `model_dir` and the same initial head as `ours`."""
    body = to_gpt2(ScratchGPTForCausalLM.from_pretrained(model_dir))
    config = body.config
    config.update(
        dict(
            num_labels=ours.config.num_labels,
            pad_token_id=ours.config.pad_token_id,
            id2label=ours.config.id2label,
            label2id=ours.config.label2id,
        )
    )
    peer = GPT2ForSequenceClassification(config)
    peer.transformer.load_state_dict(body.transformer.state_dict())
    peer.score.weight.data.copy_(ours.score.weight.data)
    return peer


def peer_lora(task_type: str) -> callable:
    """LoRA on GPT-2's Conv1D projections: the same matrices as the project's default targets."""

    def apply(model, args):
        targets = ["c_attn", "c_proj", "c_fc"]  # GPT-2's qkv_proj, out_proj + fc_out, fc_in
        config = LoraConfig(
            task_type=task_type,
            r=args.lora_r,
            lora_alpha=args.lora_alpha,
            target_modules=targets,
            fan_in_fan_out=True,
            modules_to_save=["score"] if task_type == "SEQ_CLS" else None,
        )
        return get_peft_model(model, config)

    return apply


def peer_classifier(ours: ScratchGPTForSequenceClassification, args) -> torch.nn.Module:
    """Step 4 of the classification command for the peer: the same parameters train, under GPT-2's names."""
    model = gpt2_peer(args.model, ours)
    if args.lora:
        return peer_lora("SEQ_CLS")(model, args)
    model.requires_grad_(False)
    for module in (*model.transformer.h[-args.last_blocks :], model.transformer.ln_f, model.score):
        module.requires_grad_(True)
    return model


def run_peer(argv: list[str]) -> dict:
    """The classification command itself, with GPT2ForSequenceClassification swapped in at its step 4."""
    with mock.patch.object(classify, "make_trainable", peer_classifier):
        return classify.finetune_classifier(parse_command("finetune-classifier", argv)[0])


# ----------------------------------------------------------------------------------------------
# Instruction following: a synthetic Alpaca-style set of small, checkable tasks
# ----------------------------------------------------------------------------------------------
WORDS = ["apple", "river", "garden", "window", "silver", "planet", "candle", "forest", "pencil", "market"]
OPPOSITES = {
    "hot": "cold",
    "big": "small",
    "fast": "slow",
    "happy": "sad",
    "early": "late",
    "light": "dark",
    "open": "closed",
    "full": "empty",
    "high": "low",
    "old": "new",
}


def instruction_records(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    records = []
    for _ in range(n):
        word, (a, b) = rng.choice(WORDS), (rng.randint(1, 20), rng.randint(1, 20))
        adjective = rng.choice(sorted(OPPOSITES))
        task = rng.choice(
            [
                ("Write the word in capital letters.", word, word.upper()),
                ("Reverse the letters of the word.", word, word[::-1]),
                ("What is the opposite of the given word?", adjective, OPPOSITES[adjective]),
                ("Add the two numbers.", f"{a} and {b}", str(a + b)),
                ("Is the number even or odd?", str(a), "even" if a % 2 == 0 else "odd"),
                ("How many letters does the word have?", word, str(len(word))),
            ]
        )
        records.append(dict(zip(("instruction", "input", "output"), task, strict=True)))
    return records


def peer_instruct(ours: ScratchGPTForCausalLM, args) -> torch.nn.Module:
    """Step 4 of the instruction command for the peer: GPT2LMHeadModel with the same weights (and LoRA)."""
    model = to_gpt2(ours)
    return peer_lora("CAUSAL_LM")(model, args) if args.lora else model


def run_instruct(argv: list[str]) -> dict:
    """The instruction command, plus exact match of its answers to the held-out instructions."""
    args = parse_command("finetune-instruct", argv)[0]
    metrics = instruct.finetune_instruct(args)
    answered = [json.loads(line) for line in (Path(args.output_dir) / "answers.jsonl").read_text().splitlines()]
    return {**metrics, "exact_match": exact_match([a["reference"] for a in answered], [a["answer"] for a in answered])}


def exact_match(references: list[str], answers: list[str]) -> float:
    return sum(r.strip() == a.strip() for r, a in zip(references, answers, strict=True)) / len(references)


# ----------------------------------------------------------------------------------------------
def print_table(title: str, ours: dict, peer: dict, keys: list[str]) -> None:
    print(f"\n{title}")
    print(f"{'metric':<24}{'ScratchGPT':>12}{'GPT-2 (HF)':>12}{'ratio':>8}")
    for key in keys:
        ratio = f"{ours[key] / peer[key]:>8.3f}" if peer[key] else f"{'n/a':>8}"
        print(f"{key:<24}{ours[key]:>12.4f}{peer[key]:>12.4f}{ratio}")


def bench_classifier(options, work: Path) -> None:
    data = work / "sms.csv"
    rows = sms_dataset(options.examples or 3000)
    with data.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=["text", "label"])
        writer.writeheader()
        writer.writerows(rows)
    lr = options.lr or (2e-3 if options.lora else 1e-3)
    common = ["--model", options.model, "--data", str(data), "--epochs", str(options.epochs), "--lr", str(lr)]
    common += ["--batch-size", "16", "--no-progress", "--max-length", "64"]
    common += ["--lora"] if options.lora else ["--trainable", "last-blocks", "--last-blocks", "1"]
    common += ["--balance"] if options.balance else []

    ours = classify.finetune_classifier(parse_command("finetune-classifier", [*common, "--output-dir", str(work / "ours")])[0])
    peer = run_peer([*common, "--output-dir", str(work / "gpt2")])
    spam = sum(r["label"] == "spam" for r in rows)
    mode = "LoRA r=8 + head" if options.lora else "last block + final norm + head"
    balanced = ", balanced by undersampling" if options.balance else ""
    print_table(
        f"SMS spam vs ham: {len(rows)} messages ({spam} spam){balanced}; trains {mode}; "
        f"{options.epochs} epochs, lr {lr}; base {options.model}",
        ours,
        peer,
        ["initial_accuracy", "accuracy", "test_accuracy", "test_precision", "test_recall", "test_f1"],
    )


def bench_instruct(options, work: Path) -> None:
    data = work / "instructions.json"
    data.write_text(json.dumps(instruction_records(options.examples or 1200)))
    lr = options.lr or (2e-3 if options.lora else 1e-3)
    common = ["--model", options.model, "--data", str(data), "--epochs", str(options.epochs), "--lr", str(lr)]
    common += ["--batch-size", "16", "--no-progress", "--mask-prompt", "--max-new-tokens", "8", "--max-answers", "100"]
    common += ["--lora"] if options.lora else []

    ours = run_instruct([*common, "--output-dir", str(work / "ours")])
    with mock.patch.object(instruct, "make_trainable", peer_instruct):  # step 4 swaps in GPT2LMHeadModel
        peer = run_instruct([*common, "--output-dir", str(work / "gpt2")])
    print_table(
        f"Instruction following: {options.examples or 1200} Alpaca-style records (6 small tasks), answers only "
        f"(--mask-prompt); {'LoRA r=8' if options.lora else 'all weights'}; {options.epochs} epochs, lr {lr}; "
        f"exact match on the held-out instructions; base {options.model}",
        ours,
        peer,
        ["initial_eval_loss", "eval_loss", "exact_match"],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a pre-trained ScratchGPT causal LM folder")
    parser.add_argument("--task", choices=("classifier", "instruct"), default="classifier")
    parser.add_argument("--examples", type=int, default=None, help="dataset size (default: 3000 SMS, 1200 records)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=None, help="default: 1e-3, or 2e-3 with --lora")
    parser.add_argument("--lora", action="store_true", help="train LoRA adapters (r=8) instead")
    parser.add_argument("--balance", action="store_true", help="classifier: undersample ham to the spam count")
    options = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-finetune-"))
    (bench_classifier if options.task == "classifier" else bench_instruct)(options, work)


if __name__ == "__main__":
    main()
