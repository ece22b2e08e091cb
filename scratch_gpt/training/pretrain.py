"""Stage 6, pre-training: corpus -> tokenizer -> packed blocks -> GPT -> `save_pretrained` folder.

`scratch-gpt pretrain` takes flags and/or `--config run.yaml` (keys are the flag names, with `_` or
`-`; flags given on the command line win). `scratch-gpt quickstart` runs the same pipeline with
small fixed sizes on the built-in corpus, in a few minutes on a laptop CPU.

What lands in `--output-dir`: `model/` (model, tokenizer, generation config, model card, loss
curve: load it with `AutoModelForCausalLM.from_pretrained` or `pipeline("text-generation")`),
`checkpoints/`, `metrics.jsonl`, `loss_curve.png` and TensorBoard logs. `--data` may be a folder of
token shards written by `scratch-gpt prepare-data` (`scratch_gpt.training.prepared`): nothing is tokenized then. The same command runs under
`accelerate launch` (see `scripts/pretrain.py`) on many processes, GPUs or nodes.
"""

import itertools
import shutil
from pathlib import Path

from scratch_gpt.args import PretrainOptions, hyperparameters
from scratch_gpt.configuration_scratch_gpt import ScratchGPTConfig
from scratch_gpt.errors import BadInput, MissingFile
from scratch_gpt.training.loop import NewModel, check_output_dir, process_state, train
from scratch_gpt.training.run_config import check_shared_output_dir


def load_or_train_tokenizer(args: PretrainOptions, train_docs, output_dir: Path):
    """`--tokenizer`, else the tokenizer of `--init-from` (its ids are the model's), else a new one
    trained on the training documents only (never on validation text), by the main process; the
    others wait and load what it saved in `output_dir/.tokenizer`. A tokenizer without a pad token
    or chat template (GPT-2's) is completed (`complete_tokenizer`) and saved so with the model."""
    from transformers import AutoTokenizer

    from scratch_gpt.tokenizer import train_tokenizer, truncates_itself
    from scratch_gpt.training.finetune import load_base_tokenizer

    if args.tokenizer and not Path(args.tokenizer).is_dir():
        raise MissingFile(f"The tokenizer folder {args.tokenizer!r} does not exist; pass a saved tokenizer folder.")
    source = args.tokenizer or args.init_from or prepared_tokenizer(args.data)
    state = process_state()
    if source:
        try:
            tokenizer = load_base_tokenizer(source, args.trust_remote_code)
        except MissingFile:
            raise MissingFile(
                f"{source!r} holds no tokenizer; pass the one the model was trained with as --tokenizer."
            ) from None
    elif state.num_processes == 1:
        tokenizer = train_tokenizer(train_docs, vocab_size=args.vocab_size, show_progress=False)
    else:  # handed from the main process to the others through a hidden folder, removed once all have it
        handed = output_dir / ".tokenizer"
        if state.is_main_process:
            train_tokenizer(train_docs, vocab_size=args.vocab_size, show_progress=False).save_pretrained(handed)
        state.wait_for_everyone()
        tokenizer = AutoTokenizer.from_pretrained(handed, trust_remote_code=args.trust_remote_code)
        state.wait_for_everyone()
        if state.is_main_process:
            shutil.rmtree(handed)
    tokenizer.model_max_length = args.block_size
    return truncates_itself(tokenizer)  # documents are packed into blocks, never fed whole


def prepared_tokenizer(data) -> str | None:
    """The tokenizer folder of a `prepare-data` folder (None for any other `--data`)."""
    from scratch_gpt.training.prepared import TOKENIZER_FOLDER, is_prepared

    return str(Path(data) / TOKENIZER_FOLDER) if is_prepared(data) else None


def read_prepared(args: PretrainOptions, tokenizer):
    """`--data` a `prepare-data` folder: the blocks of its two splits, read from the memory-mapped
    shards (no tokenisation), and the statistics it recorded. The run's tokenizer (the folder's, or
    --tokenizer / --init-from's) must be the one the shards were made with."""
    from scratch_gpt.training.prepared import TokenBlocks, check_tokenizer, read_index

    if args.streaming:
        raise BadInput(f"--streaming reads raw text lazily, and {args.data!r} holds token shards that are read lazily already; drop --streaming.")
    index = read_index(args.data)
    named = f"--tokenizer {args.tokenizer!r}" if args.tokenizer else f"--init-from {args.init_from!r}'s"
    if args.tokenizer or args.init_from:
        check_tokenizer(args.data, index, tokenizer, named)
    train_blocks, val_blocks = (TokenBlocks(args.data, split, args.block_size, args.stride, index) for split in ("train", "validation"))
    if len(train_blocks) == 0:
        tokens = index["splits"]["train"]["tokens"]
        raise BadInput(f"The prepared data in {args.data!r} has {tokens} training tokens, fewer than one block of {args.block_size}; lower --block-size or add data.")
    stats = {"bytes_per_token": index["bytes_per_token"], "unigram_entropy": index["unigram_entropy"]}
    return train_blocks, val_blocks, stats | {"train_blocks": len(train_blocks), "val_blocks": len(val_blocks)}


def model_config(args: PretrainOptions, tokenizer) -> ScratchGPTConfig:
    """The config of the model to train, checked against the tokenizer and `--block-size` before the
    data work: `--init-from`'s (read without its weights), else a new one from `--preset` and the
    size flags."""
    from scratch_gpt.convert import load_config
    from scratch_gpt.tokenizer import check_fits, model_vocab_size

    if args.init_from:  # a ScratchGPT folder or Hub id, or a GPT-2 / Llama / Qwen one converted on the way in
        config = load_config(args.init_from, trust_remote_code=args.trust_remote_code)
        where = f"the model in {args.init_from!r}"
    else:
        sizes = {
            "hidden_size": args.hidden_size,
            "num_hidden_layers": args.num_layers,
            "num_attention_heads": args.num_heads,
            "num_key_value_heads": args.num_kv_heads,
            "intermediate_size": args.intermediate_size,
        }
        config = ScratchGPTConfig.from_preset(
            args.preset,
            **{key: value for key, value in sizes.items() if value is not None},
            vocab_size=args.model_vocab_size or model_vocab_size(tokenizer),
            max_position_embeddings=args.block_size,
            drop_rate=args.dropout,
            tie_word_embeddings=not args.untied_head,
            **({"qkv_bias": False} if args.no_qkv_bias else {}),  # else the preset's: GPT-2 has one, Llama none
            init_style=args.init_style,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        where = "--model-vocab-size"
    check_fits(tokenizer, config, where)
    if args.block_size > config.max_position_embeddings:
        raise BadInput(
            f"--block-size {args.block_size} exceeds the model's context length ({config.max_position_embeddings}); "
            "lower --block-size."
        )
    return config


def model_factory(args: PretrainOptions, tokenizer, config: ScratchGPTConfig, stats: dict):
    """What the loop builds the model with, in its build context (under FSDP only the shapes; the loop
    fills each process' slices): `--init-from`'s weights, else a new model of `config` (marked
    `NewModel`: the loop initialises it); then one line on the data, the tokenizer and the model."""
    from scratch_gpt import ScratchGPTForCausalLM
    from scratch_gpt.convert import load_pretrained

    def build():
        if args.init_from:
            model = load_pretrained(ScratchGPTForCausalLM.from_pretrained, args.init_from, trust_remote_code=args.trust_remote_code)
        else:
            model = ScratchGPTForCausalLM(config)
        model.generation_config.bos_token_id = tokenizer.bos_token_id
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        process_state().print(
            f"{stats['train_blocks']} training and {stats['val_blocks']} validation blocks of {args.block_size} tokens; "
            f"tokenizer {len(tokenizer)} tokens ({stats['bytes_per_token']:.2f} bytes/token); "
            f"model {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters."
        )
        return model

    return build if args.init_from else NewModel(build)


def prepare_data(args: PretrainOptions, tokenizer, train_docs, val_docs):
    """Pack the training and validation documents into blocks (validation: disjoint). With `--streaming`
    the training blocks stay a lazy stream, each process packing its own share of the documents
    (`split_dataset_by_node`: a file to each in turn when they split evenly, else every N-th
    document, which all then read past); validation keeps its first `eval_batches * batch_size`
    blocks in memory, so every evaluation sees the same blocks."""
    import datasets
    import datasets.distributed

    from scratch_gpt.data import bytes_per_token, pack_dataset, unigram_entropy

    state = process_state()
    if args.streaming:  # each process reads its own share of the documents: by files where there are enough, else by rows
        train_docs = datasets.distributed.split_dataset_by_node(train_docs, rank=state.process_index, world_size=state.num_processes)
    with state.main_process_first():  # the first process fills the datasets cache
        train_blocks = pack_dataset(train_docs, tokenizer, block_size=args.block_size, stride=args.stride, num_proc=args.num_proc)
        val_blocks = pack_dataset(val_docs, tokenizer, block_size=args.block_size, num_proc=args.num_proc)
    if args.streaming:
        kept = (args.eval_max_batches or 50) * args.batch_size
        val_blocks = datasets.Dataset.from_list(list(itertools.islice(val_blocks, kept)))
    val_texts = [row["text"] for row in itertools.islice(val_docs, 500)]
    stats = {
        "bytes_per_token": bytes_per_token(val_texts, tokenizer),
        # a stream is read once, by training: its token statistics come from the validation blocks
        "unigram_entropy": unigram_entropy(val_blocks if args.streaming else train_blocks),
        "train_blocks": "streamed" if args.streaming else len(train_blocks),
        "val_blocks": len(val_blocks),
    }
    return train_blocks, val_blocks, stats


def pretrain(args: PretrainOptions) -> dict:
    """Run the whole pipeline; returns the final metrics (plus data statistics)."""
    from accelerate.utils import set_seed

    from scratch_gpt.data import train_val_split
    from scratch_gpt.hub import write_model_card
    from scratch_gpt.training.prepared import TokenBlocks, stack_blocks
    from scratch_gpt.sources import read_texts

    config = args.training()  # the options were checked when parsed; the output folder (a run folder) is checked here
    output_dir = check_output_dir(config, inputs=[args.data, args.tokenizer, args.init_from], replaces=False)
    # this process among those launched (before any other accelerate object); one --output-dir for all
    check_shared_output_dir(process_state(), output_dir)
    set_seed(args.seed)
    if prepared_tokenizer(args.data):  # token shards: nothing to read or tokenize before training
        tokenizer = load_or_train_tokenizer(args, None, output_dir)
        checked = model_config(args, tokenizer)
        train_blocks, val_blocks, stats = read_prepared(args, tokenizer)
    else:
        corpus = read_texts(
            args.data, text_column=args.text_column, encoding=args.encoding, errors=args.encoding_errors, streaming=args.streaming
        )
        train_docs, val_docs = train_val_split(corpus, args.val_fraction, args.seed)
        tokenizer = load_or_train_tokenizer(args, train_docs, output_dir)
        checked = model_config(args, tokenizer)  # bad model options fail before the data work
        train_blocks, val_blocks, stats = prepare_data(args, tokenizer, train_docs, val_docs)
    config.bytes_per_token = stats["bytes_per_token"]

    def write_card(folder: Path, metrics: dict) -> None:
        metrics = {k: v for k, v in metrics.items() if k != "runtime_s"}
        write_model_card(
            folder,
            kind="base",
            metrics={**metrics, "unigram_entropy": stats["unigram_entropy"]},
            hyperparameters=hyperparameters(args),
            datasets=[args.data],
            base_model=args.init_from,
            model_name=output_dir.resolve().name,
        )

    results = train(
        model_factory(args, tokenizer, checked, stats),
        train_blocks,
        val_blocks,
        config,
        tokenizer=tokenizer,
        final_dir=output_dir / "model",
        on_save=write_card,
        seq_len=args.block_size,
        collate_fn=stack_blocks if isinstance(train_blocks, TokenBlocks) else None,
    )
    return {**results, **stats}


def pretrain_command(args: PretrainOptions) -> None:
    """`scratch-gpt pretrain ...`"""
    results = pretrain(args)
    process_state().print(
        f"Done: validation loss {results['eval_loss']:.3f} (unigram entropy {results['unigram_entropy']:.3f}); "
        f"model in {Path(args.output_dir) / 'model'}"
    )


def quickstart(args: PretrainOptions) -> None:
    """`scratch-gpt quickstart`: `pretrain` with the small sizes of its command (scratch_gpt.cli), then a sample."""
    from transformers import pipeline

    results = pretrain(args)
    generator = pipeline("text-generation", model=str(Path(args.output_dir) / "model"))
    room = generator.model.config.max_position_embeddings - len(generator.tokenizer("Return the")["input_ids"])
    sample = generator("Return the", max_new_tokens=max(1, min(30, room)), do_sample=True, top_k=40)[0]["generated_text"]
    print(
        f"\nvalidation loss before training: {results['initial_eval_loss']:.3f} nats/token\n"
        f"validation loss after training:  {results['eval_loss']:.3f} nats/token "
        f"({results['bits_per_byte']:.3f} bits/byte)\n"
        f"unigram entropy of the corpus:   {results['unigram_entropy']:.3f} nats/token "
        "(the loss of a model that ignores context)\n"
        f"sample: {sample!r}\n"
        f"model folder: {Path(args.output_dir) / 'model'} "
        "(load it with AutoModelForCausalLM.from_pretrained or pipeline('text-generation'))"
    )
