"""Publishing: model cards, `scratch-gpt push`, and installing a folder into the Hub cache.

- `write_model_card(folder, kind=..., metrics=..., hyperparameters=...)` renders one of the
  templates in `model_cards/` with `huggingface_hub.ModelCard` into `folder/README.md`.
- `push_folder(folder, repo_id)` uploads a saved model folder (weights, config, remote code,
  tokenizer, generation config, card, plots) to the Hub in ONE commit; `scratch-gpt push` is its CLI.
- `push_model(model, repo_id, tokenizer=...)` is `model.push_to_hub(...)` for ScratchGPT models:
  the same one commit, from the model in memory (importing this module registers it with the
  modeling file, which never imports the package).
- `add_to_hub_cache(folder, repo_id)` lays a folder out as a Hub cache entry, so
  `from_pretrained("OWNER/NAME")` finds it offline (air-gapped machines, tests).

Authentication is huggingface_hub's (`HF_TOKEN` or `hf auth login`); the token goes to `HfApi` only, never logged.
"""

import hashlib
import importlib
import importlib.util
import json
import math
import numbers
import os
import re
import shutil
import tempfile
from importlib.resources import files
from pathlib import Path

from huggingface_hub import CommitOperationAdd, EvalResult, HfApi, ModelCard, ModelCardData, constants, get_token
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.utils import HFValidationError, validate_repo_id
from safetensors import safe_open

from .args import PushOptions
from .errors import BadInput, MissingFile, NotWritable, RunFailed
from .io_utils import atomic_directory, kill_point, write_atomically
from .modeling_scratch_gpt import register_push_to_hub


def _templates():
    """The top-level model_cards/ folder: shipped in the package, or beside it in a source tree run uninstalled."""
    try:
        return files("scratch_gpt.model_cards")
    except ModuleNotFoundError:  # PYTHONPATH=<checkout> without `pip install`: setup's package-dir mapping is absent
        return Path(__file__).resolve().parent.parent / "model_cards"


TEMPLATES = _templates()

# kind -> (pipeline tag, Auto class a user loads it with; peft's AutoPeft... for a LoRA adapter)
KINDS = {
    "base": ("text-generation", "AutoModelForCausalLM"),
    "classifier": ("text-classification", "AutoModelForSequenceClassification"),
    "instruct": ("text-generation", "AutoModelForCausalLM"),
    "dpo": ("text-generation", "AutoModelForCausalLM"),
}
CONFIG_NAMES = ("config.json", "adapter_config.json")  # a model folder, or a LoRA adapter folder (peft)

# The usage snippets of a card written before the repo exists name this; `push_folder` (and
# `add_to_hub_cache`) replace it with the real repo id in the README they publish.
REPO_ID_PLACEHOLDER = "OWNER/NAME"

# Top-level files a model folder publishes: weights, configs, remote code, tokenizer, card, plots.
# Pickles (*.bin, *.pt), checkpoints/ and other sub-folders, and hidden files are never uploaded.
PUBLISHED_SUFFIXES = (".safetensors", ".json", ".py", ".jinja", ".txt", ".model", ".md", ".png", ".svg")

# Files transformers looks up by name. A cache entry marks those the folder lacks as known to be
# absent (huggingface_hub's `.no_exist/`, what a download records after a 404), so offline loading
# of, e.g., a LoRA adapter's tokenizer does not stop at "couldn't connect" looking for config.json.
LOOKED_UP_FILES = ("config.json", "adapter_config.json", "generation_config.json", "tokenizer_config.json")

# Metric names (after an eval_/val_/test_ prefix) that are evaluation results: they form the card's
# model-index. The others a run reports (train_loss, step, tokens, runtime, ...) are in the text only.
EVAL_METRICS = ("loss", "perplexity", "bits_per_byte", "accuracy", "f1", "precision", "recall", "exact_match")
SPLIT_PREFIXES = {"eval_": "validation", "val_": "validation", "test_": "test"}

LOSS_CURVE = "loss_curve.png"
SECRET_WORDS = ("token", "secret", "password")  # hyperparameters whose string value is never shown


# ----------------------------------------------------------------------------------------- cards


def card_data(task, adapter, hub_datasets, data_names, base_model, model_name, metrics, license, language, tags):
    """The card's YAML metadata: what the Hub indexes (task, tags, datasets, base model, model-index)."""
    return ModelCardData(
        license=license,
        language=language,
        library_name="peft" if adapter else "transformers",
        pipeline_tag=task,
        tags=["scratch_gpt", "gpt", "custom_code", task, *(["lora"] if adapter else []), *tags],
        datasets=hub_datasets or None,
        base_model=base_model,
        model_name=model_name,
        eval_results=_eval_results(metrics, task, hub_datasets, data_names) or None,
    )


def folder_facts(folder: Path, config: dict, labels, metrics: dict, hyperparameters: dict) -> dict:
    """What the card's text shows about the folder and its run: size, shape, classes, tables, plot."""
    return dict(
        num_parameters=_human_count(count_parameters(folder)),
        architecture=_architecture(config),
        labels=labels or config.get("id2label", {}),  # an adapter folder's config has none: the run passes them
        hyperparameters=_table(_public_hyperparameters(hyperparameters)),
        metrics=_table(metrics),
        loss_curve=LOSS_CURVE if (folder / LOSS_CURVE).is_file() else None,
    )


def write_model_card(
    output_dir,
    *,
    kind: str,
    metrics: dict,
    hyperparameters: dict,
    datasets=(),
    base_model: str | None = None,
    model_name: str | None = None,
    repo_id: str | None = None,
    license: str = "apache-2.0",
    language: str | None = "en",
    tags=(),
    labels: dict | None = None,
) -> Path:
    """Render the `kind` card ("base", "classifier", "instruct" or "dpo") into `output_dir/README.md`.

    `metrics` and `hyperparameters` come from the run; every metric is listed, the evaluation results
    (EVAL_METRICS) also form the model-index. `datasets` are Hub ids or local paths (named by file name
    only, kept out of the metadata, as are secrets and machine paths in `hyperparameters`). `model_name`
    defaults to the folder name. A LoRA adapter folder gets a card that loads it with peft on its base.
    """
    if kind not in KINDS:
        raise BadInput(f"Unknown model card kind {kind!r}; use one of {', '.join(KINDS)}.")
    folder = Path(output_dir)
    task, auto_class = KINDS[kind]
    config = _read_config(folder)
    adapter = "peft_type" in config
    base_model = base_model or config.get("base_model_name_or_path")
    model_name = model_name or folder.name
    hub_datasets = [d for d in datasets if _is_hub_id(d)]
    data_names = [d if d in hub_datasets else Path(str(d)).name for d in datasets]
    hub_base_model = base_model if base_model and _is_hub_id(base_model) else None
    card = ModelCard.from_template(
        card_data(task, adapter, hub_datasets, data_names, hub_base_model, model_name, metrics, license, language, tags),
        template_str=(TEMPLATES / f"{kind}.md").read_text(encoding="utf-8"),
        model_name=model_name,
        repo_id=repo_id or REPO_ID_PLACEHOLDER,
        auto_class=auto_class.replace("Auto", "AutoPeft", 1) if adapter else auto_class,
        adapter=adapter,
        base_model_name=hub_base_model or (base_model and Path(base_model).name),
        data_names=data_names,
        **folder_facts(folder, config, labels, metrics, hyperparameters),
    )
    path, tmp = folder / "README.md", folder / ".README.md.tmp"
    card.save(tmp)
    os.replace(tmp, path)
    return path


def count_parameters(folder) -> int:
    """Number of parameters stored in the folder's safetensors files (a tied head counts once)."""
    weights = sorted(Path(folder).glob("*.safetensors"))
    if not weights:
        raise MissingFile(f"No *.safetensors weights in {str(folder)!r}; save the model there before writing its card.")
    total = 0
    for path in weights:
        with safe_open(path, framework="pt") as f:
            total += sum(math.prod(f.get_slice(name).get_shape()) for name in f.keys())
    return total


def _read_config(folder: Path) -> dict:
    """config.json, or adapter_config.json for a LoRA adapter folder."""
    path = next((folder / name for name in CONFIG_NAMES if (folder / name).is_file()), None)
    if path is None:
        raise MissingFile(f"No config.json in {str(folder)!r}; save the model there before writing its card.")
    return json.loads(path.read_text(encoding="utf-8"))


def _is_hub_id(name) -> bool:
    """A Hub repo id ("wikitext", "owner/name") rather than a local path or the built-in corpus."""
    name = str(name)
    if name == "builtin" or Path(name).exists():
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def _eval_results(metrics: dict, task: str, hub_datasets: list, data_names: list) -> list[EvalResult]:
    dataset = dict(task_type=task, dataset_type=hub_datasets[0] if hub_datasets else "custom")
    dataset["dataset_name"] = ", ".join(data_names) or "held-out data"
    results = []
    for name, value in metrics.items():
        prefix = next((p for p in SPLIT_PREFIXES if name.startswith(p)), "")
        metric = name.removeprefix(prefix)
        number = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
        if metric in EVAL_METRICS and number:
            split = SPLIT_PREFIXES.get(prefix, "validation")
            result = dict(dataset_split=split, metric_type=metric, metric_name=name, metric_value=float(value))
            results.append(EvalResult(**dataset, **result))
    return results


def _public_hyperparameters(hyperparameters: dict) -> dict:
    """Hide secrets and unset (None) options; show local paths by their last component only."""

    def public(value):
        if isinstance(value, (list, tuple)):
            return type(value)(public(item) for item in value)
        if isinstance(value, (str, os.PathLike)) and os.path.isabs(value):
            return Path(value).name
        return value

    return {
        key: public(value)
        for key, value in hyperparameters.items()
        if value is not None and not (isinstance(value, str) and any(word in key.lower() for word in SECRET_WORDS))
    }


def _table(values: dict) -> list[tuple[str, str]]:
    def show(value):
        text = f"{value:.4g}" if isinstance(value, float) else str(value)
        return text.replace("|", "\\|").replace("\n", " ")

    return [(str(key), show(value)) for key, value in values.items()]


def _architecture(config: dict) -> list[tuple[str, str]]:
    model = "model_type num_hidden_layers hidden_size num_attention_heads max_position_embeddings vocab_size".split()
    adapter = ["peft_type", "r", "lora_alpha", "target_modules", "modules_to_save"]
    return [(key, str(config[key])) for key in model + adapter if config.get(key) is not None]


def _human_count(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit} ({n:,})"
    return f"{n:,}"


# ------------------------------------------------------------------------------------ publishing


def published_files(folder) -> dict[str, bytes | Path]:
    """What a push of `folder` publishes, by name in the repo; checks that it is a loadable model.

    Raises one clear error for a missing folder, config or weights, remote code named in config.json's
    `auto_map` but absent, or a LoRA adapter whose base model is a local path (nobody else could load it).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise MissingFile(f"Model folder {str(folder)!r} does not exist; pass the output folder of a training command.")
    published = _publishable(folder)
    config_name = next((name for name in CONFIG_NAMES if name in published), None)
    if config_name is None:
        inner = sorted(str(path.parent) for path in folder.glob("*/config.json"))
        advice = f"push the model folder inside it, {inner[0]!r}" if inner else "save the model with save_pretrained"
        raise MissingFile(f"No config.json in {str(folder)!r}; it is not a saved model folder: {advice}.")
    if not any(name.endswith(".safetensors") for name in published):
        raise MissingFile(
            f"No *.safetensors weights in {str(folder)!r}; save the model with save_pretrained (safetensors) first."
        )
    config = json.loads(published[config_name].read_text(encoding="utf-8"))
    base_model = config.get("base_model_name_or_path")
    if "peft_type" in config and not (base_model and _is_hub_id(base_model)):
        raise BadInput(
            f"The LoRA adapter in {str(folder)!r} names its base model by the local path {base_model!r}; push the "
            "base model first and put its repo id in adapter_config.json (base_model_name_or_path), or save the "
            "fine-tuned model merged (--save-merged)."
        )
    auto_map = config.get("auto_map", {})
    references = [r for value in auto_map.values() for r in (value if isinstance(value, list) else [value]) if r]
    for reference in references:
        module = reference.split("--")[-1].split(".")[0] + ".py"  # "[repo--]module.Class"
        if module not in published:
            raise MissingFile(
                f"config.json in {str(folder)!r} names remote code {module} that is not in the folder; "
                "save the model again after `import scratch_gpt`."
            )
    return published


def _publishable(folder: Path) -> dict[str, Path]:
    names = sorted(p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    return {name: folder / name for name in names if name.endswith(PUBLISHED_SUFFIXES)}


def _with_repo_id(published: dict, repo_id: str) -> dict[str, bytes | Path]:
    """The README with its placeholder repo id replaced by the real one."""
    if "README.md" in published:
        text = published["README.md"].read_text(encoding="utf-8")
        published = {**published, "README.md": text.replace(REPO_ID_PLACEHOLDER, repo_id).encode("utf-8")}
    return published


def _check_repo_id(repo_id: str) -> None:
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise BadInput(f"Invalid repo id {repo_id!r}: {error} Use the form OWNER/NAME.") from None
    if repo_id.count("/") != 1:
        raise BadInput(f"Invalid repo id {repo_id!r}: use the form OWNER/NAME (your user or organization name first).")


TOKEN_PATTERN = re.compile(rb"hf_[A-Za-z0-9]{30,}")  # the shape of a Hugging Face access token


def _check_no_token_inside(published: dict, token: str) -> None:
    """Refuse to publish any file that holds the user's token, or anything shaped like a token: the
    config, card and notes, a plot's text chunks, and the metadata of a safetensors file."""
    for name, content in published.items():
        data = _searchable_bytes(name, content)
        if token.encode() in data:
            raise BadInput(f"{name} contains your Hugging Face token; remove it from the file before pushing.")
        if TOKEN_PATTERN.search(data):
            raise BadInput(f"{name} contains a Hugging Face token (hf_...); remove it from the file before pushing.")


def _searchable_bytes(name: str, content: bytes | Path) -> bytes:
    """A file's bytes, of a safetensors file only the header: its tensors hold no text but could spell a token."""
    data = content if isinstance(content, bytes) else None
    if not name.endswith(".safetensors"):
        return data if data is not None else content.read_bytes()
    if data is None:
        with open(content, "rb") as f:
            length = int.from_bytes(f.read(8), "little")
            return f.read(min(length, 100_000_000))
    return data[8 : 8 + int.from_bytes(data[:8], "little")]


def _credentials(token: str | None) -> str:
    token = token or get_token()
    if not token:
        raise NotWritable(
            "No Hugging Face credentials found; run `hf auth login` or set the HF_TOKEN environment variable."
        )
    return token


def push_folder(
    folder,
    repo_id: str,
    *,
    private: bool | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    commit_description: str | None = None,
    create_pr: bool = False,
    token: str | None = None,
):
    """Upload a saved model folder to `repo_id` in one commit; returns its `CommitInfo` (a str: the commit URL).

    Everything is checked before anything is sent: the repo id, the folder (config, safetensors
    weights, remote code) and the credentials (`token`, else `HF_TOKEN` or the stored login).
    `revision` is a branch, created if missing; `create_pr=True` opens a pull request instead.
    """
    _check_repo_id(repo_id)
    published = _with_repo_id(published_files(folder), repo_id)
    token = _credentials(token)
    _check_no_token_inside(published, token)

    api = HfApi(token=token, library_name="scratch_gpt")
    api.create_repo(repo_id, private=private, exist_ok=True)
    if revision and not create_pr:
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=content) for name, content in published.items()]
    return api.create_commit(
        repo_id,
        operations=operations,
        commit_message=commit_message or f"Upload {Path(folder).name} with scratch_gpt",
        commit_description=commit_description,
        revision=revision,
        create_pr=create_pr,
    )


def push_model(model, repo_id: str, *, tokenizer=None, max_shard_size="50GB", tags=None, **push_kwargs):
    """`model.push_to_hub(repo_id, tokenizer=..., ...)`: the model in memory, published in one commit.

    The model is saved afresh into a temporary folder (weights, config, remote code, generation
    config), `tokenizer` beside it. When the model was loaded from a local folder saved with the same
    architecture (a training command's output), that folder's other files come too: its tokenizer,
    card and plots. A model with no card gets one written from its config (no metrics: a training
    command writes the full card). `tags` are added to the card; `push_kwargs` are `push_folder`'s.
    """
    _check_repo_id(repo_id)  # fail before a possibly long save, as push_folder would after it
    push_kwargs["token"] = _credentials(push_kwargs.get("token"))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / repo_id.split("/")[-1]  # the card's model name
        model.save_pretrained(folder, max_shard_size=max_shard_size)
        kill_point("staged")  # tests: the staging folder is half-filled, nothing is uploaded yet
        if tokenizer is not None:
            from .tokenizer import save_tokenizer

            save_tokenizer(tokenizer, folder)
        for name, path in _companion_files(model).items():
            if not (folder / name).exists():
                shutil.copyfile(path, folder / name)
        card = folder / "README.md"
        if not card.exists():
            kind = "classifier" if type(model).__name__.endswith("ForSequenceClassification") else "base"
            write_model_card(folder, kind=kind, metrics={}, hyperparameters={})
        tags = [*(getattr(model, "model_tags", None) or []), *([tags] if isinstance(tags, str) else tags or [])]
        if tags:
            model_card = ModelCard.load(card)
            model_card.data.tags = list(dict.fromkeys([*(model_card.data.tags or []), *tags]))
            model_card.save(card)
        return push_folder(folder, repo_id, **push_kwargs)


register_push_to_hub(push_model)  # `model.push_to_hub(...)` of every ScratchGPT model now runs push_model


def _companion_files(model) -> dict[str, Path]:
    """The files of the folder `model` was loaded from that a fresh save does not write (tokenizer,
    card, plots), when that folder holds the same architecture; else none."""
    source = Path(model.name_or_path or ".")
    if not model.name_or_path or not (source / "config.json").is_file():
        return {}
    saved = json.loads((source / "config.json").read_text(encoding="utf-8"))
    if saved.get("architectures") != model.config.architectures:
        return {}  # e.g. a classifier built from a base model folder: that card describes another model
    weights = (".safetensors", ".safetensors.index.json")  # a fresh save may shard them under other names
    return {name: path for name, path in _publishable(source).items() if not name.endswith(weights)}


# ----------------------------------------------------------------------------------------- cache


def add_to_hub_cache(folder, repo_id: str, *, cache_dir=None, revision: str = "main") -> Path:
    """Install `folder` as the Hub cache entry of `repo_id`; returns the snapshot folder.

    The layout is huggingface_hub's (`models--OWNER--NAME/blobs`, `snapshots/<commit>`, `refs/<revision>`,
    `.no_exist/<commit>`), with the files a push would publish, so `from_pretrained("OWNER/NAME")` loads
    it with `HF_HUB_OFFLINE=1`. `cache_dir` defaults to the active Hub cache (`HF_HUB_CACHE`).
    """
    _check_repo_id(repo_id)
    published = _with_repo_id(published_files(folder), repo_id)
    repo_dir = Path(cache_dir or constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}"
    blobs = repo_dir / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)

    blob_names = {}
    for name, content in published.items():
        blob_names[name] = _sha256(content)
        blob = blobs / blob_names[name]
        if not blob.exists():
            tmp = blobs / f".{blob.name}.tmp"
            if isinstance(content, bytes):
                tmp.write_bytes(content)
            else:
                shutil.copyfile(content, tmp)
            os.replace(tmp, blob)
    # A stable stand-in for a git commit id: the hash of the file list and contents.
    commit = hashlib.sha1(json.dumps(blob_names, sort_keys=True).encode()).hexdigest()
    snapshot = repo_dir / "snapshots" / commit
    with atomic_directory(snapshot) as tmp:
        for name, blob in blob_names.items():
            (tmp / name).symlink_to(Path("..", "..", "blobs", blob))
    absent = repo_dir / ".no_exist" / commit
    absent.mkdir(parents=True, exist_ok=True)
    for name in set(LOOKED_UP_FILES) - set(blob_names):
        (absent / name).touch()
    write_atomically(repo_dir / "refs" / revision, commit)
    return snapshot


def _sha256(content: bytes | Path) -> str:
    if isinstance(content, bytes):
        return hashlib.sha256(content).hexdigest()
    with open(content, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


# ------------------------------------------------------------------------------------------- CLI


def http_client_errors() -> tuple[type[Exception], ...]:
    """The errors of the HTTP client under huggingface_hub (httpx up to 1.x, httpx2 from 2.x): a
    network that cannot be reached surfaces as one of these, not as a `ConnectionError`."""
    clients = [importlib.import_module(name) for name in ("httpx", "httpx2") if importlib.util.find_spec(name)]
    return tuple(client.HTTPError for client in clients)


def push_command(args: PushOptions) -> None:
    """`scratch-gpt push`: upload; a refusal of the Hub or a missing network is one sentence (exit 1)."""
    options = dict(private=args.private, revision=args.revision, commit_message=args.commit_message)
    try:
        commit = push_folder(args.output_dir, args.repo_id, **options)
    except (HfHubHTTPError, ConnectionError, *http_client_errors()) as error:  # the Hub refused; no network; offline
        reason = " ".join(str(error).split()) or type(error).__name__
        raise RunFailed(f"the upload failed: {reason}; check the network and the repository, then push again.") from None
    print(f"Pushed {args.output_dir} to {constants.ENDPOINT}/{args.repo_id}\ncommit: {commit.commit_url}")
