"""`scratch-gpt prepare-data`: a corpus tokenised once into token shards; `pretrain --data PREPARED`
trains on exactly the blocks it would cut from the text, and resumes by seeking, not by reading."""

import json
import random
from collections import Counter
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from scratch_gpt.cli import main
from scratch_gpt.data import PackedStream, load_text_corpus, pack_dataset, train_val_split
from scratch_gpt.training.prepared import TokenBlocks, read_index, token_dtype
from scratch_gpt.tokenizer import train_tokenizer
from scratch_gpt.training.loop import EpochShuffleSampler

from conftest import SENTENCE_WORDS as WORDS, sentences


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A corpus of 200 documents, a tokenizer trained on it and another one, and the corpus prepared (shards of 500 ids)."""
    root = tmp_path_factory.mktemp("prepared")
    texts = sentences(200)
    (root / "corpus.jsonl").write_text("".join(json.dumps({"text": text}) + "\n" for text in texts))
    train_tokenizer(texts, vocab_size=300, show_progress=False).save_pretrained(root / "tok")
    train_tokenizer(texts[:50], vocab_size=280, show_progress=False).save_pretrained(root / "other-tok")
    flags = ["--data", root / "corpus.jsonl", "--tokenizer", root / "tok", "--shard-tokens", "500", "--num-proc", "2"]
    assert main(["prepare-data", *map(str, flags), "--output-dir", str(root / "prepared")]) == 0
    return root


def pretrain_flags(data, output_dir, *extra):
    return [
        "pretrain", "--data", str(data), "--block-size", "16", "--hidden-size", "32", "--num-layers", "2",
        "--num-heads", "2", "--batch-size", "4", "--max-steps", "12", "--warmup-steps", "2", "--lr", "3e-3",
        "--eval-every", "6", "--eval-batches", "4", "--log-every", "1", "--save-every", "6", "--report-to", "none",
        "--no-progress", "--output-dir", str(output_dir), *map(str, extra),
    ]  # fmt: skip


def train_losses(run) -> list[float]:
    return [json.loads(line)["train_loss"] for line in (run / "metrics.jsonl").read_text().splitlines() if "train_loss" in line]


def test_the_shards_hold_the_token_stream_pretrain_cuts_its_blocks_from(world):
    from transformers import AutoTokenizer

    index = read_index(world / "prepared")
    train = index["splits"]["train"]
    assert index["dtype"] == "uint16" and len(train["shards"]) == -(-train["tokens"] // 500) > 2
    assert [s["tokens"] for s in train["shards"][:-1]] == [500] * (len(train["shards"]) - 1)
    assert train["documents"] + index["splits"]["validation"]["documents"] == 200
    tokenizer = AutoTokenizer.from_pretrained(world / "tok")
    train_docs, val_docs = train_val_split(load_text_corpus(str(world / "corpus.jsonl")), 0.05, 0)
    for split, docs in (("train", train_docs), ("validation", val_docs)):
        for stride in (16, 5):  # disjoint blocks, and overlapping ones that cross the shards' ends
            blocks = TokenBlocks(world / "prepared", split, 16, stride)
            packed = pack_dataset(docs, tokenizer, block_size=16, stride=stride)
            assert len(blocks) == len(packed) > 0
            assert all(blocks[i]["input_ids"].tolist() == packed[i]["input_ids"] for i in range(len(blocks)))
    assert token_dtype(2**16) == np.uint16 and token_dtype(2**16 + 1) == np.uint32  # GPT-2's 50,257 ids fit in 16 bits


def test_pretrain_on_prepared_data_trains_on_the_same_blocks_as_on_the_text_and_resumes_by_seeking(world, monkeypatch):
    # the same run from the text, tokenised on the way, and from the shards: the same losses, exactly
    assert main(pretrain_flags(world / "corpus.jsonl", world / "from-text", "--tokenizer", world / "tok")) == 0
    assert main(pretrain_flags(world / "prepared", world / "from-shards")) == 0
    assert len(train_losses(world / "from-shards")) == 12
    assert train_losses(world / "from-shards") == train_losses(world / "from-text")
    metrics = json.loads((world / "from-shards" / "model" / "metrics.json").read_text())
    assert metrics["eval_loss"] == json.loads((world / "from-text" / "model" / "metrics.json").read_text())["eval_loss"]

    # interrupted after step 6, resumed: the same weights bitwise, and only the blocks of steps 7-12 read
    resumed = world / "resumed"
    shutil.copytree(world / "from-shards", resumed)
    shutil.rmtree(resumed / "checkpoints" / "step-00000012"), shutil.rmtree(resumed / "model")
    read, real = [], TokenBlocks.__getitem__
    monkeypatch.setattr(TokenBlocks, "__getitem__", lambda self, i: read.append((self.split, i)) or real(self, i))
    assert main([*pretrain_flags(world / "prepared", resumed), "--resume"]) == 0
    # the blocks of steps 7-12 in the epoch's order, plus the batch accelerate reads ahead; none before them
    order = list(EpochShuffleSampler(len(TokenBlocks(world / "prepared", "train", 16)), seed=0))
    assert [i for split, i in read if split == "train"] == order[6 * 4 : 13 * 4]
    straight, again = load_file(world / "from-shards" / "model" / "model.safetensors"), load_file(resumed / "model" / "model.safetensors")
    assert all(torch.equal(straight[name], again[name]) for name in straight)
    state = json.loads((resumed / "checkpoints" / "step-00000012" / "trainer_state.json").read_text())
    assert state["examples_in_epoch"] == 12 * 4 and state["processes"] == 1  # global examples consumed, not batches


def test_bad_prepared_data_is_one_sentence(world, tmp_path, capsys):
    def refused(argv) -> str:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "Traceback" not in err[0], err
        return err[0]

    other = tmp_path / "other-tokenizer"
    line = refused(pretrain_flags(world / "prepared", other, "--tokenizer", world / "other-tok"))
    assert "was tokenized with another tokenizer than --tokenizer" in line and not other.exists()
    assert "drop --streaming" in refused(pretrain_flags(world / "prepared", tmp_path / "s", "--streaming"))
    # a run started on one prepared folder, resumed on another one at the same path
    run = tmp_path / "run"
    data = tmp_path / "data"
    shutil.copytree(world / "prepared", data)
    assert main(pretrain_flags(data, run, "--max-steps", "6")) == 0
    shutil.rmtree(data)
    flags = ["--data", world / "corpus.jsonl", "--tokenizer", world / "tok", "--val-fraction", "0.2", "--output-dir", data]
    assert main(["prepare-data", *map(str, flags)]) == 0
    line = refused([*pretrain_flags(data, run), "--resume"])
    assert "the content of --data" in line and "changed since it started" in line
    (data / "train-00000.bin").write_bytes(b"12")  # a damaged shard
    assert "has the wrong size" in refused(pretrain_flags(data, tmp_path / "damaged"))


# ----------------------------------------------------------------------------------------------
# Two processes (gloo): each reads only its own share; one epoch trains no block twice, the blocks
# left out at the tails are counted, and the processes stop together.

RECORDER = """
import json, os, sys
from scratch_gpt import ScratchGPTForCausalLM
from scratch_gpt.cli import main

real = ScratchGPTForCausalLM.forward

def recording(self, input_ids=None, **kwargs):  # every training block, by the process that trained on it
    if self.training:
        with open(f"trained-{os.environ.get('RANK', '0')}.jsonl", "a") as file:
            file.write(json.dumps(input_ids.tolist()) + "\\n")
    return real(self, input_ids=input_ids, **kwargs)

ScratchGPTForCausalLM.forward = recording
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def numbered(tmp_path_factory, world):
    """Numbered documents in 4 files of unequal length (by files: process 0 gets files 0 and 2,
    process 1 files 1 and 3, which hold more), the same in one file (by rows: every other document),
    the recorder script, and the tokenizer of `world`."""
    root = tmp_path_factory.mktemp("numbered")
    rng, number = random.Random(1), 0
    (root / "docs").mkdir()
    for file, count in enumerate((20, 25, 20, 35)):
        rows = []
        for _ in range(count):
            rows.append({"text": f"document {number}: " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 30))) + "."})
            number += 1
        (root / "docs" / f"part-{file}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (root / "one-file.jsonl").write_text("".join(file.read_text() for file in sorted((root / "docs").iterdir())))
    (root / "record.py").write_text(RECORDER)
    return root


def trained(folder, rank) -> list[tuple]:
    lines = (folder / f"trained-{rank}.jsonl").read_text().splitlines()
    return [tuple(block) for line in lines for block in json.loads(line)]


def two_process_flags(data, out, *extra):
    flags = pretrain_flags(data, out, "--batch-size", "2", "--eval-every", "0", "--save-every", "0", *extra)
    return [flag for flag in flags if flag != "--no-progress"] + ["--no-progress"]


@pytest.mark.slow
@pytest.mark.processes
@pytest.mark.parametrize("data", ["docs", "one-file.jsonl"], ids=["by-files", "by-rows"])
def test_two_processes_each_read_their_own_share_of_a_stream_train_no_block_twice_and_stop_together(numbered, world, data):
    from transformers import AutoTokenizer

    import datasets.distributed
    from conftest import launch_processes

    tokenizer = AutoTokenizer.from_pretrained(world / "tok")
    train_docs, _ = train_val_split(load_text_corpus(str(numbered / data), streaming=True), 0.05, 0)
    shares = []  # the blocks each process packs from its share of the documents, in order
    for rank in (0, 1):
        share = datasets.distributed.split_dataset_by_node(train_docs, rank=rank, world_size=2)
        shares.append([tuple(row["input_ids"]) for row in pack_dataset(share, tokenizer, block_size=16)])
    steps = min(len(share) for share in shares) // 2  # the shorter share ends the epoch
    if data == "docs":
        assert len(shares[1]) // 2 > steps  # the longer one has full batches left when it ends
    out = numbered / f"stream-{data}"
    for rank in (0, 1):  # the recorder appends: start from nothing
        (numbered / f"trained-{rank}.jsonl").unlink(missing_ok=True)
    flags = two_process_flags(numbered / data, out, "--streaming", "--tokenizer", world / "tok", "--max-steps", steps + 1)
    launch_processes([numbered / "record.py", *flags], cwd=numbered)
    for rank in (0, 1):
        blocks = trained(numbered, rank)
        assert blocks[:-2] == shares[rank][: 2 * steps]  # its own share, in order, each block once
        assert blocks[-2:] == shares[rank][:2]  # the step after the epoch starts the next one
    assert not set(trained(numbered, 0)[:-2]) & set(trained(numbered, 1)[:-2])
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    left_out = [r["examples_left_out"] for r in records if "examples_left_out" in r]
    assert left_out == [sum(map(len, shares)) - 2 * 2 * steps] and left_out[0] > 0


@pytest.mark.slow
@pytest.mark.processes
def test_two_processes_read_their_own_blocks_of_prepared_shards_and_train_none_twice(numbered, world):
    from conftest import launch_processes

    for rank in (0, 1):
        (numbered / f"trained-{rank}.jsonl").unlink(missing_ok=True)
    blocks = TokenBlocks(world / "prepared", "train", 16)
    flags = [flag for flag in two_process_flags(world / "prepared", numbered / "shards") if flag not in ("--max-steps", "12")]
    launch_processes([numbered / "record.py", *flags, "--epochs", "1"], cwd=numbered)
    zero, one = trained(numbered, 0), trained(numbered, 1)
    every = [tuple(blocks[i]["input_ids"].tolist()) for i in range(len(blocks))]
    assert len(zero) == len(one) == len(blocks) // 4 * 2  # full global batches of 2 x 2
    # as many times as the epoch holds it (a few 16-token windows of this corpus are equal): each block once
    assert not Counter(zero + one) - Counter(every)
    metrics = json.loads((numbered / "shards" / "model" / "metrics.json").read_text())
    assert metrics["examples_left_out"] == len(blocks) % 4 == (Counter(every) - Counter(zero + one)).total() > 0


def steps_trained(folder) -> list[set]:
    """The blocks each optimizer step trained on, over every process (one micro-batch per step)."""
    ranks = [[json.loads(line) for line in path.read_text().splitlines()] for path in sorted(folder.glob("trained-*.jsonl"))]
    return [{tuple(block) for rank in ranks for block in rank[step]} for step in range(len(ranks[0]))]


@pytest.mark.slow
@pytest.mark.processes
@pytest.mark.parametrize("before, after", [(2, 1), (1, 2)], ids=["2-to-1", "1-to-2"])
@pytest.mark.parametrize("fsdp", [False, True], ids=["ddp", "fsdp"])
def test_a_run_resumes_on_another_number_of_processes_with_the_examples_that_come_next(world, tmp_path, before, after, fsdp):
    """DDP or FSDP (on one process: neither) with a global batch of 4 (2 x 2 or 1 x 4), prepared data,
    a checkpoint at step 5: resumed on the other number of processes, steps 6-10 train on the same
    blocks as the uninterrupted run, and the losses agree to float32 summation order (not bitwise: the
    mean of two means of 2 is summed in another order than the mean of 4). Under FSDP the checkpoint
    of 2 processes holds slices, read whole by 1; the one of 1 holds whole files, cut into slices by 2."""
    from conftest import launch_processes

    (tmp_path / "record.py").write_text(RECORDER)
    fsdp_flag = ["--fsdp"] if fsdp else []
    flags = lambda out: [*two_process_flags(world / "prepared", out), "--max-steps", "10", "--save-every", "5", "--global-batch-size", "4", *fsdp_flag]  # noqa: E731
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    launch_processes([tmp_path / "record.py", *flags(straight)], cwd=tmp_path, processes=before)
    trained_straight = steps_trained(tmp_path)
    shutil.copytree(straight, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step-00000010"), shutil.rmtree(resumed / "model")
    for path in tmp_path.glob("trained-*.jsonl"):
        path.unlink()
    stdout = launch_processes([tmp_path / "record.py", *flags(resumed), "--resume"], cwd=tmp_path, processes=after)
    assert "Resumed from" in stdout and "step-00000005" in stdout
    assert len(trained_straight) == 10 and steps_trained(tmp_path) == trained_straight[5:]  # the same examples, in the same steps
    assert train_losses(resumed)[-5:] == pytest.approx(train_losses(straight)[-5:], rel=1e-5)
    metrics = [json.loads((run / "model" / "metrics.json").read_text()) for run in (straight, resumed)]
    assert metrics[1]["eval_loss"] == pytest.approx(metrics[0]["eval_loss"], rel=1e-5)
    states = [json.loads((run / "checkpoints" / f"step-{step:08d}" / "trainer_state.json").read_text()) for run, step in ((straight, 5), (resumed, 10))]
    assert [state["processes"] for state in states] == [before, after]
    assert [state["sharded"] for state in states] == [fsdp and before == 2, fsdp and after == 2]  # slices, then whole files, or the reverse


# ----------------------------------------------------------------------------------------------
# A raw text stream resumes in the file it was reading: the checkpoint holds the stream's place
# (which file, how many rows into it, the tokens not yet cut into a block).


@pytest.mark.slow
def test_a_stream_resumes_in_the_file_it_was_reading_and_ends_with_the_same_weights(numbered, world, tmp_path, monkeypatch):
    import scratch_gpt.sources
    from scratch_gpt.training.loop import Trainer

    read = []  # the file of every row the reader yields; "training" where training starts reading
    real_reader, real_epoch = scratch_gpt.sources._texts_of_file, Trainer.run_epoch

    def counting_reader(path, *args):
        for text in real_reader(path, *args):
            read.append(path.name)
            yield text

    monkeypatch.setattr(scratch_gpt.sources, "_texts_of_file", counting_reader)
    monkeypatch.setattr(Trainer, "run_epoch", lambda self: read.append("training") or real_epoch(self))
    monkeypatch.setattr(PackedStream, "TOKENIZE_BATCH", 1)  # no read-ahead: both runs read exactly the rows they train on

    def training_reads(out, *extra) -> list[str]:
        read.clear()
        flags = ["--streaming", "--tokenizer", world / "tok", "--max-steps", "48", "--save-every", "24", "--eval-every", "0"]
        assert main([*pretrain_flags(numbered / "docs", out, *flags), *extra]) == 0
        return read[read.index("training") + 1 :]  # after validation's reading, which every run does first

    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    read_straight = training_reads(straight)
    shutil.copytree(straight, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step-00000048"), shutil.rmtree(resumed / "model")
    read_resumed = training_reads(resumed, "--resume")

    # the file the checkpoint was taken in (not the first) is read again from its first row; no file before it
    rows = {path.name: len(path.read_text().splitlines()) for path in (numbered / "docs").iterdir()}
    current = read_resumed[0]
    assert current != "part-0.jsonl" and read_resumed == read_straight[read_straight.index(current) :]
    assert read_straight.index(current) == sum(rows[name] for name in sorted(rows) if name < current)  # not read again
    straight_weights, resumed_weights = (load_file(run / "model" / "model.safetensors") for run in (straight, resumed))
    assert all(torch.equal(straight_weights[name], resumed_weights[name]) for name in straight_weights)
    assert train_losses(resumed) == train_losses(straight)
    state = json.loads((resumed / "checkpoints" / "step-00000048" / "trainer_state.json").read_text())
    stream = state["streams"][0]  # the one process' place: the tokens read, of which the buffer's are not yet in a block
    assert len(state["streams"]) == 1 and stream["tokens"] - len(stream["buffer"]) == 48 * 4 * 16
