"""One training loop, on `accelerate`, for every head: pre-training, classification, instructions.

    from scratch_gpt.training.loop import TrainingConfig, train

    metrics = train(model, train_dataset, eval_dataset, TrainingConfig(output_dir="runs/x", max_steps=500))

- `model` is any `nn.Module` whose `model(**batch)` returns an object with `.loss` (every HF model
  given `labels`), or a zero-argument factory that builds one (`lambda: load_pretrained(...)`,
  with whatever wrapping the command adds), which the trainer calls inside its parallelism
  strategy's build context: so a command cannot build its model in the wrong place (under FSDP,
  on the meta device). A factory reads its weights from a folder unless it is wrapped as
  `NewModel(factory)` (new weights, initialised after sharding). Only parameters with
  `requires_grad` are optimized (LoRA just works).
- `train_dataset` / `eval_dataset` / `test_dataset` are map-style datasets (a `datasets.Dataset`,
  a list, a torch `Dataset`; the training set may also be an `IterableDataset`, read in order, which
  is each process' own share of a stream: see `own_shares`);
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
- `seq_len`: the context length of the training rows (pre-training's block size, a fine-tune's
  maximum length), for the FLOPs per token behind MFU; without it, the model's own count (a
  ScratchGPT counts its full context). The loop never reads it off the data.
- How the processes share the model (one process, DDP, or FSDP2 with `config.fsdp` or an accelerate
  FSDP config) is the strategy's: `parallel.py`.
- Returns a dict of final metrics: `step`, `tokens`, `train_loss`, `eval_loss`, `perplexity`,
  `bits_per_byte` (when known), the `evaluate_fn` metrics, `runtime_s`, and the metrics of the
  evaluation before the first step, prefixed `initial_` (with `eval_at_start`).
- Raises `TrainingDiverged` when the loss becomes NaN or infinite; the last good checkpoint stays.

`train` is `Trainer(...).fit(...)`, which reads as its steps: the constructor builds (strategy,
model, accelerator, loaders, optimizer, schedule), `restore` (from a checkpoint), `run_epoch`
(micro-batches; after each optimizer step `log_progress`, `evaluate`, `checkpoint`), then
`final_evaluation` and `save` (`save_model`). What it writes in `config.output_dir` (main process
only): `metrics.jsonl`, `loss_curve.png`, TensorBoard logs in `tensorboard/` when installed, and
`checkpoints/step-XXXXXXXX/` every `save_every` steps (see `checkpoints.py`); `resume=True`
continues from the newest complete one, so an interrupted run ends with the same weights as an
uninterrupted one. A map-style set resumes by skipping batches without reading them; a stream with a
`state_dict` (`data.PackedStream`, a `datasets.IterableDataset`) by loading each process' place in it,
saved with the checkpoint; another stream by reading its batches again up to the position. The same
code runs on one CPU and under `accelerate launch` on many GPUs or nodes.
"""

import copy
import inspect
import itertools
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, Callable

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import DataLoaderConfiguration, gather_object, patch_environment, send_to_device, set_seed
from torch.utils.data import DataLoader, IterableDataset, Sampler
from tqdm.auto import tqdm

from scratch_gpt.args import TrainingConfig
from scratch_gpt.errors import BadInput, OutputExists, RunFailed
from scratch_gpt.io_utils import atomic_directory, check_free_space, check_output, check_writable, mark_output
from scratch_gpt.training import parallel
from scratch_gpt.training.checkpoints import (
    checkpoint_dirs,
    checkpoint_name,
    load_newest_checkpoint,
    model_signature,
    read_checkpoint_state,
    save_checkpoint,
)
from scratch_gpt.training.metrics import MetricsLog, Throughput, flops_per_token, peak_flops, use_tensorboard
from scratch_gpt.training.parallel import NewModel, cpu_processes, world_size
from scratch_gpt.tokenizer import save_tokenizer
from scratch_gpt.training.run_config import check_resume_options, check_shared_output_dir, save_run_options, tokenizer_digest


class TrainingDiverged(RunFailed):
    """The training loss became NaN or infinite."""


def check_precision(config: TrainingConfig) -> None:
    """bf16 only where the device computes in it (checked before any work)."""
    if config.mixed_precision == "bf16" and not bf16_supported():
        raise BadInput(
            "--mixed-precision bf16 needs bf16 support, which this machine's "
            f"{'GPU' if torch.cuda.is_available() else 'CPU'} lacks; use --mixed-precision no"
            f"{' (or fp16)' if torch.cuda.is_available() else ''}."
        )


def bf16_supported() -> bool:
    """Whether the device training will run on computes in bf16: the GPU's own answer, or on CPU
    whether oneDNN has bf16 kernels (AVX512-BF16 or AMX; elsewhere bf16 would only be emulated)."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return torch.ops.mkldnn._is_mkldnn_bf16_supported()


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
    The loop sets `epoch` before iterating; no global random state is consumed."""

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
    """A loader with a private generator: creating its iterator must not draw from the global RNG (resume exactness)."""
    collate_fn, rng = collate_fn or default_collate, torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size, sampler=sampler, collate_fn=collate_fn, drop_last=drop_last, generator=rng)


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


def with_progress(dataloader, config: TrainingConfig, accelerator, max_batches: int | None = None):
    """The batches of an evaluation, under a bar that goes away when it is done (the `--no-progress` rule)."""
    total = len(dataloader) if max_batches is None else min(len(dataloader), max_batches)
    show = config.progress and accelerator.is_local_main_process
    return tqdm(dataloader, total=total, desc="evaluating", leave=False, disable=not show, dynamic_ncols=True)


def measure(model, dataloader, accelerator, config: TrainingConfig, evaluate_fn) -> dict[str, float]:
    """Loss and the `evaluate_fn` metrics of `model` on one split; for a language model's loss (next
    token cross-entropy) also perplexity and bits per byte, which mean nothing for a class or a DPO loss."""
    model.eval()
    with torch.no_grad():
        extra = {}
        if evaluate_fn is not None:
            extra = dict(evaluate_fn(model, with_progress(dataloader, config, accelerator), accelerator))
        loss = extra.pop("loss", None)
        language_model = accelerator.unwrap_model(model).can_generate()  # a classifier's or DPO's loss is not
        if loss is None:
            forward_kwargs = loss_kwargs(model, accelerator, config)
            batches = with_progress(dataloader, config, accelerator, config.eval_max_batches)
            loss = evaluate_loss(model, batches, accelerator, config.eval_max_batches, **forward_kwargs)
    model.train()
    metrics = {"eval_loss": loss}
    if language_model:
        metrics["perplexity"] = math.exp(min(loss, 50.0))
        if config.bytes_per_token:
            metrics["bits_per_byte"] = loss / math.log(2) / config.bytes_per_token
    return {**metrics, **extra}


@torch.no_grad()
def generate_samples(model, tokenizer, prompts, max_new_tokens: int, device, synced: bool = False) -> list[str]:
    """Sample a continuation of each prompt (top-k 40, temperature 0.8), within the model's context.
    `synced`: every process runs each step until all are done (a strategy's `generating` says when)."""
    model.eval()
    context = getattr(model.config, "max_position_embeddings", None) or 10**9
    pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    sampling = {"do_sample": True, "top_k": 40, "temperature": 0.8, "pad_token_id": pad_token_id, "synced_gpus": synced}
    texts = []
    for prompt in prompts:
        ids = tokenizer(prompt, return_tensors="pt").input_ids[:, -(context // 2) :].to(device)
        max_new = min(max_new_tokens, context - ids.shape[1])
        output = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new, **sampling)
        texts.append(tokenizer.decode(output[0], skip_special_tokens=True))
    model.train()
    return texts


# ----------------------------------------------------------------------------------------------
# The checks a command makes before any work, and the accelerator of a run.


def check_output_dir(config: TrainingConfig, inputs=(), replaces: bool = True) -> Path:
    """A command's check of its output folder before any work: not an input nor containing one,
    ours or `--overwrite` (see `io_utils.check_output`), and no other run's checkpoints in it.
    The options the run's parallelism strategy cannot train with fail here too."""
    per_process_batch_size(config)
    parallel.choose(config.fsdp).check(config)
    check_precision(config)
    output_dir = check_output(config.output_dir, inputs=inputs, overwrite=config.overwrite, replaces=replaces)
    check_no_other_run(config, output_dir)
    if config.resume:  # the run folder: the output folder, or the work folder beside a fine-tune's model folder
        check_resume_options(config.run_options, output_dir, work_folder(output_dir))
    return output_dir


def check_no_other_run(config: TrainingConfig, output_dir: Path) -> None:
    if config.save_every and not config.resume and checkpoint_dirs(output_dir):
        raise OutputExists(
            f"The output folder {str(output_dir)!r} already holds checkpoints of another run; "
            "resume it (resume=True, --resume) or choose another output folder."
        )


def new_accelerator(config: TrainingConfig, output_dir: Path, tensorboard: bool) -> Accelerator:
    """An Accelerator with this run's precision, accumulation and tracker."""
    # Each run chooses its own precision and plugins: the state a previous run in this process left
    # in accelerate's singleton is reset (the process group of PartialState is kept). Only the private
    # `_reset_state` does it (1.16, as accelerate's own tests); tests/test_training.py pins the versions.
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()
    # The strategy shards the model itself (parallel.py): accelerate, told of an FSDP config,
    # would wrap the model again; it runs as plain multi-process here.
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


# ----------------------------------------------------------------------------------------------
# The trainer: what the constructor builds, and the steps of `fit` that advance it.


@dataclass
class Position:
    """Where a run is; saved in every checkpoint, so a resumed run continues from the same batch. The
    place in the data is counted in examples over all processes, so that a run resumed on another
    number of processes (with the same global batch) continues with the examples that come next."""

    step: int = 0
    epoch: int = 0
    examples_in_epoch: int = 0
    tokens: int = 0


class Trainer:
    """One training run, `Trainer(model, ...).fit(final_dir=...)`: its steps are in the module docstring.
    How the processes share the model (placing, preparing, gradient sync, generating, saving,
    checkpoint slices) is the strategy's decision, never this class'."""

    def __init__(
        self,
        model: torch.nn.Module | Callable[[], torch.nn.Module],
        train_dataset,
        eval_dataset,
        config: TrainingConfig,
        *,
        test_dataset=None,
        collate_fn: Callable[[list], dict] | None = None,
        evaluate_fn: Callable[..., dict[str, float]] | None = None,
        tokenizer=None,
        seq_len: int | None = None,
    ):
        self.config = config = replace(config, batch_size=per_process_batch_size(config))
        self.strategy = parallel.choose(config.fsdp)
        self.strategy.check(config)
        check_precision(config)
        model = self.strategy.build(model)  # a factory: called in the strategy's build context
        self.output_dir = check_writable(config.output_dir)
        check_no_other_run(config, self.output_dir)
        self.tensorboard = use_tensorboard(config.report_to)
        self.accelerator = new_accelerator(config, self.output_dir, self.tensorboard)
        check_shared_output_dir(self.accelerator, self.output_dir)  # several machines: one folder they all see
        set_seed(config.seed)
        self.evaluate_fn, self.tokenizer = evaluate_fn, tokenizer
        self.tokenizer_digest = tokenizer_digest(tokenizer) if tokenizer is not None else None  # in every checkpoint
        self.build_train_loader(train_dataset, collate_fn)
        self.build_model(model)
        self.prepare_evaluation(train_dataset, eval_dataset, test_dataset, collate_fn)
        self.flops_per_token = flops_per_token(self.accelerator.unwrap_model(self.model), seq_len)
        self.peak_flops = config.peak_flops or peak_flops(self.accelerator.device, config.mixed_precision)
        self.forward_kwargs = loss_kwargs(self.model, self.accelerator, config)  # see loss_kwargs
        # the training loss since the last log, summed on the device (no host sync per step)
        self.loss_sum, self.loss_count = torch.zeros((), device=self.accelerator.device), 0
        self.pending_tokens = 0  # tokens of the micro-batches of the optimizer step in progress
        self.position, self.throughput, self.results = Position(), Throughput(), {}
        self.log: MetricsLog | None = None
        self.progress: tqdm | None = None
        self.last_checkpoint: str | None = None
        self.stream_state: dict | None = None  # where a resumed stream continues (`restore`)

    def build_train_loader(self, train_dataset, collate_fn) -> None:
        """The training loader, not yet prepared; the training set must hold one global batch."""
        config = self.config
        self.streaming = isinstance(train_dataset, IterableDataset)  # read in order, once per epoch; no length
        if self.streaming and not config.max_steps:
            raise BadInput("A streamed training set has no length; set max_steps (--max-steps).")
        global_batch = config.batch_size * self.accelerator.num_processes
        if not self.streaming and len(train_dataset) < global_batch:
            raise BadInput(
                f"The training set has {len(train_dataset)} examples, fewer than one global batch ({global_batch}); "
                "lower batch_size or add data."
            )
        self.sampler = None if self.streaming else EpochShuffleSampler(len(train_dataset), config.seed, config.shuffle)
        # a stream's last, short batch is read, to be counted among the examples left out (`own_shares`)
        drop_last = not self.streaming
        self.train_loader = make_loader(train_dataset, config.batch_size, collate_fn, self.sampler, drop_last=drop_last, seed=config.seed)

    def build_model(self, model: torch.nn.Module) -> None:
        """The model placed by the strategy, the optimizer and the schedule, prepared with the training data."""
        config, accelerator = self.config, self.accelerator
        if config.gradient_checkpointing:
            if not getattr(model, "supports_gradient_checkpointing", False):
                raise BadInput(f"{type(model).__name__} does not support gradient checkpointing; drop --gradient-checkpointing.")
            # activation_checkpointing_enable: transformers >= 5.24
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        model = self.strategy.place(model, accelerator, config)
        model.train()
        optimizer = build_optimizer(model, config)
        if not self.streaming:  # sharded by accelerate first: its length fixes the schedule (a stream is each process' own)
            self.train_loader = accelerator.prepare(self.train_loader)
        self.batches_per_epoch = None if self.streaming else len(self.train_loader)  # per process; None for a stream
        self.global_batch = config.batch_size * accelerator.num_processes  # examples per micro-batch, all processes
        if not self.streaming:  # the examples no global batch takes: each epoch leaves them out, never repeats one
            self.left_out = len(self.train_loader.dataset) - self.batches_per_epoch * self.global_batch
        self.total_steps = config.max_steps or config.num_epochs * math.ceil(self.batches_per_epoch / config.gradient_accumulation_steps)
        schedule = partial(lr_factor, warmup_steps=config.warmup_steps, total_steps=self.total_steps, min_lr_ratio=config.min_lr_ratio)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        self.model, self.optimizer, self.scheduler = self.strategy.prepare(accelerator, model, optimizer, scheduler)

    def prepare_evaluation(self, train_dataset, eval_dataset, test_dataset, collate_fn) -> None:
        """The evaluation and test loaders (prepared after the model: accelerate's order), the
        training data in order for `train_eval_loss`, and the tracker."""
        accelerator, config = self.accelerator, self.config
        batch_size = config.eval_batch_size or config.batch_size

        def loader(data):
            return accelerator.prepare(make_loader(data, batch_size, collate_fn, seed=config.seed))

        self.eval_loader = loader(eval_dataset) if eval_dataset is not None and len(eval_dataset) > 0 else None
        self.test_loader = loader(test_dataset) if test_dataset is not None and len(test_dataset) > 0 else None
        # unshuffled: "the first N training batches" are the same ones at every evaluation
        self.train_eval_loader = loader(train_dataset) if config.train_eval_batches else None
        if self.tensorboard:
            hyperparameters = {k: v for k, v in asdict(config).items() if isinstance(v, (int, float, str, bool))}
            accelerator.init_trackers("tensorboard", config=hyperparameters)

    def fit(self, *, final_dir=None, on_save=None, before_save=None, merge_adapters: bool = False) -> dict[str, Any]:
        """Restore, train to the last step, evaluate and save (arguments: see `train`); returns the final metrics."""
        self.check_room_to_save(final_dir)
        self.restore()
        if self.config.eval_at_start and self.eval_loader is not None and self.position.step == 0:
            self.results.update({f"initial_{k}": v for k, v in self.evaluate().items()})
        start = time.perf_counter()
        show = self.config.progress and self.accelerator.is_local_main_process
        self.progress = tqdm(total=self.total_steps, initial=self.position.step, desc="training", disable=not show, dynamic_ncols=True)
        while self.position.step < self.total_steps:
            self.run_epoch()
        self.progress.close()
        self.final_evaluation(start)
        self.save(final_dir, on_save=on_save, before_save=before_save, merge_adapters=merge_adapters)
        self.accelerator.end_training()
        return self.results

    def check_room_to_save(self, final_dir) -> None:
        """Before the first step: the disk must hold what the run will write (the model and the
        checkpoints that exist at once), so that a full disk stops the run before any work, not at its end."""
        parameters = list(self.accelerator.unwrap_model(self.model).parameters())  # tied weights counted once
        weights = sum(p.numel() * p.element_size() for p in parameters)
        moments = sum(2 * 4 * p.numel() for p in parameters if p.requires_grad)  # AdamW's two fp32 moments
        saves = self.total_steps // self.config.save_every if self.config.save_every else 0
        at_once = min(saves, self.config.keep_checkpoints + 1)  # a new checkpoint is written before the oldest goes
        needed = (weights if final_dir else 0) + at_once * (weights + moments)
        check_free_space(self.output_dir, needed, "output folder")

    def restore(self) -> None:
        """With `resume`, load the newest checkpoint and continue from its position."""
        if self.config.resume:
            signature = self.signature()
            slices = self.strategy.slices(self.model, self.optimizer)
            state = load_newest_checkpoint(self.accelerator, self.output_dir, signature, slices)
            self.position = Position(**{key: state[key] for key in ("step", "epoch", "tokens")})
            self.position.examples_in_epoch = self.examples_consumed(state)
            if self.streaming and state.get("streams"):  # this process' place in its stream (see `checkpoint`)
                self.stream_state = state["streams"][self.accelerator.process_index]
            self.last_checkpoint = checkpoint_name(self.position.step)
        if self.accelerator.is_main_process:
            mark_output(self.output_dir, run=True)  # the run folder is ours now: a later run may replace it
            # config.yaml: what the run (now) runs with; inputs.json when it starts (a resume has just compared it)
            save_run_options(self.config.run_options, self.output_dir, inputs=not self.config.resume)
        self.log = MetricsLog(self.accelerator, self.output_dir, self.position.step if self.config.resume else None)

    def examples_consumed(self, state: dict) -> int:
        """The checkpoint's place in its epoch, in examples over all processes: whole global batches of
        this run (another number of processes must keep the global batch), the same stream split."""
        processes = state.get("processes", self.accelerator.num_processes)
        if self.streaming and processes != self.accelerator.num_processes:
            raise BadInput(
                f"The checkpoint was written by {processes} processes, each reading its own part of the stream; resume a "
                f"--streaming run on {processes} processes (prepared token shards resume on any number)."
            )
        examples = state.get("examples_in_epoch", state.get("batches_in_epoch", 0) * self.global_batch)  # older checkpoints
        if examples % self.global_batch:
            raise BadInput(
                f"The checkpoint stopped {examples} examples into its epoch, not a whole number of global batches of "
                f"{self.global_batch} ({self.accelerator.num_processes} processes x {self.config.batch_size}); resume "
                "with the global batch the run had (--global-batch-size)."
            )
        return examples

    def run_epoch(self) -> None:
        """The micro-batches of one pass over the data, from the current position; it stops early
        when the last step is done."""
        accelerator, position = self.accelerator, self.position
        if self.sampler is not None:
            self.sampler.epoch = position.epoch
        reshuffled = self.train_loader.dataset if self.streaming else self.train_loader  # whose order follows the epoch
        if hasattr(reshuffled, "set_epoch"):
            reshuffled.set_epoch(position.epoch)
        skip = position.examples_in_epoch // self.global_batch  # a map-style set skips without reading
        if self.stream_state is not None:  # a stream that knows where it was continues there, reading nothing before
            self.train_loader.dataset.load_state_dict(self.stream_state)
            self.stream_state, skip = None, 0
        if self.streaming:
            batches = self.own_shares(skip)
        else:
            batches = accelerator.skip_first_batches(self.train_loader, skip) if skip else self.train_loader
        for batch in batches:
            loss = self.train_micro_batch(batch)
            position.examples_in_epoch += self.global_batch
            self.loss_sum += loss.detach().float()
            self.loss_count += 1
            self.pending_tokens += batch["input_ids"].numel() * accelerator.num_processes if "input_ids" in batch else 0
            if accelerator.sync_gradients:
                self.after_optimizer_step()
                if position.step >= self.total_steps and not self.epoch_read():
                    return
        if position.examples_in_epoch == 0:  # a stream shorter than one global batch would loop for ever
            raise BadInput(
                f"The training data ran out before a single batch of {self.config.batch_size} per process "
                f"({accelerator.num_processes} processes); add data or lower the batch size."
            )
        self.end_epoch(self.left_out if not self.streaming else self.stream_left_out)

    def epoch_read(self) -> bool:
        """Whether the last batch of a map-style epoch was read (its end is then logged, `end_epoch`)."""
        return not self.streaming and self.position.examples_in_epoch == self.batches_per_epoch * self.global_batch

    def own_shares(self, skip: int):
        """The batches of a stream, which each process reads its own share of (the command splits it;
        nothing is sent from process 0, nothing split again), while every process has a full batch:
        the shares end at different points, and all processes stop at the first end, together (one
        flag reduced per micro-batch; none waits for ever in a collective). The examples the other
        processes hold then are counted as left out (`stream_left_out`, summed over processes)."""
        accelerator = self.accelerator
        iterator, self.stream_left_out = itertools.islice(iter(self.train_loader), skip, None), 0
        for batch in iterator:
            rows = next(iter(batch.values())).shape[0]
            if self.all_processes(rows == self.config.batch_size):
                yield send_to_device(batch, accelerator.device)
                continue
            self.stream_left_out = rows + sum(next(iter(rest.values())).shape[0] for rest in iterator)
            break
        else:
            self.all_processes(False)  # this share ended: tell the others, who wait in the same reduction
        self.stream_left_out = int(accelerator.reduce(torch.tensor(self.stream_left_out, device=accelerator.device), "sum"))

    def all_processes(self, has_batch: bool) -> bool:
        """Whether every process has a full batch now (each says whether it has one)."""
        flag = torch.tensor(int(has_batch), device=self.accelerator.device)
        return bool(self.accelerator.gather(flag.reshape(1)).min().item())

    def end_epoch(self, left_out: int) -> None:
        """Past the end of the data: the next epoch starts; the examples this one left out are counted
        (in the final metrics) and, when there are any, logged."""
        position = self.position
        self.results["examples_left_out"] = self.results.get("examples_left_out", 0) + left_out
        if left_out:
            self.log.log(position.step, {"epoch": position.epoch, "examples_left_out": left_out})
        position.epoch, position.examples_in_epoch = position.epoch + 1, 0

    def train_micro_batch(self, batch: dict) -> torch.Tensor:
        """Forward and backward of one micro-batch; on the last of a step, clip and step the optimizer."""
        accelerator = self.accelerator
        with accelerator.accumulate(self.model):
            self.strategy.sync_gradients(self.model, accelerator.sync_gradients)
            loss = self.model(**batch, **self.forward_kwargs).loss
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                if self.config.max_grad_norm:
                    accelerator.clip_grad_norm_(self.model.parameters(), self.config.max_grad_norm)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
        return loss

    def after_optimizer_step(self) -> None:
        """Count the step, then log, evaluate and checkpoint when they are due."""
        config, position = self.config, self.position
        self.scheduler.step()
        position.step += 1
        position.tokens += self.pending_tokens
        self.throughput.add(self.pending_tokens)
        self.pending_tokens = 0
        self.progress.update(1)
        if position.step % config.log_every == 0 or position.step == self.total_steps:
            self.log_progress()
        paused = time.perf_counter()  # evaluation and checkpoints do not count towards tokens/s
        if self.eval_loader is not None and config.eval_every and position.step % config.eval_every == 0:
            if position.step < self.total_steps:  # the last evaluation follows the loop
                self.results.update(self.evaluate())
        if config.save_every and position.step % config.save_every == 0:
            self.checkpoint()
        self.throughput.exclude(time.perf_counter() - paused)

    def log_progress(self) -> None:
        """The mean training loss since the last log (over every process), tokens/s and MFU."""
        mean_loss = self.accelerator.reduce(self.loss_sum / self.loss_count, reduction="mean")
        self.check_finite(mean_loss)
        train_loss = mean_loss.item()
        tokens_per_s = self.throughput.rate()
        metrics = {"train_loss": train_loss, "lr": self.scheduler.get_last_lr()[0], "tokens_per_s": tokens_per_s}
        postfix = {"loss": f"{train_loss:.3f}", "tok_s": f"{tokens_per_s:,.0f}"}
        if self.peak_flops:
            metrics["mfu"] = tokens_per_s * self.flops_per_token / (self.peak_flops * self.accelerator.num_processes)
            postfix["mfu"] = f"{metrics['mfu']:.1%}"
        self.log.log(self.position.step, metrics)
        self.progress.set_postfix(postfix)
        self.results["train_loss"] = train_loss
        self.loss_sum.zero_()
        self.loss_count = 0

    def check_finite(self, loss: torch.Tensor) -> None:
        """Stop with `TrainingDiverged` on a NaN or infinite loss (reduced over processes, so all stop)."""
        if torch.isfinite(loss).item():
            return
        last = self.last_checkpoint
        kept = f"the last good checkpoint is {last}" if last else "no checkpoint was written"
        raise TrainingDiverged(
            f"The training loss became {loss.item()} before step {self.position.step}; training stopped and {kept}. "
            "Lower the learning rate, raise warmup_steps or use bf16 instead of fp16."
        )

    def evaluate(self) -> dict[str, float]:
        """The validation metrics now, logged and printed (with samples when asked for)."""
        metrics = measure(self.model, self.eval_loader, self.accelerator, self.config, self.evaluate_fn)
        if self.train_eval_loader is not None:  # the book's training loss: no dropout, the first N batches
            self.model.eval()
            metrics["train_eval_loss"] = evaluate_loss(self.model, self.train_eval_loader, self.accelerator, self.config.train_eval_batches)
            self.model.train()
        self.results["best_eval_loss"] = min(metrics["eval_loss"], self.results.get("best_eval_loss", math.inf))
        self.log.log(self.position.step, metrics)
        self.accelerator.print(f"step {self.position.step}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        self.print_samples()
        return metrics

    def print_samples(self) -> None:
        """A generation for each of `config.sample_prompts`, when there is a tokenizer and the model generates."""
        prompts, model = self.config.sample_prompts, self.accelerator.unwrap_model(self.model)
        if self.tokenizer is None or not prompts or not hasattr(model, "generate"):
            return
        with self.strategy.generating(model) as synced:  # under FSDP every process generates, in step
            max_new_tokens, device = self.config.sample_max_new_tokens, self.accelerator.device
            samples = generate_samples(model, self.tokenizer, prompts, max_new_tokens, device, synced=synced)
        for sample in samples:
            self.accelerator.print(f"  sample: {sample!r}")

    def signature(self) -> dict:
        """What a checkpoint of this run must match (`checkpoints.model_signature`)."""
        return model_signature(self.accelerator.unwrap_model(self.model, keep_torch_compile=False), self.tokenizer_digest)

    def checkpoint(self) -> None:
        """Save the full training state (model, optimizer, schedule, RNG, position)."""
        self.check_finite(self.accelerator.reduce(self.loss_sum.clone(), reduction="sum"))
        position = self.position
        epoch_done = self.epoch_read()
        state = asdict(position) | ({"epoch": position.epoch + 1, "examples_in_epoch": 0} if epoch_done else {})
        state["processes"] = self.accelerator.num_processes
        if self.streaming and hasattr(self.train_loader.dataset, "state_dict"):
            # where each process' stream is (`PackedStream`, a `datasets.IterableDataset`): a resumed
            # run continues there instead of reading the epoch again up to its place
            state["streams"] = gather_object([self.train_loader.dataset.state_dict()])
        state["model"] = self.signature()
        slices = self.strategy.slices(self.model, self.optimizer)
        save_checkpoint(self.accelerator, self.output_dir, state, self.config.keep_checkpoints, slices)
        self.last_checkpoint = checkpoint_name(position.step)

    def final_evaluation(self, start: float) -> None:
        """The last evaluation, the test set, the step count and run time, the book's figures."""
        if self.eval_loader is not None:
            self.results.update(self.evaluate())
        if self.test_loader is not None:
            test = measure(self.model, self.test_loader, self.accelerator, self.config, self.evaluate_fn)
            self.results.update({f"test_{k.removeprefix('eval_')}": v for k, v in test.items()})
        self.results.update(step=self.position.step, tokens=self.position.tokens, runtime_s=time.perf_counter() - start)
        if self.config.book_figures:
            self.compare_with_book()

    def compare_with_book(self) -> None:
        """Print each published figure beside ours ("book: X, ours: Y") and log both (`book_*`, `ours_*`)."""
        record = {}
        for name, book in self.config.book_figures.items():
            ours = self.results.get(name)
            shown = "not measured" if ours is None else f"{ours:.4g}"
            self.accelerator.print(f"{name}: book: {book:.4g}, ours: {shown}")
            record[f"book_{name}"] = book
            if ours is not None:
                record[f"ours_{name}"] = ours
        self.log.log(self.position.step, record)

    def save(self, final_dir, *, on_save=None, before_save=None, merge_adapters: bool = False) -> None:
        """The loss curve, then `before_save(model)` on every process, then the model folder (`save_model`)."""
        accelerator = self.accelerator
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            self.log.plot(self.output_dir / "loss_curve.png")
        if before_save is not None:  # every process: under FSDP even generating is collective
            before_save(accelerator.unwrap_model(self.model, keep_torch_compile=False))
        if final_dir is None:
            return
        save_model(
            accelerator,
            self.model,
            final_dir,
            tokenizer=self.tokenizer,
            on_save=on_save,
            metrics=self.results,
            run_dir=self.output_dir,
            merge_adapters=merge_adapters,
            strategy=self.strategy,
        )
        if accelerator.is_main_process and self.output_dir == work_folder(final_dir):
            shutil.rmtree(self.output_dir, ignore_errors=True)  # its logs are in the model folder now


def train(
    model: torch.nn.Module | Callable[[], torch.nn.Module],
    train_dataset,
    eval_dataset,
    config: TrainingConfig,
    *,
    final_dir: str | os.PathLike | None = None,
    on_save: Callable[[Path, dict], None] | None = None,
    before_save: Callable[[torch.nn.Module], None] | None = None,
    merge_adapters: bool = False,
    **options,
) -> dict[str, Any]:
    """Train `model`, or the model a zero-argument factory builds, on `train_dataset`; see the
    module docstring for the contract. `options` are the Trainer's (test_dataset, collate_fn,
    evaluate_fn, tokenizer, seq_len), the others `fit`'s."""
    if final_dir is not None:
        check_writable(final_dir, "model folder")
        if Path(final_dir).resolve() == Path(config.output_dir).resolve():
            # The model folder is the run folder (fine-tuning): the run works beside it until the
            # save, so a previous model there stays whole, logs included, until it is replaced.
            config = replace(config, output_dir=str(work_folder(final_dir)))
    trainer = Trainer(model, train_dataset, eval_dataset, config, **options)
    return trainer.fit(final_dir=final_dir, on_save=on_save, before_save=before_save, merge_adapters=merge_adapters)


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
    strategy: parallel.Plain | None = None,
) -> None:
    """Write the (possibly wrapped, compiled or sharded) `model` as a `save_pretrained` folder.
    Every process calls it (gathering a sharded model is collective); the main process writes
    into a temporary folder that replaces `folder` in one rename, so a crash leaves the previous
    folder or none. The folder holds the weights (safetensors, `_orig_mod.` of torch.compile
    stripped; with `merge_adapters` LoRA adapters are folded in, else a PEFT model saves only its
    adapter), the config and remote code, `tokenizer`, `metrics.json`, the run's files
    (`copy_run_files`), then whatever `on_save(tmp_folder, metrics)` adds. `strategy` (the run's,
    see `parallel.py`) gives the full model; by default the one that holds `model` as it is."""
    strategy = parallel.of_model(model) if strategy is None else strategy
    unwrapped, state_dict = strategy.full_model(accelerator, model, merge_adapters)
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
                save_tokenizer(tokenizer, tmp)
            (tmp / "metrics.json").write_text(json.dumps(metrics or {}, indent=2) + "\n")
            if run_dir is not None:
                copy_run_files(Path(run_dir), folder, tmp)
            if on_save is not None:
                on_save(tmp, dict(metrics or {}))
    accelerator.wait_for_everyone()


def copy_run_files(run_dir: Path, folder: Path, tmp: Path) -> None:
    """The run's loss curve into the model folder being written (`tmp`, to become `folder`); when
    the run folder is the model folder itself (or its work folder), its logs too."""
    same_folder = run_dir.resolve() in (folder.resolve(), work_folder(folder).resolve())
    for name in RUN_FILES if same_folder else RUN_FILES[:1]:
        source = run_dir / name
        if source.is_dir():
            shutil.copytree(source, tmp / name)
        elif source.is_file():
            shutil.copy2(source, tmp / name)


__all__ = [
    "NewModel",
    "Trainer",
    "TrainingConfig",
    "TrainingDiverged",
    "train",
    "save_model",
    "build_optimizer",
    "lr_factor",
    "process_state",
    "read_checkpoint_state",
]
