"""GPT-2-shaped vs Llama-shaped quickstart model at equal wall time on this machine.

Runs `scratch-gpt quickstart` twice on the built-in corpus with the same width, depth, heads,
tokenizer size, learning rate and data: once as today's default (GPT-2 shape), once with the
`smollm2-135m` switches (RoPE, RMSNorm, SwiGLU, 2 key/value heads). The GPT-2 run takes `--steps`
steps; the Llama run gets as many steps as fit in the same wall time, measured by a short
calibration run of each. Prints both final validation losses and writes both curves (validation
loss against seconds) to scripts/quickstart_gpt2_vs_llama.png.

    python scripts/compare_quickstart.py                 # 400 GPT-2 steps, as the quickstart
    python scripts/compare_quickstart.py --steps 150     # quicker
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

from scratch_gpt.cli import main as scratch_gpt

SHAPES = {
    "GPT-2 (learned positions, LayerNorm, GELU)": [],
    "Llama (RoPE, RMSNorm, SwiGLU, GQA 4:2)": ["--preset", "smollm2-135m", "--num-kv-heads", "2"],
}


def run(folder: Path, steps: int, shape: list[str]) -> tuple[float, list[tuple[int, float]]]:
    """Seconds the quickstart took, and its (step, validation loss) points."""
    start = time.perf_counter()
    code = scratch_gpt(
        ["quickstart", "--output-dir", str(folder), "--max-steps", str(steps), "--eval-every", str(max(steps // 8, 1)),
         "--no-progress", *shape]
    )
    seconds = time.perf_counter() - start
    if code:
        raise SystemExit(f"quickstart failed with exit code {code}")
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return seconds, [(row["step"], row["eval_loss"]) for row in rows if "eval_loss" in row]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=400, help="steps of the GPT-2-shaped run (default: the quickstart's)")
    parser.add_argument("--calibration-steps", type=int, default=30)
    parser.add_argument("--plot", default=str(Path(__file__).with_name("quickstart_gpt2_vs_llama.png")))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # seconds per step of each shape (the fixed cost of tokenizer training and evaluation included in both)
        per_step = {name: run(tmp / f"calibrate{i}", args.calibration_steps, shape)[0] / args.calibration_steps
                    for i, (name, shape) in enumerate(SHAPES.items())}
        names = list(SHAPES)
        steps = {names[0]: args.steps, names[1]: round(args.steps * per_step[names[0]] / per_step[names[1]])}
        curves = {}
        for i, name in enumerate(names):
            seconds, points = run(tmp / f"run{i}", steps[name], SHAPES[name])
            curves[name] = [(step * seconds / steps[name], loss) for step, loss in points]
            print(f"{name}: {steps[name]} steps in {seconds:.0f} s, final validation loss {points[-1][1]:.3f}")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4))
    for name, points in curves.items():
        axes.plot(*zip(*points), marker="o", label=name)
    axes.set_xlabel("wall time (s, approximate: step x seconds per step)")
    axes.set_ylabel("validation loss (nats/token)")
    axes.set_title("quickstart: GPT-2 vs Llama shape at equal wall time")
    axes.legend()
    figure.tight_layout()
    figure.savefig(args.plot, dpi=120)
    print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
