"""Preference tuning with DPO (stage 7.3): `scratch-gpt finetune-dpo`.

Direct Preference Optimization (Rafailov et al., 2023) trains on pairs of answers to one prompt,
one `chosen`, one `rejected`. It needs no reward model: the reward of an answer is how much more
likely the trained model (the *policy*) makes it than a frozen copy of where it started (the
*reference*), scaled by beta:

    reward(answer) = beta * (log p_policy(answer | prompt) - log p_reference(answer | prompt))
    loss           = -log sigmoid(reward(chosen) - reward(rejected))

so the loss falls as the policy moves towards the chosen answers and away from the rejected ones,
relative to the reference; beta sets how far it may drift. At the start the policy is the
reference, both rewards are 0 and the loss is ln 2 = 0.693.

The steps of `finetune-dpo`, top to bottom:

1. read records in one of three shapes and check each one:
   - the book's: `instruction`, optional `input`, `chosen`, `rejected` (the prompt is the Alpaca
     prompt, rendered by the tokenizer's chat template);
   - TRL's conversational: `prompt` a list of messages, `chosen` / `rejected` the assistant turn(s);
   - TRL's plain text: `prompt`, `chosen`, `rejected` strings (the prompt carries its own format);
2. tokenize prompt + chosen and prompt + rejected, marking which tokens are the answer;
3. train with the shared loop: `DPOModel` holds the policy and the reference and its `forward`
   returns the DPO loss of a batch of pairs, so the loop trains it like any other head;
   `PreferenceCollator` pads the chosen sequences, then the rejected ones, into one batch;
4. at each evaluation, on held-out pairs and on as many training pairs: DPO loss, reward margin,
   reward accuracy, chosen and rejected rewards (`metrics.jsonl`); then save the policy alone (or
   its LoRA adapter) with tokenizer, generation config and card: a folder `scratch-gpt chat` and
   `pipeline("text-generation")` load like any instruction-tuned model.
"""

import copy
import logging
from dataclasses import dataclass
from pathlib import Path

import datasets
import torch
import torch.nn.functional as F
from peft import PeftModel
from torch import nn
from transformers import set_seed
from transformers.utils import ModelOutput

from scratch_gpt import ScratchGPTForCausalLM
from scratch_gpt.args import DPOOptions
from scratch_gpt.convert import load_pretrained
from scratch_gpt.errors import BadInput
from scratch_gpt.lora import describe_trainable
from scratch_gpt.tokenizer import format_alpaca_messages
from scratch_gpt.training import parallel
from scratch_gpt.training.finetune import (
    IGNORE_INDEX,
    card_writer,
    hold_out,
    is_messages,
    load_base_tokenizer,
    max_length_for,
    pad_batch,
)
from scratch_gpt.training.instruct import make_trainable, read_instruction_records
from scratch_gpt.training.loop import check_output_dir, make_loader, process_state, train

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------
# 1. Records -> preference pairs
def to_pair(record, index: int, source: str) -> dict:
    """One record as `{"prompt", "chosen", "rejected"}`; ValueError naming the record. Chat-shaped:
    `prompt` a list of messages, `chosen` and `rejected` lists of assistant messages. Plain text:
    all three strings, the answers to be appended to the prompt as they are."""
    where = f"Record {index} of {source!r}"
    if not isinstance(record, dict):
        raise BadInput(f"{where} is a {type(record).__name__}, not an object with prompt, chosen and rejected.")
    for key in ("chosen", "rejected"):
        if not record.get(key):
            raise BadInput(f"{where} has no {key!r} answer; every record needs a 'chosen' and a 'rejected' answer.")
    if record["chosen"] == record["rejected"]:
        raise BadInput(
            f"{where} has the same 'chosen' and 'rejected' answer; a preference needs two different ones "
            "(drop the record, or pass --skip-identical to skip such records)."
        )

    if isinstance(record.get("instruction"), str):  # the book's: the Alpaca prompt
        prompt = format_alpaca_messages({"instruction": record["instruction"], "input": record.get("input") or ""})
    elif isinstance(record.get("prompt"), (str, list)):  # TRL's
        prompt = record["prompt"]
    else:
        raise BadInput(
            f"{where} has keys {sorted(record)}; expected 'instruction' (and an optional 'input') or 'prompt', "
            "next to 'chosen' and 'rejected'."
        )

    if isinstance(prompt, str):
        if not (isinstance(record["chosen"], str) and isinstance(record["rejected"], str)):
            raise BadInput(f"{where}: with a text 'prompt', 'chosen' and 'rejected' must be text too.")
        return {"prompt": prompt, "chosen": record["chosen"], "rejected": record["rejected"]}
    pair = {"prompt": prompt}
    for key in ("chosen", "rejected"):  # a plain answer is one assistant message
        answer = record[key]
        pair[key] = [{"role": "assistant", "content": answer}] if isinstance(answer, str) else answer
    if not all(is_messages(pair[key]) for key in ("prompt", "chosen", "rejected")):
        raise BadInput(f"{where}: 'prompt', 'chosen' and 'rejected' must be lists of {{'role', 'content'}} messages.")
    if not any(m["role"] == "user" for m in pair["prompt"]):
        raise BadInput(f"{where}: the prompt needs a user message.")
    return pair


def identical_pairs(records: list) -> list[int]:
    """Indices of the records whose chosen and rejected answers are the same (a tie: its gradient is 0)."""
    return [i for i, r in enumerate(records) if isinstance(r, dict) and r.get("chosen") and r["chosen"] == r.get("rejected")]


# ----------------------------------------------------------------------------------------------
# 2. Pairs -> tokens
def render(tokenizer, prompt, answer) -> tuple[str, str]:
    """The prompt as text (ending where the answer starts) and the whole text, prompt + answer."""
    if isinstance(prompt, str):
        return prompt, prompt + answer
    prompt_text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    text = tokenizer.apply_chat_template(prompt + answer, tokenize=False)
    if not text.startswith(prompt_text):
        raise BadInput("The chat template does not render a prompt as the start of the conversation it begins.")
    return prompt_text, text


def tokenize_answer(tokenizer, prompt, answer) -> dict:
    """`input_ids` of prompt + answer and `answer_mask` (1 = a token of the answer). The whole text
    is tokenized at once (as at inference) and a token belongs to the answer when it ends after the
    prompt's last character. An end-of-text token closes every answer."""
    prompt_text, text = render(tokenizer, prompt, answer)
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    input_ids = encoding["input_ids"]
    answer_mask = [int(end > len(prompt_text)) for _, end in encoding["offset_mapping"]]
    if input_ids[-1] != tokenizer.eos_token_id:
        input_ids, answer_mask = input_ids + [tokenizer.eos_token_id], answer_mask + [1]
    return {"input_ids": input_ids, "answer_mask": answer_mask}


def tokenize_pairs(tokenizer, pairs: list[dict], max_length: int) -> datasets.Dataset:
    """Both sides of every pair, cut to `max_length` (ONE warning); pairs where a side lost its
    whole answer are dropped. Each row keeps `record`, the index of its pair."""
    rows, truncated = [], 0
    for index, pair in enumerate(pairs):
        row = {"record": index}
        for side in ("chosen", "rejected"):
            tokens = tokenize_answer(tokenizer, pair["prompt"], pair[side])
            truncated += len(tokens["input_ids"]) > max_length
            row[f"{side}_input_ids"] = tokens["input_ids"][:max_length]
            row[f"{side}_answer_mask"] = tokens["answer_mask"][:max_length]
        rows.append(row)
    kept = [row for row in rows if any(row["chosen_answer_mask"]) and any(row["rejected_answer_mask"])]
    if truncated:
        logger.warning(
            f"{truncated} answers are longer than {max_length} tokens with their prompt and were truncated; "
            f"{len(rows) - len(kept)} of {len(rows)} pairs lost a whole answer and were dropped."
        )
    if not kept:
        raise BadInput(f"No pair has both answers within {max_length} tokens; raise --max-length or shorten the data.")
    return datasets.Dataset.from_list(kept)


# ----------------------------------------------------------------------------------------------
# 3. The collator, the loss and the model the loop trains
@dataclass
class PreferenceCollator:
    """Pads B pairs into one batch of 2B sequences: the B chosen ones, then the B rejected ones.
    `labels` are the input ids on answer tokens and -100 elsewhere (prompt and padding)."""

    pad_token_id: int

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        sequences = [(row["chosen_input_ids"], row["chosen_answer_mask"]) for row in rows]
        sequences += [(row["rejected_input_ids"], row["rejected_answer_mask"]) for row in rows]
        return pad_batch(sequences, self.pad_token_id)


def answer_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log p(answer | prompt) of each sequence: the sum over its answer tokens of log p(token).
    logits (N, T, V) and labels (N, T), -100 where a token is not part of the answer. The logits
    at position t predict the token at t + 1, so both are shifted by one, as in the LM loss."""
    logits, labels = logits[:, :-1].float(), labels[:, 1:]
    is_answer = labels != IGNORE_INDEX
    log_probs = torch.log_softmax(logits, dim=-1)  # (N, T-1, V)
    token_logps = log_probs.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (N, T-1)
    return torch.where(is_answer, token_logps, 0.0).sum(dim=-1)  # (N,)


def dpo_loss(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta: float):
    """The DPO loss of each pair and the two implicit rewards, from answer log-probabilities (B,)."""
    chosen_rewards = beta * (policy_chosen - reference_chosen)
    rejected_rewards = beta * (policy_rejected - reference_rejected)
    losses = -F.logsigmoid(chosen_rewards - rejected_rewards)
    return losses, chosen_rewards, rejected_rewards


@dataclass
class DPOOutput(ModelOutput):
    loss: torch.Tensor | None = None  # the mean DPO loss of the batch
    chosen_rewards: torch.Tensor | None = None  # (B,) detached
    rejected_rewards: torch.Tensor | None = None  # (B,) detached


class DPOModel(nn.Module):
    """The policy being trained next to its frozen reference; `forward` returns the DPO loss.
    The reference is a copy of the policy as it starts, without gradients and always in eval
    mode. For a LoRA policy (a PEFT model) it is the same model with its adapters disabled, so
    no second copy of the weights exists. Saving saves the policy only; any other attribute the
    loop or a user asks for (`config`, `generation_config`, `generate`, `merge_and_unload`, ...)
    is the policy's."""

    def __init__(self, policy: nn.Module, beta: float = 0.1):
        super().__init__()
        self.policy, self.beta = policy, beta
        self.reference = None if isinstance(policy, PeftModel) else copy.deepcopy(policy).requires_grad_(False).eval()

    def forward(self, input_ids, attention_mask, labels) -> DPOOutput:
        """input_ids, attention_mask, labels: (2B, T), the B chosen sequences then the B rejected ones."""
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": False}
        policy_logps = answer_logprobs(self.policy(**inputs).logits, labels)
        with torch.no_grad():
            reference_logps = answer_logprobs(self.reference_logits(inputs), labels)
        policy_chosen, policy_rejected = policy_logps.chunk(2)
        ref_chosen, ref_rejected = reference_logps.chunk(2)
        losses, chosen, rejected = dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, self.beta)
        return DPOOutput(loss=losses.mean(), chosen_rewards=chosen.detach(), rejected_rewards=rejected.detach())

    def reference_logits(self, inputs: dict) -> torch.Tensor:
        if self.reference is None:
            with self.policy.disable_adapter():  # the LoRA base model: the policy without its adapters
                return self.policy(**inputs).logits
        return self.reference(**inputs).logits

    def train(self, mode: bool = True):
        super().train(mode)
        if self.reference is not None:
            self.reference.eval()  # the reference never drops out
        return self

    def save_pretrained(self, folder, state_dict=None, **kwargs) -> None:
        """The policy's `save_pretrained` (a model folder, or an adapter folder for LoRA)."""
        if state_dict is not None:  # the wrapper's: keep the policy's tensors, under the policy's names
            state_dict = {k.removeprefix("policy."): v for k, v in state_dict.items() if k.startswith("policy.")}
        self.policy.save_pretrained(folder, state_dict=state_dict, **kwargs)

    def can_generate(self) -> bool:
        """False: its loss is the DPO loss, not a next-token loss, so the loop shows no perplexity for it
        (`generate` itself is still the policy's)."""
        return False

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)  # parameters, buffers and submodules
        except AttributeError:
            if name == "policy":
                raise
            return getattr(self.policy, name)


def disable_dropout(model: nn.Module) -> None:
    """Dropout off (TRL does the same by default): with it, the policy would score a pair unlike the
    reference even before any step, and the loss would not start at ln 2. The saved config says so."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    for name in ("embd_pdrop", "attn_pdrop", "resid_pdrop"):
        if hasattr(model.config, name):
            setattr(model.config, name, 0.0)


# ----------------------------------------------------------------------------------------------
# 4. Metrics of an evaluation
@torch.no_grad()
def preference_metrics(model, loader, accelerator, max_batches: int | None = None) -> dict[str, float]:
    """DPO loss, reward margin, reward accuracy and mean rewards over the pairs of `loader`."""
    chosen, rejected = [], []
    for index, batch in enumerate(loader):
        if max_batches is not None and index >= max_batches:
            break
        output = model(**batch)
        rewards = accelerator.gather_for_metrics((output.chosen_rewards, output.rejected_rewards))
        chosen.append(rewards[0].float())
        rejected.append(rewards[1].float())
    chosen, rejected = torch.cat(chosen), torch.cat(rejected)
    margins = chosen - rejected
    return {
        "loss": (-F.logsigmoid(margins)).mean().item(),  # the DPO loss of each pair, from its two rewards
        "reward_margin": margins.mean().item(),
        "reward_accuracy": (margins > 0).float().mean().item(),
        "chosen_reward": chosen.mean().item(),
        "rejected_reward": rejected.mean().item(),
    }


def evaluate_with_training_pairs(train_probe, collate_fn, config):
    """The loop's `evaluate_fn`: metrics on the held-out pairs (`eval_...`; the loss is the loop's
    `eval_loss`) and on `train_probe`, a fixed set of training pairs (`train_pairs_...`)."""
    probe_loader, batch_size = None, config.eval_batch_size or config.batch_size

    def evaluate(model, eval_loader, accelerator) -> dict[str, float]:
        nonlocal probe_loader
        if probe_loader is None:
            probe_loader = accelerator.prepare(make_loader(train_probe, batch_size, collate_fn))
        held_out = preference_metrics(model, eval_loader, accelerator, config.eval_max_batches)
        training = preference_metrics(model, probe_loader, accelerator, config.eval_max_batches)
        return {
            "loss": held_out.pop("loss"),
            **{f"eval_{key}": value for key, value in held_out.items()},
            **{f"train_pairs_{key}": value for key, value in training.items()},
        }

    return evaluate


# ----------------------------------------------------------------------------------------------
# finetune-dpo
def read_pairs(args: DPOOptions, tokenizer) -> tuple[datasets.Dataset, int]:
    """The records of `--data` as checked preference pairs (ties skipped with `--skip-identical`),
    tokenized and cut to the token budget."""
    records = read_instruction_records(args.data, split=args.split, encoding=args.encoding, errors=args.encoding_errors)
    if not records:
        raise BadInput(f"{args.data!r} holds no records; pass preference records with chosen and rejected answers.")
    skipped = set(identical_pairs(records)) if args.skip_identical else set()
    if skipped:
        logger.warning(f"Skipped {len(skipped)} records whose chosen and rejected answers are the same: {sorted(skipped)}.")
    pairs = [to_pair(record, index, args.data) for index, record in enumerate(records) if index not in skipped]
    max_length = max_length_for(args.model, args.max_length, tokenizer)
    return tokenize_pairs(tokenizer, pairs, max_length), max_length


def dpo_factory(args: DPOOptions, state):
    """What the trainer calls, in its build context, to build the model: the policy (the model, or
    its LoRA adapters) and the reference in one `DPOModel`; and the save's step that writes the
    policy's generation config (an adapter folder gets it too)."""
    built = {}

    def build() -> DPOModel:
        policy = load_pretrained(ScratchGPTForCausalLM.from_pretrained, args.model, trust_remote_code=args.trust_remote_code)
        disable_dropout(policy)
        built["policy"] = policy = make_trainable(policy, args)
        state.print(describe_trainable(policy))
        return DPOModel(policy, beta=args.beta)

    def write_generation_config(folder: Path) -> None:
        built["policy"].generation_config.save_pretrained(folder)

    return build, write_generation_config


def finetune_dpo(args: DPOOptions) -> dict:
    """The whole command; returns its metrics."""
    config = args.training()
    if isinstance(parallel.choose(config.fsdp), parallel.FSDP2):  # the reference model is not sharded yet
        raise BadInput("finetune-dpo does not run under FSDP yet; launch it without --fsdp and the FSDP config (DDP works).")
    check_output_dir(config, inputs=[args.model, args.data])  # before any work: never over an input
    state = process_state()
    tokenizer = load_base_tokenizer(args.model, args.trust_remote_code)

    # 1-2. records -> pairs -> tokens, all checked before the model loads
    rows, max_length = read_pairs(args, tokenizer)
    train_set, val_set = hold_out(rows, args.val_fraction, args.seed, "pairs")
    # as many training pairs as held-out ones, measured like them
    train_probe = train_set.select(range(min(len(val_set), len(train_set))))
    state.print(f"{len(train_set)} training and {len(val_set)} held-out pairs")

    # 3. the loop builds the policy and the reference
    set_seed(args.seed)
    build_model, write_generation_config = dpo_factory(args, state)
    collate_fn = PreferenceCollator(tokenizer.pad_token_id)
    metrics = train(
        build_model,
        train_set,
        val_set,
        config,
        collate_fn=collate_fn,
        evaluate_fn=evaluate_with_training_pairs(train_probe, collate_fn, config),
        tokenizer=tokenizer,
        final_dir=config.output_dir,
        on_save=card_writer(args, "dpo", extra=write_generation_config),
        merge_adapters=args.save_merged,
        seq_len=max_length,
    )
    state.print(
        f"held-out DPO loss {metrics['initial_eval_loss']:.4f} -> {metrics['eval_loss']:.4f}, "
        f"reward margin {metrics['initial_eval_reward_margin']:.4f} -> {metrics['eval_reward_margin']:.4f}, "
        f"reward accuracy {metrics['initial_eval_reward_accuracy']:.2%} -> {metrics['eval_reward_accuracy']:.2%}"
    )
    state.print(f"saved to {config.output_dir}")
    return metrics
