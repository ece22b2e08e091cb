"""How fast the CLI answers before any work: `scratch-gpt --help`, `scratch-gpt CMD --help` and a bad flag.

Each is a fresh process (what a user waits for), run `--repeats` times alternated with its peer; the
peer is the floor under any Python CLI, `python -c "import argparse"`. It prints the median wall time
with its spread, the ratio to the peer, and whether a heavy library was imported (none may be before a
command runs). The target: each median under 1 s on a 2-core machine.

    python scripts/bench_cli.py [--repeats 5]
"""

import argparse
import shutil
import statistics
import subprocess
import sys
import time

HEAVY = ("torch", "transformers", "peft", "datasets", "accelerate")
CASES = {
    "scratch-gpt --help": ["--help"],
    "scratch-gpt pretrain --help": ["pretrain", "--help"],
    "scratch-gpt finetune-instruct --help": ["finetune-instruct", "--help"],
    "scratch-gpt chat --help": ["chat", "--help"],
    "scratch-gpt pretrain --lr nan (an error)": ["pretrain", "--lr", "nan"],
}
PEER = [sys.executable, "-c", "import argparse"]
# The CLI's entry point as the console script runs it, then the heavy modules it imported, on stderr.
PROBE = (
    "import sys\nfrom scratch_gpt.cli import main\ncode = main(sys.argv[1:])\n"
    f"print('HEAVY:' + ','.join(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)\nsys.exit(code)"
)


def wall(argv: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True)
    return time.perf_counter() - start, done.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    script = shutil.which("scratch-gpt")
    print(f"{'case':<42} {'median s':>9} {'min-max s':>13} {'peer s':>7} {'ratio':>6}  heavy imports")
    for name, argv in CASES.items():
        ours, peer, heavy = [], [], set()
        for _ in range(args.repeats):  # alternated, so that load on the machine hits both alike
            seconds, _ = wall([script, *argv]) if script else wall([sys.executable, "-m", "scratch_gpt.cli", *argv])
            ours.append(seconds)
            peer.append(wall(PEER)[0])
            _, stderr = wall([sys.executable, "-c", PROBE, *argv])
            heavy |= {m for line in stderr.splitlines() if line.startswith("HEAVY:") for m in line[6:].split(",") if m}
        median, peer_median = statistics.median(ours), statistics.median(peer)
        print(
            f"{name:<42} {median:>9.3f} {min(ours):>6.3f}-{max(ours):<6.3f} {peer_median:>7.3f} "
            f"{median / peer_median:>6.1f}  {', '.join(sorted(heavy)) or 'none'}"
        )
        if heavy or median >= 1.0:
            print(f"  ^ over the target (under 1 s, no heavy import): {name}")


if __name__ == "__main__":
    main()
