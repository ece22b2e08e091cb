"""One training loop, on `accelerate`, for every head: pre-training, classification, instructions.

    from scratch_gpt.training.loop import TrainingConfig, train

    metrics = train(model, train_dataset, eval_dataset, TrainingConfig(output_dir="runs/x", max_steps=500),
                    test_dataset=None, collate_fn=None, evaluate_fn=None, tokenizer=None,
                    final_dir=None, on_save=None, merge_adapters=False)

- `model` is any `nn.Module` whose `model(**batch)` returns an object with `.loss` (every HF model
  given `labels`). Only parameters with `requires_grad` are optimized (LoRA just works).
- `train_dataset` / `eval_dataset` / `test_dataset` are map-style datasets (a `datasets.Dataset`,
  a list, a torch `Dataset`; the training set may also be an `IterableDataset`, read in order);
  `collate_fn` turns a list of rows into a dict of tensors (default: stack each column). The
  evaluation and test sets may be None.
- `evaluate_fn(model, eval_dataloader, accelerator) -> dict[str, float]` adds metrics (accuracy...)
  to each evaluation; the loss (plus perplexity and, with `config.bytes_per_token`, bits per byte)
  is always measured, by the loop, or by `evaluate_fn` in the same pass when it returns `loss`.
  The test set, when given, is evaluated once at the end, its metrics prefixed `test_`.
- `tokenizer` + `config.sample_prompts`: sample generations are printed at each evaluation.
- `final_dir`: the trained model is saved there by `save_model`, the one save path of every
  command (see there); `on_save(folder, metrics)` adds files (a model card) before it appears,
  on the main process; `before_save(model)` runs first on every process (work that needs the
  trained model, such as generating: under FSDP each process holds a slice, all must take part).
- FSDP (`config.fsdp` or an accelerate FSDP config, more than one process): the model is sharded
  by `sharding.shard_model` instead of copied to each device; see `sharding.py`.
- Returns a dict of final metrics: `step`, `tokens`, `train_loss`, `eval_loss`, `perplexity`,
  `bits_per_byte` (when known), the `evaluate_fn` metrics, `runtime_s`, and the metrics of the
  evaluation before the first step, prefixed `initial_` (with `eval_at_start`).
- Raises `TrainingDiverged` when the loss becomes NaN or infinite; the last good checkpoint stays.

`train` reads as its steps: `build` (accelerator, loaders, optimizer, schedule), `restore` (from
a checkpoint), `run_epoch` (micro-batches; after each optimizer step `log_progress`, `evaluate`,
`checkpoint`), then the final evaluation and `save_model`. What it writes in `config.output_dir`
(main process only): `metrics.jsonl`, `loss_curve.png`, TensorBoard logs in `tensorboard/` when
installed, and `checkpoints/step-XXXXXXXX/` every `save_every` steps (see `checkpoints.py`);
`resume=True` continues from the newest complete one, so an interrupted run ends with the same
weights as an uninterrupted one. The same code runs on one CPU and under `accelerate launch` on
many GPUs or nodes.
"""

import copy
import inspect
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Callable

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import DataLoaderConfiguration, patch_environment, set_seed
from torch.utils.data import DataLoader, IterableDataset, Sampler
from tqdm.auto import tqdm

from scratch_gpt.args import TrainingConfig
from scratch_gpt.errors import BadInput, OutputExists, RunFailed
from scratch_gpt.io_utils import (
    atomic_directory,
    check_free_space,
    check_output,
    check_writable,
    mark_output,
)
from scratch_gpt.training import sharding
from scratch_gpt.training.checkpoints import (
    checkpoint_dirs,
    checkpoint_name,
    load_newest_checkpoint,
    model_signature,
    read_checkpoint_state,
    save_checkpoint,
)
from scratch_gpt.training.metrics import (
    MetricsLog,
    Throughput,
    flops_per_token,
    peak_flops,
    use_tensorboard,
)


class TrainingDiverged(RunFailed):
    """The training loss became NaN or infinite."""


def bf16_supported() -> bool:
    """Whether the device training will run on computes in bf16: the GPU's own answer, or on CPU
    whether oneDNN has bf16 kernels (AVX512-BF16 or AMX; elsewhere bf16 would only be emulated)."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return torch.ops.mkldnn._is_mkldnn_bf16_supported()


def cpu_processes() -> bool:
    """True in a process that `accelerate launch --multi_gpu` started on a machine without a GPU.

    The launcher resets ACCELERATE_USE_CPU, and accelerate then sets up no process group at all;
    telling it `cpu=True` gives the gloo backend, so the same command works on CPU (and in CI).
    """
    return not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1


def world_size() -> int:
    """How many processes `accelerate launch` (or torchrun) started; 1 without a launcher."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def per_process_batch_size(config: TrainingConfig) -> int:
    """`batch_size`, or with `global_batch_size` its share per process and accumulation step;
    ValueError when the processes cannot split it evenly (checked before any work)."""
    if config.global_batch_size is None:
        return config.batch_size
    share = world_size() * config.gradient_accumulation_steps
    if config.global_batch_size % share:
        raise BadInput(
            f"--global-batch-size {config.global_batch_size} does not split evenly over {world_size()} processes x "
            f"{config.gradient_accumulation_steps} accumulation steps; make it a multiple of {share} or launch other process counts."
        )
    return config.global_batch_size // share


def check_precision(config: TrainingConfig) -> None:
    """bf16 only where the device computes in it (checked before any work)."""
    if config.mixed_precision == "bf16" and not bf16_supported():
        raise BadInput(
            "--mixed-precision bf16 needs bf16 support, which this machine's "
            f"{'GPU' if torch.cuda.is_available() else 'CPU'} lacks; use --mixed-precision no"
            f"{' (or fp16)' if torch.cuda.is_available() else ''}."
        )


def check_fsdp_options(config: TrainingConfig) -> None:
    """The options the sharded loop does not support, as one sentence each (before any work)."""
    check_precision(config)
    if not sharding.fsdp_enabled(config.fsdp):
        return
    if config.mixed_precision == "fp16":
        raise BadInput("FSDP trains in bf16 or fp32 here (fp16 would need a sharded gradient scaler); use --mixed-precision bf16.")
    if config.compile:
        raise BadInput("--compile is not supported with FSDP yet; drop --compile or train without FSDP.")


def process_state() -> PartialState:
    """This process' place among the launched ones (create it before any other accelerate object)."""
    return PartialState(cpu=cpu_processes())


# ----------------------------------------------------------------------------------------------
# Building blocks: optimizer, schedule, data order.


def build_optimizer(model: torch.nn.Module, config: TrainingConfig) -> torch.optim.AdamW:
    """AdamW on the trainable parameters; no weight decay on biases, norms and embeddings, unless
    `config.weight_decay_all` (the book's `torch.optim.AdamW(model.parameters(), weight_decay=0.1)`)."""
    embedding_params = {id(p) for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters()}
    decay, no_decay, seen = [], [], set()
    for param in model.parameters():
        if not param.requires_grad or id(param) in seen:
            continue
        seen.add(id(param))
        exempt = (param.ndim < 2 or id(param) in embedding_params) and not config.weight_decay_all
        (no_decay if exempt else decay).append(param)
    if not seen:
        raise BadInput("The model has no parameter with requires_grad=True; there is nothing to train.")
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    kwargs = dict(lr=config.learning_rate, betas=config.adam_betas, eps=config.adam_eps)
    try:
        return torch.optim.AdamW(groups, fused=True, **kwargs)
    except RuntimeError:  # a device without the fused kernel
        return torch.optim.AdamW(groups, foreach=True, **kwargs)


def lr_factor(step: int, *, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    """Linear warmup to 1, then cosine decay to `min_lr_ratio` at `total_steps`."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class EpochShuffleSampler(Sampler):
    """A new permutation each epoch, fixed by (seed, epoch): the data order survives a restart.

    The loop sets `epoch` before iterating; no global random state is consumed.
    """

    def __init__(self, num_items: int, seed: int, shuffle: bool = True):
        self.num_items, self.seed, self.shuffle, self.epoch = num_items, seed, shuffle, 0

    def __len__(self):
        return self.num_items

    def __iter__(self):
        if not self.shuffle:
            return iter(range(self.num_items))
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.num_items, generator=generator).tolist())


def default_collate(rows: list[dict]) -> dict[str, torch.Tensor]:
    """Stack each column of equally long rows into a tensor."""
    return {key: torch.as_tensor([row[key] for row in rows]) for key in rows[0]}


def make_loader(dataset, batch_size, collate_fn, sampler=None, drop_last=False, seed=0) -> DataLoader:
    # A private generator: creating the iterator must not draw from the global RNG (resume exactness).
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=collate_fn or default_collate,
        drop_last=drop_last,
        generator=torch.Generator().manual_seed(seed),
    )


# ----------------------------------------------------------------------------------------------
# Evaluation and samples.


def loss_kwargs(model, accelerator: Accelerator, config: TrainingConfig) -> dict:
    """What `model(**batch)` gets besides the batch: `loss_chunk_size` when the model's forward
    takes it (ScratchGPT's causal LM: the loss without the full logits). PEFT wrappers,
    classifiers and other models get nothing."""
    unwrapped = accelerator.unwrap_model(model, keep_torch_compile=False)
    if config.loss_chunk_size and "loss_chunk_size" in inspect.signature(type(unwrapped).forward).parameters:
        return {"loss_chunk_size": config.loss_chunk_size}
    return {}


@torch.no_grad()
def evaluate_loss(model, dataloader, accelerator: Accelerator, max_batches: int | None, **forward_kwargs) -> float:
    """Mean loss over the evaluation batches (gathered over processes)."""
    total, count = torch.zeros((), device=accelerator.device), torch.zeros((), device=accelerator.device)
    for index, batch in enumerate(dataloader):
        if max_batches is not None and index >= max_batches:
            break
        loss = model(**batch, **forward_kwargs).loss.float()
        rows = next(iter(batch.values())).shape[0]
        total += loss * rows
        count += rows
    total, count = accelerator.reduce(torch.stack([total, count]), reduction="sum")
    return (total / count).item()


def measure(model, dataloader, accelerator, config: TrainingConfig, evaluate_fn) -> dict[str, float]:
    """Loss and the `evaluate_fn` metrics of `model` on one split; for a language model's loss (next
    token cross-entropy) also perplexity and bits per byte, which mean nothing for a class or a DPO loss."""
    model.eval()
    with torch.no_grad():
        extra = dict(evaluate_fn(model, dataloader, accelerator)) if evaluate_fn is not None else {}
        loss = extra.pop("loss", None)
        language_model = accelerator.unwrap_model(model).can_generate()  # a classifier's or DPO's loss is not
        if loss is None:
            loss = evaluate_loss(model, dataloader, accelerator, config.eval_max_batches, **loss_kwargs(model, accelerator, config))
    model.train()
    metrics = {"eval_loss": loss}
    if language_model:
        metrics["perplexity"] = math.exp(min(loss, 50.0))
        if config.bytes_per_token:
            metrics["bits_per_byte"] = loss / math.log(2) / config.bytes_per_token
    return {**metrics, **extra}


@torch.no_grad()
def generate_samples(model, tokenizer, prompts, max_new_tokens: int, device) -> list[str]:
    """Sample a continuation of each prompt (top-k 40, temperature 0.8), within the model's context."""
    model.eval()
    context = getattr(model.config, "max_position_embeddings", None) or 10**9
    texts = []
    for prompt in prompts:
        input_ids = tokenizer(prompt, return_tensors="pt").input_ids[:, -(context // 2) :].to(device)
        output = model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=min(max_new_tokens, context - input_ids.shape[1]),
            do_sample=True,
            top_k=40,
            temperature=0.8,
            pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
            synced_gpus=sharding.is_sharded(model),  # under FSDP every process runs each step, until all are done
        )
        texts.append(tokenizer.decode(output[0], skip_special_tokens=True))
    model.train()
    return texts


# ----------------------------------------------------------------------------------------------
# A run: what `build` sets up and the steps below advance.


@dataclass
class Position:
    """Where a run is; saved in every checkpoint, so a resumed run continues from the same batch."""

    step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0
    tokens: int = 0


@dataclass
class Run:
    config: TrainingConfig
    accelerator: Accelerator
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    train_loader: DataLoader
    eval_loader: DataLoader | None
    test_loader: DataLoader | None
    train_eval_loader: DataLoader | None  # the training data in order, for `train_eval_loss`
    sampler: EpochShuffleSampler | None
    total_steps: int
    batches_per_epoch: int | None  # per process; None for a stream
    output_dir: Path
    evaluate_fn: Callable | None = None
    tokenizer: Any = None
    position: Position = field(default_factory=Position)
    log: MetricsLog | None = None
    progress: tqdm | None = None
    throughput: Throughput = field(default_factory=Throughput)
    flops_per_token: float = 0.0
    peak_flops: float | None = None
    last_checkpoint: str | None = None
    results: dict = field(default_factory=dict)
    # the training loss since the last log, summed on the device (no host sync per step)
    loss_sum: torch.Tensor | None = None
    loss_count: int = 0
    forward_kwargs: dict = field(default_factory=dict)  # see loss_kwargs
    pending_tokens: int = 0  # tokens of the micro-batches of the optimizer step in progress
    sharded: bool = False  # FSDP: model and optimizer state are slices (sharding.py)


def check_output_dir(config: TrainingConfig, inputs=(), replaces: bool = True) -> Path:
    """A command's check of its output folder before any work: not an input nor containing one,
    ours or `--overwrite` (see `io_utils.check_output`), and no other run's checkpoints in it."""
    per_process_batch_size(config)
    check_fsdp_options(config)
    output_dir = check_output(config.output_dir, inputs=inputs, overwrite=config.overwrite, replaces=replaces)
    check_no_other_run(config, output_dir)
    return output_dir


def check_no_other_run(config: TrainingConfig, output_dir: Path) -> None:
    if config.save_every and not config.resume and checkpoint_dirs(output_dir):
        raise OutputExists(
            f"The output folder {str(output_dir)!r} already holds checkpoints of another run; "
            "resume it (resume=True, --resume) or choose another output folder."
        )


def new_accelerator(config: TrainingConfig, output_dir: Path, tensorboard: bool) -> Accelerator:
    """An Accelerator with this run's precision, accumulation and tracker."""
    # Each run chooses its own precision and plugins, so the state a previous run in this process
    # left behind is reset (accelerate keeps it in a singleton and has no public reset; the
    # process group of PartialState is kept).
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()
    # The loop shards the model itself (sharding.py): accelerate, told of an FSDP config, would
    # wrap the model again; it runs as plain multi-process here.
    with patch_environment(ACCELERATE_USE_FSDP="false"):
        return Accelerator(
            cpu=cpu_processes(),
            gradient_accumulation_steps=config.gradient_accumulation_steps,
            mixed_precision=config.mixed_precision,
            dynamo_backend="inductor" if config.compile else None,
            log_with="tensorboard" if tensorboard else None,
            project_dir=str(output_dir),
            step_scheduler_with_optimizer=False,  # one schedule step per optimizer step, whatever the process count
            dataloader_config=DataLoaderConfiguration(even_batches=True),
        )


def build(model, train_dataset, eval_dataset, test_dataset, config: TrainingConfig, collate_fn) -> Run:
    """Step 1: the accelerator, the data loaders, the optimizer and the schedule, all prepared."""
    config = replace(config, batch_size=per_process_batch_size(config))
    check_fsdp_options(config)
    sharded = sharding.fsdp_enabled(config.fsdp)
    output_dir = check_writable(config.output_dir)
    check_no_other_run(config, output_dir)
    tensorboard = use_tensorboard(config.report_to)
    accelerator = new_accelerator(config, output_dir, tensorboard)
    set_seed(config.seed)
    streaming = isinstance(train_dataset, IterableDataset)  # read in order, once per epoch; no length
    if streaming and not config.max_steps:
        raise BadInput("A streamed training set has no length; set max_steps (--max-steps).")
    global_batch = config.batch_size * accelerator.num_processes
    if not streaming and len(train_dataset) < global_batch:
        raise BadInput(
            f"The training set has {len(train_dataset)} examples, fewer than one global batch ({global_batch}); "
            "lower batch_size or add data."
        )

    sampler = None if streaming else EpochShuffleSampler(len(train_dataset), config.seed, config.shuffle)
    train_loader = make_loader(train_dataset, config.batch_size, collate_fn, sampler, drop_last=True, seed=config.seed)
    eval_size = config.eval_batch_size or config.batch_size
    eval_loader, test_loader = (
        make_loader(data, eval_size, collate_fn, seed=config.seed) if data is not None and len(data) > 0 else None
        for data in (eval_dataset, test_dataset)
    )

    if config.gradient_checkpointing:
        if not getattr(model, "supports_gradient_checkpointing", False):
            raise BadInput(f"{type(model).__name__} does not support gradient checkpointing; drop --gradient-checkpointing.")
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})  # transformers >= 5.24
    if sharded:  # each process keeps its slices only; new weights are initialised after sharding
        sharding.shard_model(model, accelerator.device, seed=config.seed, mixed_precision=config.mixed_precision)
        total = sum(p.numel() for p in model.parameters())
        print(f"FSDP: process {accelerator.process_index} holds {sharding.local_numel(model):,} of {total:,} parameters", flush=True)
    else:
        model.to(accelerator.device)
    model.train()
    optimizer = build_optimizer(model, config)
    train_loader = accelerator.prepare(train_loader)  # sharded first: its length fixes the schedule
    batches_per_epoch = None if streaming else len(train_loader)
    total_steps = config.max_steps or config.num_epochs * math.ceil(batches_per_epoch / config.gradient_accumulation_steps)
    schedule = partial(lr_factor, warmup_steps=config.warmup_steps, total_steps=total_steps, min_lr_ratio=config.min_lr_ratio)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    if sharded:  # accelerate would wrap the sharded model in DDP; model and optimizer stay as they are
        scheduler = accelerator.prepare(scheduler)
    else:
        model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    eval_loader, test_loader = (accelerator.prepare(loader) if loader is not None else None for loader in (eval_loader, test_loader))
    train_eval_loader = None
    if config.train_eval_batches:  # unshuffled: "the first N training batches" are the same ones at every evaluation
        train_eval_loader = accelerator.prepare(make_loader(train_dataset, eval_size, collate_fn, seed=config.seed))
    if tensorboard:
        hyperparameters = {k: v for k, v in asdict(config).items() if isinstance(v, (int, float, str, bool))}
        accelerator.init_trackers("tensorboard", config=hyperparameters)

    first = next(iter(train_dataset)) if streaming else train_dataset[0]
    seq_len = len(first["input_ids"]) if "input_ids" in first else 1
    return Run(
        config=config,
        accelerator=accelerator,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        train_loader=train_loader,
        eval_loader=eval_loader,
        test_loader=test_loader,
        train_eval_loader=train_eval_loader,
        sampler=sampler,
        total_steps=total_steps,
        batches_per_epoch=batches_per_epoch,
        output_dir=output_dir,
        flops_per_token=flops_per_token(accelerator.unwrap_model(model), seq_len),
        peak_flops=config.peak_flops or peak_flops(accelerator.device, config.mixed_precision),
        loss_sum=torch.zeros((), device=accelerator.device),
        sharded=sharded,
        forward_kwargs=loss_kwargs(model, accelerator, config),
    )


def restore(run: Run) -> None:
    """Step 2: with `resume`, load the newest checkpoint and continue from its position."""
    if run.config.resume:
        signature = model_signature(run.accelerator.unwrap_model(run.model, keep_torch_compile=False))
        shards = (run.model, run.optimizer) if run.sharded else None
        state = load_newest_checkpoint(run.accelerator, run.output_dir, signature, shards)
        run.position = Position(**{key: state[key] for key in ("step", "epoch", "batches_in_epoch", "tokens")})
        run.last_checkpoint = checkpoint_name(run.position.step)
    if run.accelerator.is_main_process:
        mark_output(run.output_dir, run=True)  # the run folder is ours from here on: a later run may replace what is in it
    run.log = MetricsLog(run.accelerator, run.output_dir, run.position.step if run.config.resume else None)


def run_epoch(run: Run) -> None:
    """Step 3: the micro-batches of one pass over the data, from the current position; it stops
    early when the last step is done."""
    accelerator, position = run.accelerator, run.position
    if run.sampler is not None:
        run.sampler.epoch = position.epoch
    run.train_loader.set_epoch(position.epoch)
    skip = position.batches_in_epoch
    batches = accelerator.skip_first_batches(run.train_loader, skip) if skip else run.train_loader
    for batch in batches:
        with accelerator.accumulate(run.model):
            if run.sharded:  # reduce the gradients only on the last micro-batch of a step
                run.model.set_requires_gradient_sync(accelerator.sync_gradients)
            loss = run.model(**batch, **run.forward_kwargs).loss
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                if run.config.max_grad_norm:
                    accelerator.clip_grad_norm_(run.model.parameters(), run.config.max_grad_norm)
                run.optimizer.step()
                run.optimizer.zero_grad(set_to_none=True)
        position.batches_in_epoch += 1
        run.loss_sum += loss.detach().float()
        run.loss_count += 1
        run.pending_tokens += batch["input_ids"].numel() * accelerator.num_processes if "input_ids" in batch else 0
        if accelerator.sync_gradients:
            after_optimizer_step(run)
            if position.step >= run.total_steps:
                return
    if position.batches_in_epoch == 0:  # a stream shorter than one global batch would loop for ever
        raise BadInput(
            f"The training data ran out before a single batch of {run.config.batch_size} per process "
            f"({accelerator.num_processes} processes); add data or lower the batch size."
        )
    position.epoch, position.batches_in_epoch = position.epoch + 1, 0


def after_optimizer_step(run: Run) -> None:
    """Count the step, then log, evaluate and checkpoint when they are due."""
    config, position = run.config, run.position
    run.scheduler.step()
    position.step += 1
    position.tokens += run.pending_tokens
    run.throughput.add(run.pending_tokens)
    run.pending_tokens = 0
    run.progress.update(1)
    if position.step % config.log_every == 0 or position.step == run.total_steps:
        log_progress(run)
    paused = time.perf_counter()  # evaluation and checkpoints do not count towards tokens/s
    if run.eval_loader is not None and config.eval_every and position.step % config.eval_every == 0:
        if position.step < run.total_steps:  # the last evaluation follows the loop
            run.results.update(evaluate(run))
    if config.save_every and position.step % config.save_every == 0:
        checkpoint(run)
    run.throughput.exclude(time.perf_counter() - paused)


def log_progress(run: Run) -> None:
    """The mean training loss since the last log (over every process), tokens/s and MFU."""
    mean_loss = run.accelerator.reduce(run.loss_sum / run.loss_count, reduction="mean")
    check_finite(run, mean_loss)
    train_loss = mean_loss.item()
    tokens_per_s = run.throughput.rate()
    metrics = {"train_loss": train_loss, "lr": run.scheduler.get_last_lr()[0], "tokens_per_s": tokens_per_s}
    postfix = {"loss": f"{train_loss:.3f}", "tok_s": f"{tokens_per_s:,.0f}"}
    if run.peak_flops:
        metrics["mfu"] = tokens_per_s * run.flops_per_token / (run.peak_flops * run.accelerator.num_processes)
        postfix["mfu"] = f"{metrics['mfu']:.1%}"
    run.log.log(run.position.step, metrics)
    run.progress.set_postfix(postfix)
    run.results["train_loss"] = train_loss
    run.loss_sum.zero_()
    run.loss_count = 0


def check_finite(run: Run, loss: torch.Tensor) -> None:
    """Stop with `TrainingDiverged` on a NaN or infinite loss (reduced over processes, so all stop)."""
    if not torch.isfinite(loss).item():
        kept = f"the last good checkpoint is {run.last_checkpoint}" if run.last_checkpoint else "no checkpoint was written"
        raise TrainingDiverged(
            f"The training loss became {loss.item()} before step {run.position.step}; training stopped and {kept}. "
            "Lower the learning rate, raise warmup_steps or use bf16 instead of fp16."
        )


def evaluate(run: Run) -> dict[str, float]:
    """Step 4: the validation metrics now, logged and printed (with samples when asked for)."""
    metrics = measure(run.model, run.eval_loader, run.accelerator, run.config, run.evaluate_fn)
    if run.train_eval_loader is not None:  # the book's training loss: no dropout, the first N batches
        run.model.eval()
        metrics["train_eval_loss"] = evaluate_loss(run.model, run.train_eval_loader, run.accelerator, run.config.train_eval_batches)
        run.model.train()
    run.results["best_eval_loss"] = min(metrics["eval_loss"], run.results.get("best_eval_loss", math.inf))
    run.log.log(run.position.step, metrics)
    run.accelerator.print(f"step {run.position.step}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    model = run.accelerator.unwrap_model(run.model)
    if run.tokenizer is not None and run.config.sample_prompts and hasattr(model, "generate"):
        config = run.config
        with sharding.gathered_root(model):  # under FSDP every process generates, in step
            samples = generate_samples(model, run.tokenizer, config.sample_prompts, config.sample_max_new_tokens, run.accelerator.device)
        for sample in samples:
            run.accelerator.print(f"  sample: {sample!r}")
    return metrics


def compare_with_book(run: Run) -> None:
    """Print each published figure beside ours ("book: X, ours: Y") and log both (`book_*`, `ours_*`)."""
    record = {}
    for name, book in run.config.book_figures.items():
        ours = run.results.get(name)
        run.accelerator.print(f"{name}: book: {book:.4g}, ours: " + ("not measured" if ours is None else f"{ours:.4g}"))
        record[f"book_{name}"] = book
        if ours is not None:
            record[f"ours_{name}"] = ours
    run.log.log(run.position.step, record)


def check_room_to_save(run: Run, final_dir) -> None:
    """Before the first step: the disk must hold what the run will write (the model and the
    checkpoints that exist at once), so that a full disk stops the run before any work, not at its end."""
    parameters = list(run.accelerator.unwrap_model(run.model).parameters())  # tied weights counted once
    weights = sum(p.numel() * p.element_size() for p in parameters)
    moments = sum(2 * 4 * p.numel() for p in parameters if p.requires_grad)  # AdamW's two fp32 moments
    saves = run.total_steps // run.config.save_every if run.config.save_every else 0
    at_once = min(saves, run.config.keep_checkpoints + 1)  # a new checkpoint is written before the oldest goes
    check_free_space(run.output_dir, (weights if final_dir else 0) + at_once * (weights + moments), "output folder")


def checkpoint(run: Run) -> None:
    """Step 5: save the full training state (model, optimizer, schedule, RNG, position)."""
    check_finite(run, run.accelerator.reduce(run.loss_sum.clone(), reduction="sum"))
    position = run.position
    epoch_done = position.batches_in_epoch == run.batches_per_epoch
    state = asdict(position) | ({"epoch": position.epoch + 1, "batches_in_epoch": 0} if epoch_done else {})
    state["sharded"] = run.sharded
    state["model"] = model_signature(run.accelerator.unwrap_model(run.model, keep_torch_compile=False))
    shards = (run.model, run.optimizer) if run.sharded else None
    save_checkpoint(run.accelerator, run.output_dir, state, run.config.keep_checkpoints, shards)
    run.last_checkpoint = checkpoint_name(position.step)


def train(
    model: torch.nn.Module,
    train_dataset,
    eval_dataset,
    config: TrainingConfig,
    *,
    test_dataset=None,
    collate_fn: Callable[[list], dict] | None = None,
    evaluate_fn: Callable[..., dict[str, float]] | None = None,
    tokenizer=None,
    final_dir: str | os.PathLike | None = None,
    on_save: Callable[[Path, dict], None] | None = None,
    before_save: Callable[[torch.nn.Module], None] | None = None,
    merge_adapters: bool = False,
) -> dict[str, Any]:
    """Train `model` on `train_dataset`; see the module docstring for the contract."""
    if final_dir is not None:
        check_writable(final_dir, "model folder")
        if Path(final_dir).resolve() == Path(config.output_dir).resolve():
            # The model folder is the run folder (fine-tuning): the run works beside it until the
            # save, so a previous model there stays whole, logs included, until it is replaced.
            config = replace(config, output_dir=str(work_folder(final_dir)))
    run = build(model, train_dataset, eval_dataset, test_dataset, config, collate_fn)
    check_room_to_save(run, final_dir)
    run.evaluate_fn, run.tokenizer = evaluate_fn, tokenizer
    restore(run)
    if config.eval_at_start and run.eval_loader is not None and run.position.step == 0:
        run.results.update({f"initial_{k}": v for k, v in evaluate(run).items()})

    start = time.perf_counter()
    show = config.progress and run.accelerator.is_local_main_process
    run.progress = tqdm(total=run.total_steps, initial=run.position.step, desc="training", disable=not show, dynamic_ncols=True)
    while run.position.step < run.total_steps:
        run_epoch(run)
    run.progress.close()

    if run.eval_loader is not None:
        run.results.update(evaluate(run))
    if run.test_loader is not None:
        test = measure(run.model, run.test_loader, run.accelerator, config, evaluate_fn)
        run.results.update({f"test_{k.removeprefix('eval_')}": v for k, v in test.items()})
    run.results.update(step=run.position.step, tokens=run.position.tokens, runtime_s=time.perf_counter() - start)
    if config.book_figures:
        compare_with_book(run)
    run.accelerator.wait_for_everyone()
    if run.accelerator.is_main_process:
        run.log.plot(run.output_dir / "loss_curve.png")
    if before_save is not None:  # every process: under FSDP even generating is collective
        before_save(run.accelerator.unwrap_model(run.model, keep_torch_compile=False))
    if final_dir is not None:
        save_model(
            run.accelerator,
            run.model,
            final_dir,
            tokenizer=tokenizer,
            on_save=on_save,
            metrics=run.results,
            run_dir=run.output_dir,
            merge_adapters=merge_adapters,
        )
        if run.accelerator.is_main_process and run.output_dir == work_folder(final_dir):
            shutil.rmtree(run.output_dir, ignore_errors=True)  # its logs are in the model folder now
    run.accelerator.end_training()
    return run.results


# ----------------------------------------------------------------------------------------------
# The one save path of every command.

def work_folder(model_folder) -> Path:
    """Where a run whose model folder is its output folder keeps its logs and checkpoints until the save."""
    model_folder = Path(model_folder)
    return model_folder.parent / f".{model_folder.name}.run"


RUN_FILES = ("loss_curve.png", "metrics.jsonl", "tensorboard")  # what a model folder takes from its run


def save_model(
    accelerator: Accelerator,
    model,
    folder,
    *,
    tokenizer=None,
    on_save: Callable[[Path, dict], None] | None = None,
    metrics: dict | None = None,
    run_dir: Path | None = None,
    merge_adapters: bool = False,
) -> None:
    """Write the (possibly wrapped, compiled or sharded) `model` as a `save_pretrained` folder.

    Every process calls it (gathering a sharded model is collective); the main process writes
    into a temporary folder that replaces `folder` in one rename, so a crash leaves the previous
    folder or none. The folder holds the weights (safetensors, `_orig_mod.` of torch.compile
    stripped; with `merge_adapters` LoRA adapters are folded in, else a PEFT model saves only its
    adapter), the config and remote code, `tokenizer`, `metrics.json`, the run's loss curve (and,
    when `folder` is the run folder itself, its `metrics.jsonl` and TensorBoard logs), then
    whatever `on_save(tmp_folder, metrics)` adds.
    """
    if sharding.is_sharded(model):  # the full weights on the main process' CPU, in an ordinary model
        full = sharding.full_state_dict(model)  # collective
        unwrapped = sharding.unsharded_copy(model, full) if accelerator.is_main_process else None
        state_dict = unwrapped.state_dict() if unwrapped is not None and not merge_adapters else None  # head tied again
    else:
        state_dict = None if merge_adapters else accelerator.get_state_dict(model)  # collective under DeepSpeed
        unwrapped = accelerator.unwrap_model(model, keep_torch_compile=False)
    if state_dict is not None:
        state_dict = {name.removeprefix("_orig_mod."): tensor for name, tensor in state_dict.items()}
    folder = Path(folder)
    if accelerator.is_main_process:
        with atomic_directory(folder) as tmp:
            if merge_adapters:  # on a copy: the trained model stays as it is for whatever follows
                copy.deepcopy(unwrapped).merge_and_unload().save_pretrained(tmp)
            else:
                unwrapped.save_pretrained(tmp, state_dict=state_dict)
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)
            (tmp / "metrics.json").write_text(json.dumps(metrics or {}, indent=2) + "\n")
            if run_dir is not None:
                same_folder = Path(run_dir).resolve() in (folder.resolve(), work_folder(folder).resolve())
                for name in RUN_FILES if same_folder else RUN_FILES[:1]:
                    source = Path(run_dir) / name
                    if source.is_dir():
                        shutil.copytree(source, tmp / name)
                    elif source.is_file():
                        shutil.copy2(source, tmp / name)
            if on_save is not None:
                on_save(tmp, dict(metrics or {}))
    accelerator.wait_for_everyone()


__all__ = [
    "TrainingConfig",
    "TrainingDiverged",
    "train",
    "save_model",
    "build_optimizer",
    "lr_factor",
    "process_state",
    "read_checkpoint_state",
]
