"""One training loop, on `accelerate`, for pre-training, classification and instruction tuning.

API
---
    from scratch_gpt.training.loop import TrainingConfig, train

    metrics = train(model, train_dataset, eval_dataset, TrainingConfig(output_dir="runs/x", max_steps=500),
                    collate_fn=None, evaluate_fn=None, tokenizer=None, final_dir=None, on_save=None)

- `model` is any `nn.Module` whose `model(**batch)` returns an object with `.loss` (every HF model
  given `labels`). Only parameters with `requires_grad` are optimized (LoRA just works).
- `train_dataset` / `eval_dataset` are map-style datasets (a `datasets.Dataset`, a list, a torch
  `Dataset`); `collate_fn` turns a list of rows into a dict of tensors (default: stack each column).
  `eval_dataset` may be None (no evaluation).
- `evaluate_fn(model, eval_dataloader, accelerator) -> dict[str, float]` adds metrics (accuracy...)
  to each evaluation; the loss (plus perplexity and, with `config.bytes_per_token`, bits per byte)
  is always measured, by the loop, or by `evaluate_fn` in the same pass when it returns `loss`.
- `tokenizer` + `config.sample_prompts`: sample generations are printed at each evaluation.
- `final_dir`: when given, the trained model (and `tokenizer`) is written there with
  `save_pretrained`, atomically; `on_save(folder, metrics)` runs on the main process inside the
  temporary folder before it is renamed (write a model card there, for example).
- Returns a dict of final metrics: `step`, `tokens`, `train_loss`, `eval_loss`, `perplexity`,
  `bits_per_byte` (when known), the `evaluate_fn` metrics, `runtime_s`, and `initial_eval_loss` (and the
  other metrics of the evaluation before the first step, prefixed `initial_`) when `eval_at_start`.
- Raises `TrainingDiverged` when the loss becomes NaN or infinite; the last good checkpoint stays.

What it writes in `config.output_dir` (main process only): `metrics.jsonl` (one JSON object per
log/eval step), `loss_curve.png`, TensorBoard logs in `tensorboard/` when installed, and
`checkpoints/step-XXXXXXXX/` (accelerate `save_state` + `trainer_state.json`) every `save_every`
steps, keeping the newest `keep_checkpoints`. `resume=True` continues from the newest complete
checkpoint: model, optimizer, scheduler, RNG states and the position in the data, so an interrupted
run ends with the same weights as an uninterrupted one.

The same code runs on one CPU and under `accelerate launch` on many GPUs or nodes.
"""

import json
import math
import os
import shutil
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable

import torch
from accelerate import Accelerator, PartialState
from accelerate.state import AcceleratorState
from accelerate.utils import DataLoaderConfiguration, set_seed
from torch.utils.data import DataLoader, IterableDataset, Sampler
from tqdm.auto import tqdm

from scratch_gpt.io_utils import atomic_directory, check_writable


CHECKPOINT_PREFIX = "step-"
STATE_FILE = "trainer_state.json"


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite."""


@dataclass
class TrainingConfig:
    output_dir: str = "runs/train"
    # Length of the run: `max_steps` optimizer steps if set, else `num_epochs` passes over the data.
    num_epochs: int = 1
    max_steps: int | None = None
    batch_size: int = 8  # per process; the global batch is batch_size * processes * accumulation
    eval_batch_size: int | None = None  # default: batch_size
    gradient_accumulation_steps: int = 1
    # AdamW, linear warmup then cosine decay down to min_lr_ratio * learning_rate.
    learning_rate: float = 3e-4
    weight_decay: float = 0.1
    adam_betas: tuple[float, float] = (0.9, 0.95)
    adam_eps: float = 1e-8
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1
    max_grad_norm: float | None = 1.0
    mixed_precision: str = "no"  # "no", "bf16" or "fp16"
    compile: bool = False  # torch.compile the model (inductor)
    seed: int = 0
    shuffle: bool = True
    # Evaluation: every `eval_every` steps (0: only at the end), on at most `eval_max_batches` batches.
    eval_every: int = 0
    eval_max_batches: int | None = None
    eval_at_start: bool = False
    bytes_per_token: float | None = None  # enables bits per byte
    sample_prompts: tuple[str, ...] = ()
    sample_max_new_tokens: int = 40
    # Logging and progress.
    log_every: int = 10
    progress: bool = True
    report_to: str = "auto"  # "auto" (TensorBoard when installed), "tensorboard" or "none"
    peak_flops: float | None = None  # per process, for MFU; default: a rough figure for the device
    # Checkpoints.
    save_every: int = 0  # 0: no checkpoints
    keep_checkpoints: int = 2
    resume: bool = False

    def __post_init__(self):
        positive = ("num_epochs", "batch_size", "gradient_accumulation_steps", "log_every", "keep_checkpoints")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"TrainingConfig.{name} must be at least 1, got {getattr(self, name)!r}.")
        for name in ("eval_every", "save_every", "warmup_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"TrainingConfig.{name} must be 0 or more, got {getattr(self, name)!r}.")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"TrainingConfig.max_steps must be at least 1, got {self.max_steps!r}.")
        if self.learning_rate <= 0:
            raise ValueError(f"TrainingConfig.learning_rate must be positive, got {self.learning_rate!r}.")
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise ValueError(f"TrainingConfig.mixed_precision must be 'no', 'bf16' or 'fp16', got {self.mixed_precision!r}.")
        if self.report_to not in ("auto", "tensorboard", "none"):
            raise ValueError(f"TrainingConfig.report_to must be 'auto', 'tensorboard' or 'none', got {self.report_to!r}.")
        self.adam_betas = tuple(self.adam_betas)
        self.sample_prompts = tuple(self.sample_prompts)


def cpu_processes() -> bool:
    """True in a process that `accelerate launch --multi_gpu` started on a machine without a GPU.

    The launcher resets ACCELERATE_USE_CPU, and accelerate then sets up no process group at all;
    telling it `cpu=True` gives the gloo backend, so the same command works on CPU (and in CI).
    """
    return not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1


def process_state() -> PartialState:
    """This process' place among the launched ones (create it before any other accelerate object)."""
    return PartialState(cpu=cpu_processes())


# ----------------------------------------------------------------------------------------------
# Building blocks: optimizer, schedule, data order, throughput.


def build_optimizer(model: torch.nn.Module, config: TrainingConfig) -> torch.optim.AdamW:
    """AdamW on the trainable parameters; no weight decay on biases, norms and embeddings."""
    embedding_params = {id(p) for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters()}
    decay, no_decay, seen = [], [], set()
    for param in model.parameters():
        if not param.requires_grad or id(param) in seen:
            continue
        seen.add(id(param))
        (no_decay if param.ndim < 2 or id(param) in embedding_params else decay).append(param)
    if not seen:
        raise ValueError("The model has no parameter with requires_grad=True; there is nothing to train.")
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


def estimate_flops_per_token(model: torch.nn.Module, seq_len: int) -> float:
    """Training FLOPs (forward + backward) per token: the model's own count, else 6 x parameters."""
    if hasattr(model, "flops_per_token"):
        return float(model.flops_per_token(seq_len))
    return 6.0 * sum(p.numel() for p in model.parameters())


def default_peak_flops(device: torch.device, mixed_precision: str) -> float:
    """A rough dense peak (FLOP/s) for MFU. Pass `peak_flops` for a measured figure."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        half = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12, "4090": 165e12}
        peak = next((value for key, value in half.items() if key in name), 100e12)
        return peak if mixed_precision != "no" else peak / 2  # TF32 is about half the bf16 rate
    # CPU: about 32 fp32 FLOP per cycle per core (AVX2 FMA) at ~2.5 GHz.
    return torch.get_num_threads() * 32 * 2.5e9


# ----------------------------------------------------------------------------------------------
# Checkpoints: accelerate's save_state into a temporary folder, plus trainer_state.json, renamed.


def _checkpoint_dirs(output_dir: Path) -> list[Path]:
    folder = output_dir / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX))


def read_checkpoint_state(checkpoint: Path) -> dict:
    """The trainer state of a complete checkpoint; ValueError if the folder is incomplete or damaged."""
    try:
        state = json.loads((checkpoint / STATE_FILE).read_text())
        sizes = state["files"]
    except (OSError, ValueError, KeyError) as error:
        raise ValueError(f"checkpoint {checkpoint} has no readable {STATE_FILE} ({error})") from error
    for name, size in sizes.items():
        path = checkpoint / name
        if not path.is_file() or path.stat().st_size != size:
            raise ValueError(f"checkpoint {checkpoint} is incomplete: {name} is missing or has the wrong size")
    return state


def _save_checkpoint(accelerator: Accelerator, output_dir: Path, state: dict, keep: int) -> None:
    folder = output_dir / "checkpoints"
    final = folder / f"{CHECKPOINT_PREFIX}{state['step']:08d}"
    tmp = folder / f".tmp-{final.name}"  # the same name on every process: all of them write into it
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        files = {str(p.relative_to(tmp)): p.stat().st_size for p in sorted(tmp.rglob("*")) if p.is_file()}
        (tmp / STATE_FILE).write_text(json.dumps({**state, "files": files}, indent=2))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in _checkpoint_dirs(output_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def _load_newest_checkpoint(accelerator: Accelerator, output_dir: Path) -> dict | None:
    """Restore the newest complete checkpoint; skip damaged ones with a warning."""
    for checkpoint in reversed(_checkpoint_dirs(output_dir)):
        try:
            state = read_checkpoint_state(checkpoint)
            accelerator.load_state(str(checkpoint))
        except Exception as error:  # a damaged file makes torch/safetensors raise many kinds of errors
            warnings.warn(f"Skipping checkpoint {checkpoint.name}: {error}. Trying the previous one.", stacklevel=3)
            continue
        accelerator.print(f"Resumed from {checkpoint} (step {state['step']}).")
        return state
    return None


# ----------------------------------------------------------------------------------------------
# Metrics: metrics.jsonl, trackers, loss curve.


class MetricsLog:
    """Appends one JSON object per call to metrics.jsonl and forwards it to accelerate's trackers."""

    def __init__(self, accelerator: Accelerator, output_dir: Path, resume_step: int | None):
        self.accelerator = accelerator
        self.path = output_dir / "metrics.jsonl"
        if accelerator.is_main_process:
            output_dir.mkdir(parents=True, exist_ok=True)
            kept = []
            if resume_step is not None and self.path.exists():  # drop what the interrupted run logged after its checkpoint
                kept = [line for line in self.path.read_text().splitlines() if json.loads(line)["step"] <= resume_step]
            tmp = self.path.with_name(f".{self.path.name}.tmp")  # a kill here keeps the old log whole
            tmp.write_text("".join(line + "\n" for line in kept))
            os.replace(tmp, self.path)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.accelerator.log(metrics, step=step)
        if self.accelerator.is_main_process:
            with self.path.open("a") as file:
                file.write(json.dumps({"step": step, **metrics}) + "\n")

    def plot(self, path: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        records = [json.loads(line) for line in self.path.read_text().splitlines()]
        figure, axis = plt.subplots(figsize=(7, 4))
        for key in ("train_loss", "eval_loss"):
            points = [(r["step"], r[key]) for r in records if key in r]
            if points:
                axis.plot(*zip(*points), marker="." if key == "eval_loss" else None, label=key)
        axis.set_xlabel("optimizer step")
        axis.set_ylabel("loss (nats/token)")
        axis.legend()
        axis.grid(alpha=0.3)
        figure.tight_layout()
        tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")  # a kill while drawing keeps the old image whole
        figure.savefig(tmp, dpi=120)
        plt.close(figure)
        os.replace(tmp, path)


def _use_tensorboard(report_to: str) -> bool:
    if report_to == "none":
        return False
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        if report_to == "tensorboard":
            raise ValueError("report_to='tensorboard' needs the tensorboard package; pip install tensorboard or use 'none'.")
        return False
    return True


# ----------------------------------------------------------------------------------------------
# Evaluation and samples.


@torch.no_grad()
def evaluate_loss(model, dataloader, accelerator: Accelerator, max_batches: int | None) -> float:
    """Mean loss over the evaluation batches (gathered over processes)."""
    model.eval()
    total, count = torch.zeros((), device=accelerator.device), torch.zeros((), device=accelerator.device)
    for index, batch in enumerate(dataloader):
        if max_batches is not None and index >= max_batches:
            break
        loss = model(**batch).loss.float()
        rows = next(iter(batch.values())).shape[0]
        total += loss * rows
        count += rows
    model.train()
    total, count = accelerator.reduce(torch.stack([total, count]), reduction="sum")
    return (total / count).item()


def _evaluate(model, dataloader, accelerator, config: TrainingConfig, evaluate_fn) -> dict[str, float]:
    extra = {}
    if evaluate_fn is not None:
        model.eval()
        with torch.no_grad():
            extra = dict(evaluate_fn(model, dataloader, accelerator))
        model.train()
    loss = extra.pop("loss", None)
    if loss is None:
        loss = evaluate_loss(model, dataloader, accelerator, config.eval_max_batches)
    metrics = {"eval_loss": loss, "perplexity": math.exp(min(loss, 50.0))}
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
        )
        texts.append(tokenizer.decode(output[0], skip_special_tokens=True))
    model.train()
    return texts


# ----------------------------------------------------------------------------------------------
# The loop.


def _make_loader(dataset, batch_size, collate_fn, sampler, drop_last, seed) -> DataLoader:
    # A private generator: creating the iterator must not draw from the global RNG (resume exactness).
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=collate_fn or default_collate,
        drop_last=drop_last,
        generator=torch.Generator().manual_seed(seed),
    )


def check_output_dir(config: TrainingConfig) -> Path:
    """Fail early if `config.output_dir` is not writable or holds another run's checkpoints."""
    output_dir = check_writable(config.output_dir)
    if config.save_every and not config.resume and _checkpoint_dirs(output_dir):
        raise FileExistsError(
            f"The output folder {str(output_dir)!r} already holds checkpoints of another run; "
            "resume it (resume=True, --resume) or choose another output folder."
        )
    return output_dir


def train(
    model: torch.nn.Module,
    train_dataset,
    eval_dataset,
    config: TrainingConfig,
    *,
    collate_fn: Callable[[list], dict] | None = None,
    evaluate_fn: Callable[..., dict[str, float]] | None = None,
    tokenizer=None,
    final_dir: str | os.PathLike | None = None,
    on_save: Callable[[Path, dict], None] | None = None,
) -> dict[str, Any]:
    """Train `model` on `train_dataset`; see the module docstring for the contract."""
    output_dir = check_output_dir(config)
    if final_dir is not None:
        check_writable(final_dir, "model folder")
    tensorboard = _use_tensorboard(config.report_to)
    # Each call chooses its own precision and plugins; the process group (PartialState) is kept.
    AcceleratorState._reset_state()
    accelerator = Accelerator(
        cpu=cpu_processes(),
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        mixed_precision=config.mixed_precision,
        dynamo_backend="inductor" if config.compile else None,
        log_with="tensorboard" if tensorboard else None,
        project_dir=str(output_dir),
        step_scheduler_with_optimizer=False,  # one schedule step per optimizer step, whatever the process count
        dataloader_config=DataLoaderConfiguration(even_batches=True),
    )
    set_seed(config.seed)
    streaming = isinstance(train_dataset, IterableDataset)  # read in order, once per epoch; no length
    if streaming and not config.max_steps:
        raise ValueError("A streamed training set has no length; set max_steps (--max-steps).")
    global_batch = config.batch_size * accelerator.num_processes
    if not streaming and len(train_dataset) < global_batch:
        raise ValueError(
            f"The training set has {len(train_dataset)} examples, fewer than one global batch ({global_batch}); "
            "lower batch_size or add data."
        )

    sampler = None if streaming else EpochShuffleSampler(len(train_dataset), config.seed, config.shuffle)
    train_loader = _make_loader(train_dataset, config.batch_size, collate_fn, sampler, True, config.seed)
    eval_loader = None
    if eval_dataset is not None and len(eval_dataset) > 0:
        eval_loader = _make_loader(
            eval_dataset, config.eval_batch_size or config.batch_size, collate_fn, None, False, config.seed
        )

    model.to(accelerator.device)
    model.train()
    optimizer = build_optimizer(model, config)
    train_loader = accelerator.prepare(train_loader)  # sharded first: its length fixes the schedule
    micro_batches_per_epoch = None if streaming else len(train_loader)  # per process
    total_steps = config.max_steps or config.num_epochs * math.ceil(
        micro_batches_per_epoch / config.gradient_accumulation_steps
    )
    schedule = partial(
        lr_factor, warmup_steps=config.warmup_steps, total_steps=total_steps, min_lr_ratio=config.min_lr_ratio
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    if eval_loader is not None:
        eval_loader = accelerator.prepare(eval_loader)

    state = {"step": 0, "epoch": 0, "batches_in_epoch": 0, "tokens": 0}
    if config.resume:
        state = _load_newest_checkpoint(accelerator, output_dir) or state
    metrics_log = MetricsLog(accelerator, output_dir, state["step"] if config.resume else None)
    if tensorboard:
        hyperparameters = {k: v for k, v in asdict(config).items() if isinstance(v, (int, float, str, bool))}
        accelerator.init_trackers("tensorboard", config=hyperparameters)

    unwrapped = accelerator.unwrap_model(model)
    first_batch = next(iter(train_dataset)) if streaming else train_dataset[0]
    seq_len = len(first_batch["input_ids"]) if "input_ids" in first_batch else 1
    flops_per_token = estimate_flops_per_token(unwrapped, seq_len)
    peak_flops = config.peak_flops or default_peak_flops(accelerator.device, config.mixed_precision)

    results: dict[str, Any] = {}

    def run_eval(step: int) -> dict[str, float]:
        metrics = _evaluate(model, eval_loader, accelerator, config, evaluate_fn)
        metrics_log.log(step, metrics)
        accelerator.print(f"step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        if tokenizer is not None and config.sample_prompts:
            samples = generate_samples(
                unwrapped, tokenizer, config.sample_prompts, config.sample_max_new_tokens, accelerator.device
            )
            for sample in samples:
                accelerator.print(f"  sample: {sample!r}")
        return metrics

    if config.eval_at_start and eval_loader is not None and state["step"] == 0:
        results.update({f"initial_{k}": v for k, v in run_eval(0).items()})

    start_time = time.perf_counter()
    progress = tqdm(
        total=total_steps,
        initial=state["step"],
        desc="training",
        disable=not (config.progress and accelerator.is_local_main_process),
        dynamic_ncols=True,
    )
    step, epoch, batches_in_epoch, tokens = state["step"], state["epoch"], state["batches_in_epoch"], state["tokens"]
    running_loss = torch.zeros((), device=accelerator.device)
    running_count = 0
    micro_tokens = 0
    window_start, window_tokens = time.perf_counter(), 0
    last_checkpoint = f"{CHECKPOINT_PREFIX}{step:08d}" if step else None

    def check_finite(loss: torch.Tensor) -> None:
        """`loss` is reduced over the processes, so all of them stop together."""
        if not torch.isfinite(loss).item():
            kept = f"the last good checkpoint is {last_checkpoint}" if last_checkpoint else "no checkpoint was written"
            raise TrainingDiverged(
                f"The training loss became {loss.item()} before step {step}; training stopped and {kept}. "
                "Lower the learning rate, raise warmup_steps or use bf16 instead of fp16."
            )

    while step < total_steps:
        if sampler is not None:
            sampler.epoch = epoch
        train_loader.set_epoch(epoch)
        batches = accelerator.skip_first_batches(train_loader, batches_in_epoch) if batches_in_epoch else train_loader
        for batch in batches:
            with accelerator.accumulate(model):
                loss = model(**batch).loss
                accelerator.backward(loss)
                if accelerator.sync_gradients and config.max_grad_norm:
                    accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            batches_in_epoch += 1
            running_loss += loss.detach().float()
            running_count += 1
            micro_tokens += batch["input_ids"].numel() * accelerator.num_processes if "input_ids" in batch else 0
            if not accelerator.sync_gradients:
                continue
            scheduler.step()
            step += 1
            tokens += micro_tokens
            window_tokens += micro_tokens
            micro_tokens = 0
            progress.update(1)

            if step % config.log_every == 0 or step == total_steps:
                mean_loss = accelerator.reduce(running_loss / running_count, reduction="mean")
                check_finite(mean_loss)
                train_loss = mean_loss.item()
                elapsed = time.perf_counter() - window_start
                tokens_per_s = window_tokens / elapsed
                mfu = tokens_per_s * flops_per_token / (peak_flops * accelerator.num_processes)
                metrics_log.log(
                    step,
                    {"train_loss": train_loss, "lr": scheduler.get_last_lr()[0], "tokens_per_s": tokens_per_s, "mfu": mfu},
                )
                progress.set_postfix(loss=f"{train_loss:.3f}", tok_s=f"{tokens_per_s:,.0f}", mfu=f"{mfu:.1%}")
                results["train_loss"] = train_loss
                running_loss.zero_()
                running_count = 0
                window_start, window_tokens = time.perf_counter(), 0
            paused = time.perf_counter()  # evaluation and checkpoints do not count towards tokens/s
            if eval_loader is not None and config.eval_every and step % config.eval_every == 0 and step < total_steps:
                results.update(run_eval(step))
            if config.save_every and step % config.save_every == 0:
                check_finite(accelerator.reduce(running_loss.clone(), reduction="sum"))
                position = (epoch + 1, 0) if batches_in_epoch == micro_batches_per_epoch else (epoch, batches_in_epoch)
                _save_checkpoint(
                    accelerator,
                    output_dir,
                    {"step": step, "epoch": position[0], "batches_in_epoch": position[1], "tokens": tokens},
                    config.keep_checkpoints,
                )
                last_checkpoint = f"{CHECKPOINT_PREFIX}{step:08d}"
            window_start += time.perf_counter() - paused
            if step >= total_steps:
                break
        else:
            epoch, batches_in_epoch = epoch + 1, 0
    progress.close()

    if eval_loader is not None:
        results.update(run_eval(step))
    results.update(step=step, tokens=tokens, runtime_s=time.perf_counter() - start_time)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        metrics_log.plot(output_dir / "loss_curve.png")
    if final_dir is not None:
        save_model(accelerator, model, final_dir, tokenizer=tokenizer, on_save=on_save, metrics=results)
    accelerator.end_training()
    return results


def run_command(parser, argv, body, parse=None) -> int:
    """Parse `argv` and run `body(args)` for a training command: bad input (and a bad file or
    folder) becomes one line on stderr and exit status 2, a diverged run exit status 1."""
    try:
        args = (parse or parser.parse_args)(argv)
        body(args)
    except SystemExit as exit_:  # argparse: --help, or an unknown flag (already explained on stderr)
        return exit_.code or 0
    except TrainingDiverged as error:
        print(f"{parser.prog}: {error}", file=sys.stderr)
        return 1
    except (ValueError, OSError) as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    return 0


def save_model(accelerator, model, final_dir, *, tokenizer=None, on_save=None, metrics=None) -> None:
    """`save_pretrained` the (possibly wrapped or sharded) model into `final_dir`, atomically."""
    state_dict = accelerator.get_state_dict(model)  # collective under FSDP: every process calls it
    state_dict = {name.removeprefix("_orig_mod."): tensor for name, tensor in state_dict.items()}  # torch.compile
    if accelerator.is_main_process:
        with atomic_directory(final_dir) as tmp:
            accelerator.unwrap_model(model, keep_torch_compile=False).save_pretrained(tmp, state_dict=state_dict)
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)
            if on_save is not None:
                on_save(tmp, dict(metrics or {}))
    accelerator.wait_for_everyone()


__all__ = ["TrainingConfig", "TrainingDiverged", "train", "run_command", "save_model", "build_optimizer", "lr_factor", "process_state"]
