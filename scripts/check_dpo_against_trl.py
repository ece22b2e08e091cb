"""Check our DPO loss against TRL's `DPOTrainer` on the same batch.

    pip install trl          # this script's own dependency; scratch_gpt does not need it
    python scripts/check_dpo_against_trl.py                      # a tiny random ScratchGPT, built here
    python scripts/check_dpo_against_trl.py --model OUT/inst --data prefs.json   # a real model and data

What is compared: TRL builds the batch (its tokenization and `DataCollatorForPreference`: input_ids,
attention_mask, completion_mask) from TRL-format records (a book record becomes a conversational
one: prompt = the Alpaca user message). On that one batch, with a policy that differs from the
reference (the policy's weights get a little noise), we compute

- TRL's loss: `DPOTrainer.compute_loss(model, batch)` (loss_type "sigmoid", beta as given), and the
  reward margin and accuracy it logs;
- ours: `DPOModel(policy)(input_ids, attention_mask, labels)`, labels = input_ids where
  completion_mask is 1, -100 elsewhere, with the same frozen reference;

and require them to agree within 1e-4. It also reports whether our own tokenization
(`scratch_gpt.training.dpo.tokenize_pairs` + `PreferenceCollator`) gives TRL's token ids.
"""

import argparse
import json
import sys
import tempfile

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from scratch_gpt.training.dpo import DPOModel, PreferenceCollator, disable_dropout, to_pair, tokenize_pairs

TOY = [
    {"instruction": "Rewrite the word in capitals.", "input": word, "chosen": word.upper(), "rejected": other}
    for word, other in [("fox", "dog"), ("dog", "hello"), ("hello", "world"), ("world", "fox")] * 2
]


def tiny_model_and_tokenizer():
    """A random tiny ScratchGPT with a tokenizer trained on a few sentences (chat template included)."""
    from scratch_gpt import ScratchGPTConfig, ScratchGPTForCausalLM
    from scratch_gpt.tokenizer import config_kwargs, train_tokenizer

    texts = ["Rewrite the word in capitals.", "fox dog hello world FOX DOG HELLO WORLD", "### Instruction: Response"]
    tokenizer = train_tokenizer(texts * 50, vocab_size=400, show_progress=False)
    config = ScratchGPTConfig.from_preset("tiny", max_position_embeddings=256, **config_kwargs(tokenizer))
    torch.manual_seed(0)
    return ScratchGPTForCausalLM(config), tokenizer


def as_trl_record(record: dict, index: int) -> dict:
    """Our pair as TRL reads it: conversational (lists of messages) or plain text."""
    pair = to_pair(record, index, "data")
    return {key: pair[key] for key in ("prompt", "chosen", "rejected")}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="causal LM folder (default: a tiny random ScratchGPT)")
    parser.add_argument("--data", default=None, help="preference records (.json list); default: a toy set")
    parser.add_argument("--pairs", type=int, default=8, help="pairs in the batch (default: 8)")
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--noise", type=float, default=0.02, help="std of the noise added to the policy (default: 0.02)")
    args = parser.parse_args(argv)

    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    if args.model:
        policy, tokenizer = AutoModelForCausalLM.from_pretrained(args.model), AutoTokenizer.from_pretrained(args.model)
        tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    else:
        policy, tokenizer = tiny_model_and_tokenizer()
    if args.data:
        with open(args.data, encoding="utf-8") as file:
            records = json.load(file)
    else:
        records = TOY
    records = records[: args.pairs]
    disable_dropout(policy)

    ours = DPOModel(policy, beta=args.beta).eval()  # the reference: a frozen copy, taken now
    torch.manual_seed(1)
    with torch.no_grad():  # move the policy away from the reference, so the loss is not just ln 2
        for param in policy.parameters():
            param.add_(torch.randn_like(param) * args.noise)

    with tempfile.TemporaryDirectory() as output_dir:
        config = DPOConfig(
            output_dir=output_dir,
            beta=args.beta,
            loss_type=["sigmoid"],
            per_device_train_batch_size=len(records),
            per_device_eval_batch_size=len(records),
            max_length=None,
            report_to=[],
            use_cpu=not torch.cuda.is_available(),
            disable_dropout=True,
        )
        dataset = Dataset.from_list([as_trl_record(r, i) for i, r in enumerate(records)])
        trainer = DPOTrainer(
            model=policy, ref_model=ours.reference, args=config, train_dataset=dataset, eval_dataset=dataset,
            processing_class=tokenizer,
        )
        trainer.model.eval()
        batch = next(iter(trainer.get_eval_dataloader()))  # in order (the training loader shuffles)
        batch = {key: value.to(trainer.accelerator.device) for key, value in batch.items()}
        ours.to(trainer.accelerator.device)
        with torch.no_grad():
            trl_loss = trainer.compute_loss(trainer.model, batch).item()
            trl_metrics = {key: values[-1] for key, values in trainer._metrics["eval"].items()}
            labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
            output = ours(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels)

    margins = output.chosen_rewards - output.rejected_rewards
    our_margin, our_accuracy = margins.mean().item(), (margins > 0).float().mean().item()
    # our own tokenization of the same records, to the same batch layout
    pairs = [to_pair(r, i, "data") for i, r in enumerate(records)]
    our_batch = PreferenceCollator(tokenizer.pad_token_id)(tokenize_pairs(tokenizer, pairs, 10**9).to_list())
    same_tokens = our_batch["input_ids"].shape == batch["input_ids"].shape and torch.equal(
        our_batch["input_ids"].to(batch["input_ids"].device), batch["input_ids"]
    )
    same_labels = same_tokens and torch.equal(our_batch["labels"].to(labels.device), labels)

    difference = abs(output.loss.item() - trl_loss)
    print(f"model: {args.model or 'tiny random ScratchGPT'}; {len(records)} pairs; beta {args.beta}")
    print(f"{'':24}{'TRL DPOTrainer':>16}{'scratch_gpt':>16}")
    print(f"{'DPO loss':24}{trl_loss:>16.6f}{output.loss.item():>16.6f}")
    print(f"{'reward margin':24}{trl_metrics['rewards/margins']:>16.6f}{our_margin:>16.6f}")
    print(f"{'reward accuracy':24}{trl_metrics['rewards/accuracies']:>16.4f}{our_accuracy:>16.4f}")
    print(f"{'chosen reward':24}{trl_metrics['rewards/chosen']:>16.6f}{output.chosen_rewards.mean().item():>16.6f}")
    print(f"{'rejected reward':24}{trl_metrics['rewards/rejected']:>16.6f}{output.rejected_rewards.mean().item():>16.6f}")
    print(f"|loss difference| = {difference:.2e} (tolerance 1e-4)")
    print(f"our tokenization gives TRL's input_ids: {same_tokens}; and its answer-only labels: {same_labels}")
    if difference > 1e-4:
        print("FAIL: the losses differ", file=sys.stderr)
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
