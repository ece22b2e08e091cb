"""GPT-2-shaped vs Llama-shaped quickstart model at equal wall time on this machine.

Runs `scratch-gpt quickstart` twice on the built-in corpus with the same width, depth, heads,
tokenizer size, learning rate and data: once as today's default (GPT-2 shape), once with the
`smollm2-135m` switches (RoPE, RMSNorm, SwiGLU with its 8/3 width ratio, 2 key/value heads). The
GPT-2 run takes `--steps` steps; the Llama run gets as many steps as fit in the same training time,
measured by a short calibration run of each. Training time is what the loop's own `tokens_per_s`
says (evaluation, tokenizer training and start-up excluded), so other load on the machine between
the runs moves both shapes alike only if it is steady: run it on an otherwise idle machine. Prints
both final validation losses and writes both curves (validation loss against training seconds) to
scripts/quickstart_gpt2_vs_llama.png.

    python scripts/compare_quickstart.py                 # 400 GPT-2 steps, as the quickstart
    python scripts/compare_quickstart.py --steps 150     # quicker
"""

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from scratch_gpt.cli import main as scratch_gpt

SHAPES = {
    "GPT-2 (learned positions, LayerNorm, GELU)": [],
    "Llama (RoPE, RMSNorm, SwiGLU, GQA 4:2)": ["--preset", "smollm2-135m", "--num-kv-heads", "2"],
}


BATCH, BLOCK = 16, 128  # the quickstart's own; passed explicitly so that tokens per step are known


def run(folder: Path, steps: int, shape: list[str]) -> tuple[float, list[tuple[int, float]]]:
    """Training seconds per step (median over the logged intervals), and the (step, validation loss) points."""
    code = scratch_gpt(
        ["quickstart", "--output-dir", str(folder), "--max-steps", str(steps), "--eval-every", str(max(steps // 8, 1)),
         "--log-every", "5", "--batch-size", str(BATCH), "--block-size", str(BLOCK), "--no-progress", *shape]
    )
    if code:
        raise SystemExit(f"quickstart failed with exit code {code}")
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    rates = [row["tokens_per_s"] for row in rows if "tokens_per_s" in row][1:]  # the first interval holds warm-up
    seconds_per_step = BATCH * BLOCK / statistics.median(rates)
    return seconds_per_step, [(row["step"], row["eval_loss"]) for row in rows if "eval_loss" in row]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=400, help="steps of the GPT-2-shaped run (default: the quickstart's)")
    parser.add_argument("--calibration-steps", type=int, default=30)
    parser.add_argument("--plot", default=str(Path(__file__).with_name("quickstart_gpt2_vs_llama.png")))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # training seconds per step of each shape
        per_step = {name: run(tmp / f"calibrate{i}", args.calibration_steps, shape)[0] for i, (name, shape) in enumerate(SHAPES.items())}
        names = list(SHAPES)
        steps = {names[0]: args.steps, names[1]: round(args.steps * per_step[names[0]] / per_step[names[1]])}
        curves = {}
        for i, name in enumerate(names):
            seconds_per_step, points = run(tmp / f"run{i}", steps[name], SHAPES[name])
            curves[name] = [(step * seconds_per_step, loss) for step, loss in points]
            print(
                f"{name}: {steps[name]} steps, {steps[name] * seconds_per_step:.0f} s of training "
                f"(calibrated {per_step[name]:.3f} s/step, measured {seconds_per_step:.3f}), "
                f"final validation loss {points[-1][1]:.3f}"
            )

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4))
    for name, points in curves.items():
        axes.plot(*zip(*points), marker="o", label=name)
    axes.set_xlabel("training time (s): step x the run's median seconds per step")
    axes.set_ylabel("validation loss (nats/token)")
    axes.set_title("quickstart: GPT-2 vs Llama shape at equal wall time")
    axes.legend()
    figure.tight_layout()
    figure.savefig(args.plot, dpi=120)
    print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
