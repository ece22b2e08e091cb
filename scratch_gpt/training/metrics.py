"""What the training loop reports: `metrics.jsonl`, trackers, the loss curve, tokens/s and MFU.

MFU (model FLOPs utilization) is the share of the hardware's peak that the training step
achieves: tokens/s x FLOPs per token / peak FLOP/s. The peak comes from `--peak-flops`, else
from a table of GPUs matched by their exact name (dense, no sparsity). On a CPU or an unknown GPU no
MFU is reported rather than a wrong one.
"""

import json
import os
import time
from pathlib import Path

import torch

from scratch_gpt.errors import BadInput
from scratch_gpt.io_utils import write_atomically

# Dense peak FLOP/s of one GPU: (bf16/fp16, TF32, FP32), from the vendors' data sheets.
# Keyed by the exact `torch.cuda.get_device_name()`; a PCIe card is not its SXM sibling.
GPU_PEAK_FLOPS = {
    "NVIDIA H100 80GB HBM3": (989e12, 495e12, 67e12),  # SXM5
    "NVIDIA H100 PCIe": (756e12, 378e12, 51e12),
    "NVIDIA H200": (989e12, 495e12, 67e12),
    "NVIDIA A100-SXM4-80GB": (312e12, 156e12, 19.5e12),
    "NVIDIA A100-SXM4-40GB": (312e12, 156e12, 19.5e12),
    "NVIDIA A100 80GB PCIe": (312e12, 156e12, 19.5e12),
    "NVIDIA A100-PCIE-40GB": (312e12, 156e12, 19.5e12),
    "NVIDIA L40S": (362e12, 183e12, 91.6e12),
    "NVIDIA L4": (121e12, 60e12, 30.3e12),
    "NVIDIA A10G": (70e12, 35e12, 31.2e12),
    "NVIDIA GeForce RTX 4090": (165e12, 82.6e12, 82.6e12),
}


def peak_flops(device: torch.device, mixed_precision: str) -> float | None:
    """Dense peak FLOP/s of one device for the run's matmul dtype, or None when unknown."""
    peaks = GPU_PEAK_FLOPS.get(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
    if peaks is None:  # an unknown GPU, or a CPU (a matmul's rate is no peak: MFU came out above 100%)
        return None
    if mixed_precision in ("bf16", "fp16"):
        return peaks[0]
    return peaks[1] if torch.get_float32_matmul_precision() != "highest" else peaks[2]


def measured_cpu_peak(size: int = 512, repeats: int = 8) -> float:
    """FLOP/s of a square fp32 matmul on this CPU, best of a few (about 0.1 s): the practical peak."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)  # warm up the kernel and its threads
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def flops_per_token(model: torch.nn.Module, seq_len: int) -> float:
    """Training FLOPs (forward + backward) per token: the model's own count, else 6 x parameters."""
    if hasattr(model, "flops_per_token"):
        return float(model.flops_per_token(seq_len))
    return 6.0 * sum(p.numel() for p in model.parameters())


class Throughput:
    """Tokens per second over the steps since the last `rate()`; pauses (evaluation, checkpoints) excluded."""

    def __init__(self):
        self.start, self.tokens = time.perf_counter(), 0

    def add(self, tokens: int) -> None:
        self.tokens += tokens

    def exclude(self, seconds: float) -> None:
        self.start += seconds

    def rate(self) -> float:
        tokens_per_s = self.tokens / max(time.perf_counter() - self.start, 1e-9)
        self.start, self.tokens = time.perf_counter(), 0
        return tokens_per_s


class MetricsLog:
    """Appends one JSON object per call to metrics.jsonl and forwards it to accelerate's trackers."""

    def __init__(self, accelerator, output_dir: Path, resume_step: int | None):
        self.accelerator = accelerator
        self.path = output_dir / "metrics.jsonl"
        if accelerator.is_main_process:
            kept = []
            if resume_step is not None and self.path.exists():
                # drop what the interrupted run logged after its checkpoint
                lines = self.path.read_text().splitlines()
                kept = [line for line in lines if _step_of(line, resume_step + 1) <= resume_step]
            write_atomically(self.path, "".join(line + "\n" for line in kept))  # a kill here keeps the old log whole

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.accelerator.log(metrics, step=step)
        if self.accelerator.is_main_process:
            with self.path.open("a") as file:
                file.write(json.dumps({"step": step, **metrics}) + "\n")

    def plot(self, path: Path) -> None:
        """Training and evaluation loss against the step, as a PNG (written atomically)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        records = [json.loads(line) for line in self.path.read_text().splitlines()]
        figure, axis = plt.subplots(figsize=(7, 4))
        for key in ("train_loss", "train_eval_loss", "eval_loss"):  # train_eval_loss: with --train-eval-batches
            points = [(r["step"], r[key]) for r in records if key in r]
            if points:
                axis.plot(*zip(*points), marker=None if key == "train_loss" else ".", label=key)
        axis.set_xlabel("optimizer step")
        axis.set_ylabel("loss (nats/token)")
        axis.legend()
        axis.grid(alpha=0.3)
        figure.tight_layout()
        tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")  # a kill while drawing keeps the old image whole
        figure.savefig(tmp, dpi=120)
        plt.close(figure)
        os.replace(tmp, path)


def _step_of(line: str, default: int) -> int:
    """The step of one metrics.jsonl line; `default` for a line a kill cut short."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return default


def use_tensorboard(report_to: str) -> bool:
    if report_to == "none":
        return False
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        if report_to == "tensorboard":
            raise BadInput("report_to='tensorboard' needs the tensorboard package; pip install tensorboard or use 'none'.")
        return False
    return True
