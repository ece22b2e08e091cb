"""FSDP2 on two CPU processes (gloo): each holds half the model, trains like one process, saves one
full folder and resumes bitwise; the fine-tuning commands under FSDP and DDP."""

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from conftest import launch_processes, sentences
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from scratch_gpt import ScratchGPTConfig, ScratchGPTForCausalLM
from scratch_gpt.cli import main
from scratch_gpt.tokenizer import config_kwargs, train_tokenizer
from scratch_gpt.training.loop import TrainingConfig, check_output_dir
from scratch_gpt.training.sharding import block_classes

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A corpus, a tiny base model (context 16 and 128) with its tokenizer, and fine-tuning records."""
    root = tmp_path_factory.mktemp("sharding")
    texts = sentences(200)
    (root / "corpus.jsonl").write_text("".join(json.dumps({"text": text}) + "\n" for text in texts))
    tokenizer = train_tokenizer(texts, vocab_size=300, show_progress=False)
    for name, context in (("base", 16), ("base128", 128)):
        config = ScratchGPTConfig.from_preset(
            "tiny", hidden_size=32, num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=context, **config_kwargs(tokenizer)
        )
        torch.manual_seed(0)
        ScratchGPTForCausalLM(config).save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    words = ["fox", "dog", "cat", "owl"] * 8
    (root / "instructions.jsonl").write_text("".join(json.dumps({"instruction": f"Say {w}.", "output": w}) + "\n" for w in words))
    labelled = [{"text": ("good nice fine " if i % 2 else "bad awful poor ") + w, "label": i % 2} for i, w in enumerate(words * 2)]
    (root / "labels.jsonl").write_text("".join(json.dumps(row) + "\n" for row in labelled))
    return root


def launch(folder: Path, *argv, config_file: str | None = None) -> str:
    """`accelerate launch` of `scratch-gpt ARGV` on two CPU processes (gloo); returns stdout."""
    return launch_processes(["-m", "scratch_gpt.cli", *argv], cwd=folder, config_file=config_file)


def pretrain_flags(output_dir, *extra):
    return [
        "pretrain", "--data", "corpus.jsonl", "--init-from", "base", "--block-size", "16", "--max-steps", "10",
        "--warmup-steps", "2", "--lr", "3e-3", "--eval-every", "5", "--eval-batches", "4", "--log-every", "1",
        "--save-every", "5", "--report-to", "none", "--no-progress", "--output-dir", str(output_dir), *extra,
    ]  # fmt: skip


def train_losses(run: Path) -> list[float]:
    return [json.loads(line)["train_loss"] for line in (run / "metrics.jsonl").read_text().splitlines() if "train_loss" in line]


def shard_sizes(stdout: str) -> dict[int, tuple[int, int]]:
    """{process: (parameters it holds, parameters of the model)} as each process reported its slices."""
    found = re.findall(r"FSDP: process (\d) holds ([\d,]+) of ([\d,]+) parameters", stdout)
    return {int(p): (int(held.replace(",", "")), int(total.replace(",", ""))) for p, held, total in found}


def resume_from_first_checkpoint(run: Path, copy: Path, *launch_args) -> None:
    """Copy `run`, keep only its first checkpoint, resume to the end: the end must be `run`'s, bitwise."""
    shutil.copytree(run, copy)
    for checkpoint in sorted((copy / "checkpoints").iterdir())[1:]:
        shutil.rmtree(checkpoint)
    shutil.rmtree(copy / "model")
    stdout = launch(*launch_args, "--resume")
    assert "Resumed from" in stdout and "step-00000005" in stdout
    straight, resumed = load_file(run / "model" / "model.safetensors"), load_file(copy / "model" / "model.safetensors")
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[name], resumed[name]) for name in straight)


@pytest.mark.slow
@pytest.mark.processes
def test_fsdp_pretrain_shards_trains_like_one_process_saves_one_folder_and_resumes_bitwise(folder, monkeypatch):
    monkeypatch.chdir(folder)
    one = folder / "one"
    assert main(["pretrain", *[*pretrain_flags(one), "--batch-size", "4"][1:]]) == 0  # one process, in this one
    stdout = launch(folder, *pretrain_flags("fsdp", "--batch-size", "2", "--fsdp"))
    run = folder / "fsdp"

    # each process holds half of the parameters, counted from its own slices (DTensor.to_local)
    sizes = shard_sizes(stdout)
    assert sorted(sizes) == [0, 1] and sizes[0][1] == sum(p.numel() for p in ScratchGPTForCausalLM.from_pretrained(folder / "base").parameters())
    assert all(abs(held - total / 2) <= 0.01 * total for held, total in sizes.values())

    # the same losses as one process with the same global batch
    assert len(train_losses(run)) == 10
    assert train_losses(run) == pytest.approx(train_losses(one), rel=1e-5)

    # one full folder, laid out as one process saves it, holding the gathered weights
    saved, one_saved = load_file(run / "model" / "model.safetensors"), load_file(one / "model" / "model.safetensors")
    assert saved.keys() == one_saved.keys()
    assert json.loads((run / "model" / "config.json").read_text())["architectures"] == ["ScratchGPTForCausalLM"]
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    dcp_to_torch_save(run / "checkpoints" / "step-00000010" / "sharded", folder / "gathered.pt")  # the slices, joined
    gathered = torch.load(folder / "gathered.pt", weights_only=False)["model"]
    loaded = AutoModelForCausalLM.from_pretrained(run / "model")
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    assert all(torch.equal(tensor, gathered[name]) for name, tensor in loaded.state_dict().items())
    assert all(torch.allclose(saved[name], one_saved[name], atol=1e-5) for name in saved)

    # interrupted after the checkpoint of step 5, resumed from its slices: the same final weights
    resume_from_first_checkpoint(run, folder / "fsdp-resumed", folder, *pretrain_flags("fsdp-resumed", "--batch-size", "2", "--fsdp"))


@pytest.mark.slow
@pytest.mark.processes
def test_ddp_pretrain_resumes_bitwise(folder):
    launch(folder, *pretrain_flags("ddp", "--batch-size", "2"))
    resume_from_first_checkpoint(folder / "ddp", folder / "ddp-resumed", folder, *pretrain_flags("ddp-resumed", "--batch-size", "2"))


@pytest.mark.slow
@pytest.mark.processes
def test_a_new_model_under_fsdp_is_initialised_in_its_slices(folder):
    # FSDP switched on by the README's CPU recipe (an accelerate FSDP config) rather than --fsdp
    flags = pretrain_flags("new", "--batch-size", "2", "--max-steps", "2", "--save-every", "0")
    flags[flags.index("--init-from") : flags.index("--init-from") + 2] = ["--tokenizer", "base", "--hidden-size", "32", "--num-layers", "2", "--num-heads", "2"]
    sizes = shard_sizes(launch(folder, *flags, config_file="accelerate_fsdp_cpu.yaml"))
    assert sorted(sizes) == [0, 1]
    assert all(abs(held - total / 2) <= 0.01 * total for held, total in sizes.values())
    embedding = load_file(folder / "new" / "model" / "model.safetensors")["model.embed_tokens.weight"]
    first, second = embedding.chunk(2)  # the slices of process 0 and 1: drawn independently
    assert not torch.allclose(first, second, atol=1e-3)
    assert 0.01 < embedding.std().item() < 0.04  # N(0, 0.02), moved by two steps


@pytest.mark.slow
@pytest.mark.processes
def test_fsdp_instruct_generates_on_every_process_and_saves_one_adapter(folder):
    flags = ["finetune-instruct", "--model", folder / "base128", "--data", "instructions.jsonl", "--output-dir", "instruct",
             "--max-steps", "2", "--batch-size", "2", "--no-progress", "--max-new-tokens", "4", "--max-answers", "3"]  # fmt: skip
    stdout = launch(folder, *flags, "--fsdp", "--lora")
    assert stdout.count("saved to") == 1 and len(shard_sizes(stdout)) == 2
    out = folder / "instruct"
    assert {"adapter_model.safetensors", "answers.jsonl", "generation_config.json", "README.md"} <= {p.name for p in out.iterdir()}
    # the answers are those of the saved adapter, generated by one process
    from scratch_gpt.inference.generation import load_for_chat
    from scratch_gpt.training.instruct import generate_answers

    model, tokenizer, generation_config = load_for_chat(str(out))
    records = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
    conversations = [[*r["messages"], {"role": "assistant", "content": r["reference"]}] for r in records]
    assert [r["answer"] for r in records] == generate_answers(model, tokenizer, conversations, generation_config, batch_size=2)


@pytest.mark.slow
@pytest.mark.processes
@pytest.mark.parametrize("sharded", [True, False], ids=["fsdp", "ddp"])
def test_classifier_under_two_processes_evaluates_every_example_like_one_process(folder, sharded, monkeypatch):
    monkeypatch.chdir(folder)
    flags = ["finetune-classifier", "--model", "base", "--data", "labels.jsonl", "--max-steps", "3", "--no-progress", "--lr", "1e-3"]
    name = "classifier-fsdp" if sharded else "classifier-ddp"
    if not (folder / "classifier-one").exists():
        assert main(["finetune-classifier", *flags[1:], "--batch-size", "4", "--output-dir", str(folder / "classifier-one")]) == 0
    stdout = launch(folder, *flags, "--batch-size", "2", "--output-dir", name, *(["--fsdp"] if sharded else []))
    assert stdout.count("saved to") == 1 and len(shard_sizes(stdout)) == (2 if sharded else 0)
    one = json.loads((folder / "classifier-one" / "metrics.json").read_text())
    two = json.loads((folder / name / "metrics.json").read_text())
    for key in ("test_loss", "test_accuracy", "initial_eval_loss", "eval_loss", "accuracy", "train_loss"):
        assert two[key] == pytest.approx(one[key], rel=1e-5), key
    saved = load_file(folder / name / "model.safetensors")
    assert saved.keys() == load_file(folder / "classifier-one" / "model.safetensors").keys()


@pytest.mark.slow
@pytest.mark.processes
def test_a_failing_launch_shows_the_error_of_the_process_that_broke(tmp_path):
    """Process 1 raises; process 0 only sees gloo's "Connection closed by peer" at its barrier. The
    failure must show process 1's own error, not only the end of the launcher's output."""
    script = tmp_path / "break_process_1.py"
    script.write_text(
        "from accelerate import PartialState\n"
        "state = PartialState(cpu=True)\n"
        "if state.process_index == 1:\n"
        "    raise ValueError('process 1 broke on purpose: zebra-42')\n"
        "state.wait_for_everyone()\n"
    )
    with pytest.raises(pytest.fail.Exception) as failed:
        launch_processes([script], cwd=tmp_path)
    report = str(failed.value)
    process_1 = report[report.index("--- process 1's stderr:") :]
    assert "ValueError: process 1 broke on purpose: zebra-42" in process_1
    assert "--- process 0's stderr:" in report


# ----------------------------------------------------------------------------------------------
# Bad input: one sentence, before any work.


def test_fsdp_needs_a_model_made_of_blocks():
    with pytest.raises(ValueError, match="names no block class to shard"):
        block_classes(torch.nn.Sequential(torch.nn.Linear(2, 2)))
    assert [cls.__name__ for cls in block_classes(ScratchGPTForCausalLM(ScratchGPTConfig.from_preset("tiny")))] == ["ScratchGPTBlock"]


def test_a_global_batch_the_processes_cannot_split_fails_before_any_work(folder, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.chdir(folder)
    assert main(["pretrain", *pretrain_flags(str(tmp_path / "run"), "--global-batch-size", "8")[1:]]) == 2
    assert "--global-batch-size 8 does not split evenly over 3 processes x 1 accumulation steps" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    monkeypatch.setenv("WORLD_SIZE", "2")
    config = TrainingConfig(output_dir=str(tmp_path / "ok"), global_batch_size=8, gradient_accumulation_steps=2)
    check_output_dir(config)  # 8 = 2 processes x 2 steps x 2 examples


def test_fsdp_refuses_fp16_in_one_sentence(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="use --mixed-precision bf16"):
        check_output_dir(TrainingConfig(output_dir=str(tmp_path / "x"), fsdp=True, mixed_precision="fp16"))


def test_the_strategy_builds_the_model_of_a_factory_in_its_build_context(folder, monkeypatch):
    """The trainer calls a command's factory inside the strategy's build context: under FSDP a read
    model is read by the main process only (the others build shapes on meta), a new one
    (`NewModel`) is shapes on every process; one process, or DDP, builds as usual."""
    from scratch_gpt.training import parallel

    read = lambda: ScratchGPTForCausalLM.from_pretrained(folder / "base")  # noqa: E731
    new = parallel.NewModel(lambda: ScratchGPTForCausalLM(ScratchGPTConfig.from_preset("tiny", hidden_size=32, num_attention_heads=2)))
    on_meta = lambda model: all(p.is_meta for p in model.parameters())  # noqa: E731
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert isinstance(parallel.choose(fsdp=False), parallel.DDP) and isinstance(parallel.choose(fsdp=True), parallel.FSDP2)
    assert not on_meta(parallel.choose().build(read)) and not on_meta(parallel.choose().build(new))
    for rank, read_on_meta in (("0", False), ("1", True)):
        monkeypatch.setenv("RANK", rank)
        assert on_meta(parallel.FSDP2().build(read)) == read_on_meta
        assert on_meta(parallel.FSDP2().build(new))
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert type(parallel.choose(fsdp=True)) is parallel.Plain


# ----------------------------------------------------------------------------------------------
# Past one machine: two "machines" of one CPU process each, on this machine's loopback


def launch_two_nodes(folder: Path, logs: Path, *argv) -> str:
    """`scratch-gpt ARGV` as the README's two-machine recipe runs it, with 127.0.0.1 as the main
    machine's address: two `accelerate launch --num_machines 2 --machine_rank 0|1` at once, one
    process each (gloo). Returns the main machine's stdout; fails the test if either machine fails."""
    for rank, (code, stderr) in enumerate(run_two_nodes(folder, logs, ["-m", "scratch_gpt.cli", *map(str, argv)])):
        if code:
            pytest.fail(f"machine {rank} exited with {code}:\n{stderr[-3000:]}", pytrace=False)
    return (logs / "node0.out").read_text()


def run_two_nodes(folder: Path, logs: Path, program: list, node1_prefix: list = ()) -> list[tuple[int, str]]:
    """`python PROGRAM` on two "machines" of one CPU process each (see `launch_two_nodes`); machine 1's
    command starts with `node1_prefix` (another view of the filesystem). Returns (exit status, stderr) of each."""
    import socket
    import subprocess
    import sys

    from conftest import launch_env

    with socket.socket() as probe:  # a free port for the rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = launch_env()
    logs.mkdir(parents=True, exist_ok=True)
    nodes = []
    for rank in (0, 1):
        launcher = ["--multi_gpu", "--num_machines", "2", "--num_processes", "2", "--machine_rank", str(rank),
                    "--main_process_ip", "127.0.0.1", "--main_process_port", str(port)]  # fmt: skip
        out, err = open(logs / f"node{rank}.out", "w"), open(logs / f"node{rank}.err", "w")  # files: no full pipe blocks a node
        command = [*(node1_prefix if rank else []), sys.executable, "-m", "accelerate.commands.launch", *launcher, *program]
        nodes.append((subprocess.Popen(command, cwd=folder, env=env, stdout=out, stderr=err), out, err))
    results = []
    for rank, (node, out, err) in enumerate(nodes):
        node.wait(timeout=600)
        out.close(), err.close()
        results.append((node.returncode, (logs / f"node{rank}.err").read_text()))
    return results


def same_weights(a: Path, b: Path) -> bool:
    first, second = load_file(a / "model" / "model.safetensors"), load_file(b / "model" / "model.safetensors")
    return first.keys() == second.keys() and all(torch.equal(first[name], second[name]) for name in first)


@pytest.mark.slow
@pytest.mark.processes
@pytest.mark.parametrize("strategy", [[], ["--fsdp"]], ids=["ddp", "fsdp"])
def test_two_machines_on_loopback_save_what_one_machine_saves_and_resume_bitwise(folder, tmp_path, strategy):
    two = tmp_path / "two-machines"
    launch_two_nodes(folder, tmp_path / "logs", *pretrain_flags(two, *strategy))
    one = tmp_path / "one-machine"
    launch(folder, *pretrain_flags(one, *strategy))  # two processes on one machine, the same seed
    assert same_weights(two, one) and train_losses(two) == train_losses(one)
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())  # one folder, written once
    # both machines stopped after the first checkpoint, then resumed: the end is bitwise the same
    resumed = tmp_path / "resumed"
    shutil.copytree(two, resumed)
    for checkpoint in sorted((resumed / "checkpoints").iterdir())[1:]:
        shutil.rmtree(checkpoint)
    shutil.rmtree(resumed / "model")
    stdout = launch_two_nodes(folder, tmp_path / "logs-resumed", *pretrain_flags(resumed, *strategy), "--resume")
    assert "Resumed from" in stdout and "step-00000005" in stdout
    assert same_weights(two, resumed)


# A machine whose --output-dir is its own folder, not the one the others share: machine 1 runs in a
# mount namespace of its own (`unshare -m`), with an empty tmpfs mounted over the output folder.


def own_view_of(folder: Path) -> list[str]:
    """A command prefix that runs the command with an empty tmpfs over `folder`, seen by it alone."""
    return ["unshare", "-m", "--propagation", "private", "sh", "-c", 'mount -t tmpfs none "$0" && exec "$@"', str(folder)]


def can_unshare(tmp_path: Path) -> bool:
    import subprocess

    (tmp_path / "probe").mkdir()
    done = subprocess.run([*own_view_of(tmp_path / "probe"), "true"], capture_output=True)
    return done.returncode == 0


@pytest.mark.slow
@pytest.mark.processes
def test_an_output_dir_the_machines_do_not_share_stops_every_machine_with_one_sentence(folder, tmp_path):
    if not can_unshare(tmp_path):
        pytest.skip("unshare -m and mount need root (CAP_SYS_ADMIN) here")
    output_dir = tmp_path / "run"
    output_dir.mkdir()
    program = ["-m", "scratch_gpt.cli", *pretrain_flags(output_dir, "--max-steps", "2", "--save-every", "0")]

    # machine 1 sees a folder of its own at that path: both machines stop, each with the sentence
    results = run_two_nodes(folder, tmp_path / "logs-own", program, node1_prefix=own_view_of(output_dir))
    sentence = (
        f"scratch-gpt pretrain: error: --output-dir {str(output_dir)!r} is not shared between the machines: machine 1 "
        "does not see the file the main machine wrote in it; put --output-dir on a filesystem every machine mounts "
        "at that path (NFS, a cluster filesystem), or run on one machine."
    )
    for rank, (code, stderr) in enumerate(results):
        assert code != 0 and sentence in stderr, f"machine {rank}: {stderr[-2000:]}"
        assert "Traceback" not in stderr.split(sentence)[0][-200:]  # (torchrun reports the exit below it)
    assert list(output_dir.iterdir()) == []  # stopped before any work; the main machine's file is removed again

    # one folder for both machines: the run trains, and the check leaves nothing of its own behind
    assert [code for code, _ in run_two_nodes(folder, tmp_path / "logs-shared", program)] == [0, 0]
    assert (output_dir / "model" / "model.safetensors").is_file()
    assert not [p.name for p in output_dir.iterdir() if p.name.startswith(".shared-")]
