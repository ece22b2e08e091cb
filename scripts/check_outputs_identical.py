"""Record what every training command writes on tiny seeded data, and compare two such records.

    python scripts/check_outputs_identical.py record before.json [--workdir DIR] [--keep DIR]
    python scripts/check_outputs_identical.py compare before.json after.json   # exit 1: a difference

`record` runs the CASES below, each in new processes (CPU, offline, one thread, the package of the
checkout this script is in) in DIR (default: a new temporary folder). Per case it stores the sha256
of each file written (not checkpoints, images or dot-files), the metrics rows without timing fields,
and a copy of each `*.safetensors` in --keep (default: `<OUT>-keep` beside OUT.json). `compare`
prints per file: identical, equal within 1e-6, or DIFFERENT; it fails on weights more than 1e-6
apart (max abs), metrics more than 1e-6 apart (relative), any other changed file or a missing one.
PYTHONHASHSEED is fixed: PEFT writes `target_modules`, a set, in hash order (adapter_config.json, card).
"""

import argparse
import hashlib
import json
import math
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARKER = ".check_outputs_identical"
TIMING_KEY = re.compile(r"(^|_)(runtime|time|mfu)($|_)|_s$|per_s")
TOLERANCE = 1e-6
WORDS = "the a model token learns reads writes returns each every small large list value key name file".split()
ANIMALS = "fox dog cat owl bee cow".split()

PRETRAIN = ["--data", "corpus.jsonl", "--block-size", "256", "--hidden-size", "32", "--num-layers", "2",  # 44K parameters
            "--num-heads", "2", "--batch-size", "4", "--warmup-steps", "2", "--lr", "3e-3", "--eval-every", "3",
            "--eval-batches", "4", "--log-every", "1", "--save-every", "3", "--report-to", "none", "--no-progress"]
FINETUNE = ["--model", "pretrain/model", "--max-steps", "4", "--batch-size", "8", "--lr", "1e-3", "--eval-every", "2",
            "--log-every", "1", "--report-to", "none", "--no-progress"]
TWO_PROCESSES = [*PRETRAIN, "--batch-size", "2", "--max-steps", "6", "--tokenizer", "tokenizer"]  # later flags win

# case name -> (output folder, [(launcher, argv), ...]); "cli": one process, "launch": 2 gloo processes.
CASES = {
    "train-tokenizer": ("tokenizer", [("cli", ["train-tokenizer", "--data", "corpus.jsonl", "--vocab-size", "300", "--output-dir", "tokenizer"])]),
    "pretrain": ("pretrain", [("cli", ["pretrain", *PRETRAIN, "--vocab-size", "300", "--max-steps", "6", "--output-dir", "pretrain"])]),
    "quickstart": ("quickstart", [("cli", ["quickstart", "--max-steps", "4", "--eval-every", "2", "--no-progress", "--output-dir", "quickstart"])]),
    "pretrain-resume": ("resume", [
        ("cli", ["pretrain", *PRETRAIN, "--tokenizer", "tokenizer", "--max-steps", "3", "--output-dir", "resume"]),
        ("cli", ["pretrain", *PRETRAIN, "--tokenizer", "tokenizer", "--max-steps", "6", "--resume", "--output-dir", "resume"])]),
    "finetune-classifier": ("classifier", [("cli", ["finetune-classifier", *FINETUNE, "--data", "labels.tsv", "--output-dir", "classifier"])]),
    "finetune-classifier-lora": ("classifier-lora", [("cli", ["finetune-classifier", *FINETUNE, "--data", "labels.tsv", "--lora", "--output-dir", "classifier-lora"])]),
    "finetune-instruct": ("instruct", [("cli", ["finetune-instruct", *FINETUNE, "--data", "instruct.json", "--mask-prompt",
                                                "--max-answers", "3", "--max-new-tokens", "8", "--output-dir", "instruct"])]),
    "finetune-dpo": ("dpo", [("cli", ["finetune-dpo", *FINETUNE, "--data", "prefs.json", "--output-dir", "dpo"])]),
    "pretrain-ddp-2proc": ("ddp", [("launch", [*TWO_PROCESSES, "--output-dir", "ddp"])]),
    "pretrain-fsdp-2proc": ("fsdp", [("launch", [*TWO_PROCESSES, "--fsdp", "--output-dir", "fsdp"])]),
}  # fmt: skip


def write_data(workdir: Path) -> None:
    """A corpus, a classification TSV, instruction and preference records, all from Random(0)."""
    rng = random.Random(0)
    sentence = lambda: " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 9)))
    texts = [". ".join(sentence() for _ in range(3)) + "." for _ in range(300)]  # 300 documents of 3 sentences
    (workdir / "corpus.jsonl").write_text("".join(json.dumps({"text": text}) + "\n" for text in texts))
    moods = [["bad", "awful", "poor", "weak"], ["good", "nice", "fine", "great"]]  # label 0 "neg", 1 "pos"
    rows = [f"{rng.choice(moods[i % 2])} {sentence()}\t{['neg', 'pos'][i % 2]}\n" for i in range(80)]
    (workdir / "labels.tsv").write_text("text\tlabel\n" + "".join(rows))
    (workdir / "instruct.json").write_text(json.dumps([  # instruction records: Alpaca's instruction, input, output
        {"instruction": "Name the animal in the text.", "input": f"the {a} {sentence()}", "output": f"The animal is a {a}."}
        for a in [rng.choice(ANIMALS) for _ in range(40)]], indent=1))  # fmt: skip
    (workdir / "prefs.json").write_text(json.dumps([  # preference pairs: the book's instruction, input, chosen, rejected
        {"instruction": "Name an animal.", "input": f"one like a {good}", "chosen": f"A {good}.", "rejected": f"A {bad}, maybe."}
        for good, bad in [rng.sample(ANIMALS, 2) for _ in range(40)]], indent=1))  # fmt: skip


def command(launcher: str, argv: list[str]) -> list[str]:
    """`scratch_gpt.cli.main(argv)` in a new process, or `pretrain` on 2 CPU processes (gloo) as the README shows."""
    if launcher == "cli":
        return [sys.executable, "-c", "import sys; from scratch_gpt.cli import main; sys.exit(main(sys.argv[1:]))", *argv]
    script = ROOT / "scripts" / "pretrain.py"  # the project's `accelerate launch` entry point
    script = [str(script)] if script.is_file() else ["-m", "scratch_gpt.cli", "pretrain"]
    with socket.socket() as sock:  # a free port for the processes to meet on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
            "--main_process_port", str(port), *script, *argv]  # fmt: skip


def describe(path: Path, workdir: Path) -> dict:
    """sha256 (timings and the work folder's path taken out of text), metrics rows, small JSON files' content."""
    data, entry = path.read_bytes(), {}
    if path.suffix == ".safetensors":
        return {"sha256": hashlib.sha256(data).hexdigest()}
    text = data.decode("utf-8", errors="surrogateescape").replace(str(workdir), "<WORKDIR>")
    if path.name in ("metrics.jsonl", "metrics.json"):  # one row per line, or one row (the final results)
        rows = [json.loads(line) for line in text.splitlines() if line.strip()] if path.suffix == ".jsonl" else [json.loads(text)]
        entry["rows"] = [{key: value for key, value in row.items() if not TIMING_KEY.search(key)} for row in rows]
        text = json.dumps(entry["rows"])
    elif path.suffix == ".md":  # model cards: drop the table rows of timings (| runtime_s | 0.07 |)
        text = "\n".join(line for line in text.splitlines() if not TIMING_KEY.search(line.split("|")[1].strip() if "|" in line else ""))
    elif path.suffix == ".json" and len(data) < 20000:
        entry["content"] = json.loads(text)
    entry["sha256"] = hashlib.sha256(text.encode("utf-8", errors="surrogateescape")).hexdigest()
    return entry


def prepare(folder: Path) -> Path:
    """An empty folder: new, or one this script made before (never a folder of someone else's)."""
    if folder.exists() and any(folder.iterdir()) and not (folder / MARKER).exists():
        sys.exit(f"{folder} is not empty and was not made by this script; pick another folder")
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MARKER).write_text("made by check_outputs_identical.py; emptied by its next run\n")
    return folder


def record(args) -> int:
    out = Path(args.out).resolve()
    workdir = prepare(Path(args.workdir or tempfile.mkdtemp(prefix="check-outputs-")).resolve())
    keep = prepare(Path(args.keep or out.with_name(out.stem + "-keep")).resolve())
    write_data(workdir)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(workdir / ".datasets-cache"), "CUDA_VISIBLE_DEVICES": "",
           "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}  # fmt: skip  (see the docstring)
    probe = [sys.executable, "-c", "import scratch_gpt, torch, transformers; print(scratch_gpt.__file__, torch.__version__, transformers.__version__)"]
    package, torch_version, transformers_version = subprocess.run(probe, env=env, capture_output=True, text=True, check=True).stdout.split()
    git = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], check=False, capture_output=True, text=True).stdout.strip()
    print(f"scratch_gpt from {package} (commit {git or '?'}); work folder {workdir}", flush=True)
    result = {"commit": git, "package": package, "torch": torch_version, "transformers": transformers_version, "cases": {}}
    failed, start = False, time.perf_counter()
    for name, (folder, steps) in CASES.items():
        case_start, case = time.perf_counter(), result["cases"].setdefault(name, {"returncodes": [], "files": {}})
        for launcher, argv in steps:
            done = subprocess.run(command(launcher, argv), check=False, cwd=workdir, env=env, capture_output=True, text=True)
            case["returncodes"].append(done.returncode)
            with open(workdir / f"{name}.log", "a") as log:  # each case's output, kept for reading
                log.write(done.stdout + done.stderr)
            if done.returncode:
                failed = True
                print(f"  {name}: exit status {done.returncode}\n{done.stderr[-3000:]}", file=sys.stderr)
        for path in sorted((workdir / folder).rglob("*")):
            relative = path.relative_to(workdir / folder)
            if not path.is_file() or path.suffix == ".png" or "tfevents" in path.name or any(
                part.startswith(".") or part in ("checkpoints", "runs", "logs") for part in relative.parts
            ):  # images, TensorBoard logs, checkpoints and bookkeeping dot-files are not outputs to compare
                continue
            entry = describe(path, workdir)
            if path.suffix == ".safetensors":
                copy = keep / f"{name}--{relative.as_posix().replace('/', '--')}"
                shutil.copyfile(path, copy)
                entry["keep"] = os.path.relpath(copy, out.parent)
            case["files"][relative.as_posix()] = entry
        case["seconds"] = round(time.perf_counter() - case_start, 1)  # informative only, never compared
        print(f"  {name}: {len(case['files'])} files, {case['seconds']} s", flush=True)
    result["seconds"] = round(time.perf_counter() - start, 1)
    out.write_text(json.dumps(result, indent=1, sort_keys=True))
    print(f"recorded {len(CASES)} cases in {result['seconds']} s to {out} (weights kept in {keep})")
    return 1 if failed else 0


def compare_weights(old: dict, new: dict, old_json: Path, new_json: Path) -> tuple[bool, str]:
    from safetensors.torch import load_file  # here: `record` itself needs no torch
    paths = [json_file.parent / entry.get("keep", "-") for entry, json_file in ((old, old_json), (new, new_json))]
    if not all(path.is_file() for path in paths):
        return False, "DIFFERENT (file bytes differ; a kept copy of the weights is missing, tensors not compared)"
    a, b = (load_file(str(path)) for path in paths)
    if a.keys() != b.keys():
        return False, f"DIFFERENT tensor names: only old {sorted(a.keys() - b.keys())}, only new {sorted(b.keys() - a.keys())}"
    worst, worst_name = 0.0, ""
    for key in sorted(a):
        if a[key].shape != b[key].shape or a[key].dtype != b[key].dtype:
            return False, f"DIFFERENT {key}: {a[key].dtype}{list(a[key].shape)} vs {b[key].dtype}{list(b[key].shape)}"
        diff = (a[key].double() - b[key].double()).abs().max().item() if a[key].numel() else 0.0
        if diff > worst or math.isnan(diff):  # a NaN in one of them stays the worst
            worst, worst_name = diff, key
    if worst <= TOLERANCE:
        return True, f"equal within {TOLERANCE:g} (max abs diff {worst:.3g}; file bytes differ)"
    return False, f"DIFFERENT max abs diff {worst:.3g} ({worst_name})"


def compare_rows(old: list, new: list) -> tuple[bool, str]:
    if len(old) != len(new):
        return False, f"DIFFERENT: {len(old)} rows vs {len(new)}"
    worst = 0.0
    for i, (a, b) in enumerate(zip(old, new)):
        if a.keys() != b.keys():
            return False, f"DIFFERENT keys in row {i}: {sorted(a.keys() ^ b.keys())}"
        for key in a:
            x, y = a[key], b[key]
            if isinstance(x, (int, float)) and isinstance(y, (int, float)) and not isinstance(x, bool):
                if not math.isclose(x, y, rel_tol=TOLERANCE, abs_tol=1e-12):
                    return False, f"DIFFERENT row {i} (step {a.get('step')}) {key}: {x!r} vs {y!r}"
                worst = max(worst, abs(x - y) / max(abs(x), abs(y), 1e-30))
            elif x != y:
                return False, f"DIFFERENT row {i} {key}: {x!r} vs {y!r}"
    return True, "identical" if worst == 0 else f"equal within {TOLERANCE:g} relative (max {worst:.3g})"


def compare(args) -> int:
    old_json, new_json = Path(args.old), Path(args.new)
    old, new, bad = json.loads(old_json.read_text()), json.loads(new_json.read_text()), 0
    print(f"old: commit {old['commit'][:10]} ({old['package']})\nnew: commit {new['commit'][:10]} ({new['package']})\n")
    for name, old_case in old["cases"].items():
        new_case = new["cases"].get(name, {"returncodes": "no such case", "files": {}})
        if old_case["returncodes"] != new_case["returncodes"]:
            bad += 1
            print(f"{name:26} {'(exit status)':34} DIFFERENT {old_case['returncodes']} vs {new_case['returncodes']}")
        for file in sorted(old_case["files"].keys() | new_case["files"].keys()):
            a, b = old_case["files"].get(file), new_case["files"].get(file)
            if a is None or b is None:
                ok, verdict = a is None, "EXTRA in new (not in baseline)" if a is None else "MISSING in new"
            elif "rows" in a and "rows" in b:
                ok, verdict = compare_rows(a["rows"], b["rows"])
            elif a["sha256"] == b["sha256"]:
                ok, verdict = True, "identical"
            elif a.get("content") is not None and a.get("content") == b.get("content"):
                ok, verdict = True, "same JSON content (formatting differs)"
            elif file.endswith(".safetensors"):
                ok, verdict = compare_weights(a, b, old_json, new_json)
            else:
                ok, verdict = False, "DIFFERENT"
                if isinstance(a.get("content"), dict) and isinstance(b.get("content"), dict):
                    keys = sorted(k for k in a["content"].keys() | b["content"].keys() if a["content"].get(k) != b["content"].get(k))
                    verdict += f" (keys: {', '.join(keys)})"
            bad += not ok
            print(f"{name:26} {file:34} {verdict}")
    print(f"\n{'all outputs identical (within tolerance)' if not bad else f'{bad} difference(s)'}")
    return 1 if bad else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    rec = commands.add_parser("record", help="run every case and write OUT.json")
    rec.add_argument("out", metavar="OUT.json")
    rec.add_argument("--workdir", help="folder to run in (default: a new temporary folder)")
    rec.add_argument("--keep", help="folder for copies of the weights (default: OUT-keep next to OUT.json)")
    cmp = commands.add_parser("compare", help="compare two records; exit 1 on any difference")
    cmp.add_argument("old", metavar="OLD.json")
    cmp.add_argument("new", metavar="NEW.json")
    args = parser.parse_args()
    return record(args) if args.command == "record" else compare(args)


if __name__ == "__main__":
    sys.exit(main())
