"""A SIGKILL while a command writes its folder leaves the previous output (or none), never a
half-written one. `SCRATCH_GPT_KILL_AT=<point>` makes `io_utils.atomic_directory` kill its own
process at a named point: `written` (new folder complete, not yet renamed) and `swapped` (old folder
moved aside, new one not yet in place); the next command (or `io_utils.recover`) restores it.
`push` stages its upload in a temporary folder of its own: killed there (`staged`) it changes nothing."""

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from scratch_gpt.cli import main
from scratch_gpt.io_utils import KILL_ENV, recover

ROOT = Path(__file__).resolve().parent.parent
WORDS = "the quick brown fox jumps over the lazy dog hello world tokens attention blocks".split()
FT = ["--max-steps", "2", "--batch-size", "2", "--no-progress"]
PT = ["--max-steps", "2", "--batch-size", "2", "--vocab-size", "300", "--hidden-size", "32", "--num-layers", "1",
      "--num-heads", "2", "--block-size", "16", "--report-to", "none", "--no-progress", "--save-every", "0"]


def hashes(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def command(name: str, tmp: Path) -> tuple[list[str], Path]:
    """(argv, the folder it replaces) of each command that writes a folder."""
    if name == "train-tokenizer":
        return ["train-tokenizer", "--data", str(tmp / "corpus.txt"), "--vocab-size", "300", "--output", str(tmp / "out")], tmp / "out"
    if name == "pretrain":
        return ["pretrain", "--data", str(tmp / "corpus.txt"), "--output-dir", str(tmp / "out"), *PT], tmp / "out" / "model"
    if name == "finetune-classifier":
        return ["finetune-classifier", "--model", str(tmp / "base"), "--data", str(tmp / "data.csv"), "--output-dir", str(tmp / "out"), *FT], tmp / "out"
    if name == "finetune-instruct":
        return ["finetune-instruct", "--model", str(tmp / "base"), "--data", str(tmp / "instr.jsonl"), "--output-dir", str(tmp / "out"),
                "--max-answers", "1", "--max-new-tokens", "2", *FT], tmp / "out"
    return ["export-gpt2", str(tmp / "base"), str(tmp / "out")], tmp / "out"


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, point",
    [("train-tokenizer", "written"), ("train-tokenizer", "swapped"), ("export-gpt2", "swapped"),
     ("pretrain", "swapped"), ("finetune-classifier", "written"), ("finetune-instruct", "swapped")],
)
def test_a_kill_while_saving_leaves_the_previous_output(make_base_dir, tmp_path, name, point):
    make_base_dir(max_position_embeddings=256)  # room for the chat template
    (tmp_path / "corpus.txt").write_text((" ".join(WORDS) + "\n") * 60)
    (tmp_path / "data.csv").write_text("text,label\n" + "".join(f"{w} {w},{'ab'[i % 2]}\n" for i, w in enumerate(WORDS * 3)))
    (tmp_path / "instr.jsonl").write_text("".join(json.dumps({"instruction": f"Say {w}", "output": w}) + "\n" for w in WORDS))
    argv, folder = command(name, tmp_path)
    assert main(argv) == 0  # the previous output
    previous = hashes(folder)

    env = {**os.environ, KILL_ENV: point, "PYTHONPATH": str(ROOT)}
    code = "import sys; from scratch_gpt.cli import main; sys.exit(main(sys.argv[1:]))"
    killed = subprocess.run([sys.executable, "-c", code, *argv], env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]

    if point == "written":
        assert hashes(folder) == previous  # the new folder was complete but not yet in place
    else:
        assert not folder.exists()  # between the renames: the previous folder lies beside it
    recover(folder)  # what the next command does first
    assert hashes(folder) == previous
    assert [p.name for p in folder.parent.iterdir() if p.name.startswith((".tmp-", ".old-"))] == []


@pytest.mark.slow
def test_a_kill_while_push_stages_the_folder_touches_nothing_of_the_users(make_base_dir, tmp_path):
    """`model.push_to_hub` stages a fresh save in a temporary folder of its own; killed there, the
    model folder it was loaded from is unchanged and nothing was sent."""
    base = make_base_dir(max_position_embeddings=64)
    previous = hashes(base)
    code = (
        "import sys, scratch_gpt; from transformers import AutoModelForCausalLM\n"
        f"AutoModelForCausalLM.from_pretrained({str(base)!r}).push_to_hub('me/model', token='hf_not_a_real_token')"
    )
    env = {**os.environ, KILL_ENV: "staged", "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    killed = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert hashes(base) == previous
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base"]  # nothing written beside it either


def test_a_second_writer_is_refused_and_the_lock_does_not_outlive_a_killed_run(tmp_path, monkeypatch, capsys):
    """Two runs on one output folder: the second is refused in one sentence naming the folder and the
    process; once the first is killed (SIGKILL: no clean-up runs), the folder is free again."""
    import time

    monkeypatch.chdir(tmp_path)
    (tmp_path / "corpus.txt").write_text("the quick brown fox jumps over the lazy dog. " * 200)
    holder = subprocess.Popen(  # a run that has passed its output check and is now writing
        [sys.executable, "-c", "import sys, time; from scratch_gpt.io_utils import check_output; "
         "check_output('run'); print('holding', flush=True); time.sleep(600)"],
        cwd=tmp_path, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "holding"
        argv = ["train-tokenizer", "--data", "corpus.txt", "--vocab-size", "300", "--output-dir", "run"]
        assert main(argv) == 2
        last = capsys.readouterr().err.strip().splitlines()[-1]
        assert "is being written by another run" in last and f"(process {holder.pid})" in last and "/run'" in last, last
        assert not (tmp_path / "run").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    time.sleep(0.1)
    assert main(argv) == 0  # the kernel dropped the dead process' lock
