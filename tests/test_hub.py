"""scratch_gpt.hub: model cards, `scratch-gpt push`, download by repo id, safe loading.

Everything runs offline: the Hub API is replaced by recorders (or by methods that fail the test if
called), and "download by repo id" reads a Hub cache entry built in a temporary HF_HOME. A live
push/download round trip runs only when HF_TOKEN is set.
"""

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import huggingface_hub
import pytest
import safetensors.torch
import torch
from huggingface_hub import HfApi, ModelCard, RepoUrl, constants, metadata_load
from peft import get_peft_model
from transformers import AutoModelForCausalLM

from scratch_gpt import (
    ScratchGPTConfig,
    ScratchGPTForCausalLM,
    ScratchGPTForSequenceClassification,
    hub,
)
from scratch_gpt.cli import main
from scratch_gpt.lora import lora_config

REPO_ROOT = Path(__file__).resolve().parents[1]
FAKE_TOKEN = "hf_" + "x" * 34
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16  # the card only needs the file to exist
TEXT = "The quick brown fox jumps over the lazy dog."
# What a push of a training command's model folder publishes (among other files).
PUBLISHED_RUN_FOLDER = {
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "modeling_scratch_gpt.py",
    "configuration_scratch_gpt.py",
    "tokenizer.json",
    "tokenizer_config.json",
    "README.md",
    "loss_curve.png",
}


@pytest.fixture
def lm_dir(tmp_path, tiny_model, tiny_tokenizer):
    folder = tmp_path / "tiny-lm"
    tiny_model.save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def classifier_dir(tmp_path, lm_dir, tiny_tokenizer):
    torch.manual_seed(0)
    labels = {0: "ham", 1: "spam"}
    model = ScratchGPTForSequenceClassification.from_pretrained(
        lm_dir, num_labels=2, id2label=labels, label2id={v: k for k, v in labels.items()}
    )
    folder = tmp_path / "tiny-classifier"
    model.save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return folder


def save_lora_adapter(model, folder, base_repo_id=None):
    """A LoRA adapter folder (peft); `base_repo_id` replaces the local base path, as a user would."""
    get_peft_model(model, lora_config("causal")).save_pretrained(folder)
    if base_repo_id:
        config = json.loads((folder / "adapter_config.json").read_text())
        config["base_model_name_or_path"] = base_repo_id
        (folder / "adapter_config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture
def fake_hub(monkeypatch):
    """Replace the Hub API calls a push makes by recorders; returns the list of calls."""
    calls = []

    def create_repo(self, repo_id, **kwargs):
        calls.append(("create_repo", repo_id, kwargs))
        return RepoUrl(f"{constants.ENDPOINT}/{repo_id}")

    def create_branch(self, repo_id, **kwargs):
        calls.append(("create_branch", repo_id, kwargs))

    def create_commit(self, repo_id, operations, **kwargs):
        operations = list(operations)
        files = {}
        for op in operations:  # read now: a push from memory deletes its temporary folder afterwards
            with op.as_file() as f:
                files[op.path_in_repo] = f.read()
        calls.append(("create_commit", repo_id, {"operations": operations, "files": files, **kwargs}))
        return huggingface_hub.CommitInfo(
            commit_url=f"{constants.ENDPOINT}/{repo_id}/commit/{'0' * 40}",
            commit_message=kwargs.get("commit_message") or "",
            commit_description="",
            oid="0" * 40,
        )

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "create_branch", create_branch)
    monkeypatch.setattr(HfApi, "create_commit", create_commit)
    return calls


@pytest.fixture
def hub_must_not_be_called(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("an upload was attempted despite bad input")

    for method in ("create_repo", "create_branch", "create_commit", "upload_folder", "upload_file"):
        monkeypatch.setattr(HfApi, method, fail)


@pytest.fixture
def no_stored_login(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-login" / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "no-login" / "stored_tokens"))


def write_card(folder, kind="base", **overrides):
    arguments = dict(
        kind=kind,
        metrics={"eval_loss": 2.5, "perplexity": 12.18, "train_loss": 2.0, "step": 10},
        hyperparameters={"learning_rate": 3e-4, "batch_size": 8},
        datasets=["wikitext"],
    )
    return hub.write_model_card(folder, **{**arguments, **overrides})


# ----------------------------------------------------------------------------------------- cards


@pytest.mark.parametrize("kind", ["base", "classifier", "instruct", "dpo"])
def test_card_metadata_round_trips_through_huggingface_hub(lm_dir, tiny_model, kind):
    (lm_dir / "loss_curve.png").write_bytes(PNG)
    path = write_card(lm_dir, kind, base_model="openai-community/gpt2")

    card = ModelCard.load(path)  # huggingface_hub's own parser
    assert card.data.license == "apache-2.0"
    assert card.data.library_name == "transformers"
    assert card.data.datasets == ["wikitext"]
    assert card.data.base_model == "openai-community/gpt2"
    assert card.data.pipeline_tag == hub.KINDS[kind][0]
    assert {"scratch_gpt", "custom_code"} <= set(card.data.tags)
    assert card.data.model_name == "tiny-lm"
    assert {(r.metric_name, r.metric_value) for r in card.data.eval_results} == {
        ("eval_loss", 2.5),
        ("perplexity", 12.18),
    }
    assert "model-index" in metadata_load(path)
    assert ModelCard(str(card)).data.to_dict() == card.data.to_dict()

    text = card.text
    assert f"{tiny_model.num_parameters():,}" in text
    assert "| learning_rate | 0.0003 |" in text and "| perplexity | 12.18 |" in text
    assert "| train_loss | 2 |" in text  # listed, but not an evaluation result
    assert "![Training and validation loss](loss_curve.png)" in text
    assert "trust_remote_code=True" in text and "pipeline(" in text
    assert f'model_id = "{hub.REPO_ID_PLACEHOLDER}"' in text


def test_card_lists_classifier_labels_and_omits_missing_loss_curve(classifier_dir):
    card = ModelCard.load(
        write_card(classifier_dir, "classifier", metrics={"val_accuracy": 0.75, "test_accuracy": 0.5})
    )
    assert {(r.metric_type, r.dataset_split, r.metric_value) for r in card.data.eval_results} == {
        ("accuracy", "validation", 0.75),
        ("accuracy", "test", 0.5),
    }
    text = card.text
    assert "| 0 | ham |" in text and "| 1 | spam |" in text
    assert "AutoModelForSequenceClassification" in text
    assert "loss_curve.png" not in text


def test_card_keeps_machine_paths_and_secrets_out(lm_dir, tmp_path):
    corpus = tmp_path / "private" / "corpus.txt"
    corpus.parent.mkdir()
    corpus.write_text(TEXT)
    path = write_card(
        lm_dir,
        datasets=[str(corpus), "builtin"],
        base_model=str(lm_dir),
        hyperparameters={"data": str(corpus), "files": [str(corpus)], "hub_token": FAKE_TOKEN, "stride": None},
    )
    content = path.read_text()
    assert "hub_token" not in content and "stride" not in content
    assert str(tmp_path) not in content and FAKE_TOKEN not in content
    assert "corpus.txt" in content  # named by its file name only
    card = ModelCard.load(path)
    assert card.data.datasets is None and card.data.base_model is None  # not Hub ids: kept out of the metadata


def test_card_bad_input_gives_one_clear_error(lm_dir, tmp_path):
    with pytest.raises(ValueError, match="Unknown model card kind 'chat'"):
        write_card(lm_dir, "chat")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="No config.json"):
        write_card(tmp_path / "empty")
    (lm_dir / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="No \\*.safetensors weights"):
        write_card(lm_dir)
    assert not (lm_dir / "README.md").exists()


def test_lora_adapter_card_loads_the_adapter_with_peft(tiny_model, tmp_path):
    folder = save_lora_adapter(tiny_model, tmp_path / "tiny-lora", base_repo_id="owner/tiny-lm")
    card = ModelCard.load(write_card(folder, "instruct"))
    assert card.data.library_name == "peft" and card.data.base_model == "owner/tiny-lm"
    assert "lora" in card.data.tags
    assert "model = AutoPeftModelForCausalLM.from_pretrained(model_id, trust_remote_code=True)" in card.text
    assert "LoRA adapter (PEFT) for owner/tiny-lm" in card.text


def test_card_templates_ship_inside_the_package():
    assert sorted(p.name for p in hub.TEMPLATES.iterdir() if p.name.endswith(".md")) == [
        "base.md",
        "classifier.md",
        "dpo.md",
        "instruct.md",
    ]


# ------------------------------------------------------------------------------------------ push


def test_push_uploads_the_whole_folder_in_one_commit(lm_dir, fake_hub):
    write_card(lm_dir)
    (lm_dir / "loss_curve.png").write_bytes(PNG)
    (lm_dir / "optimizer.pt").write_bytes(b"pickle")  # training state: never published
    (lm_dir / "checkpoints").mkdir()
    (lm_dir / "checkpoints" / "model.safetensors").write_bytes(b"x")

    url = hub.push_folder(
        lm_dir, "owner/tiny-lm", private=True, revision="v1", commit_message="first", token=FAKE_TOKEN
    )

    assert [name for name, _, _ in fake_hub] == ["create_repo", "create_branch", "create_commit"]
    assert fake_hub[0][2]["private"] is True and fake_hub[1][2]["branch"] == "v1"
    commit = fake_hub[2][2]
    assert commit["revision"] == "v1" and commit["commit_message"] == "first"
    uploaded = {op.path_in_repo: op for op in commit["operations"]}
    assert PUBLISHED_RUN_FOLDER <= set(uploaded)
    assert not {"optimizer.pt", "checkpoints/model.safetensors"} & set(uploaded)
    with uploaded["README.md"].as_file() as f:
        readme = f.read().decode()
    assert 'model_id = "owner/tiny-lm"' in readme and hub.REPO_ID_PLACEHOLDER not in readme
    assert url.endswith("0" * 40)


def test_push_cli_takes_the_token_from_the_environment_and_never_shows_it(lm_dir, fake_hub, monkeypatch, capsys):
    write_card(lm_dir)
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    assert main(["push", str(lm_dir), "--repo-id", "owner/tiny-lm"]) == 0
    output = capsys.readouterr()
    assert f"{constants.ENDPOINT}/owner/tiny-lm" in output.out
    assert FAKE_TOKEN not in output.out + output.err
    assert fake_hub[0][2].get("private") is False
    assert all(FAKE_TOKEN.encode() not in p.read_bytes() for p in lm_dir.iterdir())


@pytest.mark.parametrize(
    "case, repo_id, message",
    [
        ("no config", "owner/tiny-lm", "No config.json in"),
        ("no weights", "owner/tiny-lm", "No *.safetensors weights in"),
        ("no folder", "owner/tiny-lm", "does not exist"),
        ("missing remote code", "owner/tiny-lm", "names remote code modeling_scratch_gpt.py"),
        ("ok", "not a repo id", "Invalid repo id 'not a repo id'"),
        ("ok", "owner/bad--name", "Invalid repo id 'owner/bad--name'"),
        ("ok", "tiny-lm", "use the form OWNER/NAME"),
        ("ok", "a/b/c", "Invalid repo id 'a/b/c'"),
    ],
)
def test_push_bad_input_fails_before_any_upload(
    lm_dir, hub_must_not_be_called, monkeypatch, capsys, case, repo_id, message
):
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    removed = {
        "no config": "config.json",
        "no weights": "model.safetensors",
        "missing remote code": "modeling_scratch_gpt.py",
    }
    if case in removed:
        (lm_dir / removed[case]).unlink()
    folder = lm_dir.parent / "missing" if case == "no folder" else lm_dir
    assert main(["push", str(folder), "--repo-id", repo_id]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_push_of_a_run_folder_names_the_model_folder_inside(lm_dir, hub_must_not_be_called):
    with pytest.raises(FileNotFoundError, match=re.escape(f"push the model folder inside it, '{lm_dir}'")):
        hub.push_folder(lm_dir.parent, "owner/tiny-lm", token=FAKE_TOKEN)


def test_push_without_credentials_fails_before_any_upload(lm_dir, hub_must_not_be_called, no_stored_login, capsys):
    assert main(["push", str(lm_dir), "--repo-id", "owner/tiny-lm"]) == 2
    assert "No Hugging Face credentials found; run `hf auth login` or set the HF_TOKEN" in capsys.readouterr().err


def test_push_with_the_hub_offline_fails_with_one_line(lm_dir, monkeypatch, capsys, caplog):
    """The real huggingface_hub client, up to its offline guard; nothing logs the token."""
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)  # HF_HUB_OFFLINE=1 comes from conftest
    assert main(["push", str(lm_dir), "--repo-id", "owner/tiny-lm"]) == 1
    output = capsys.readouterr()
    assert "the upload failed" in output.err and "offline mode is enabled" in output.err
    assert "Traceback" not in output.err
    assert FAKE_TOKEN not in output.out + output.err + caplog.text


def test_push_refuses_a_folder_that_contains_the_token(lm_dir, hub_must_not_be_called):
    (lm_dir / "notes.txt").write_text(f"my token is {FAKE_TOKEN}")
    with pytest.raises(ValueError, match="notes.txt contains your Hugging Face token"):
        hub.push_folder(lm_dir, "owner/tiny-lm", token=FAKE_TOKEN)


def test_push_refuses_a_lora_adapter_whose_base_model_is_a_local_path(tiny_model, tmp_path, hub_must_not_be_called):
    folder = save_lora_adapter(tiny_model, tmp_path / "tiny-lora")
    with pytest.raises(ValueError, match="names its base model by the local path"):
        hub.push_folder(folder, "owner/tiny-lora", token=FAKE_TOKEN)


def test_push_help_works(capsys):
    from scratch_gpt.cli import main

    assert main(["push", "--help"]) == 0  # every command: --help is exit status 0, returned by main
    assert "--repo-id" in capsys.readouterr().out


def test_model_push_to_hub_publishes_the_model_with_its_run_folder_in_one_commit(lm_dir, fake_hub):
    write_card(lm_dir)
    (lm_dir / "loss_curve.png").write_bytes(PNG)
    model = AutoModelForCausalLM.from_pretrained(lm_dir)
    with torch.no_grad():
        model.lm_head.weight.add_(1.0)  # changed in memory after loading: the push must send these weights

    model.push_to_hub("owner/tiny-lm", token=FAKE_TOKEN, commit_message="first", tags=["demo"])

    assert [name for name, _, _ in fake_hub] == ["create_repo", "create_commit"]
    files = fake_hub[1][2]["files"]
    assert PUBLISHED_RUN_FOLDER <= set(files)
    assert fake_hub[1][2]["commit_message"] == "first"
    weights = safetensors.torch.load(files["model.safetensors"])
    torch.testing.assert_close(weights["model.embed_tokens.weight"], model.lm_head.weight, rtol=0, atol=0)
    card = ModelCard(files["README.md"].decode())
    assert card.data.model_name == "tiny-lm" and "| perplexity | 12.18 |" in card.text  # the run's own card
    assert {"scratch_gpt", "demo"} <= set(card.data.tags)
    assert 'model_id = "owner/tiny-lm"' in card.text
    assert all(FAKE_TOKEN.encode() not in content for content in files.values())


def test_model_push_to_hub_of_a_new_model_takes_the_tokenizer_and_writes_a_card(tiny_model, tiny_tokenizer, fake_hub):
    tiny_model.push_to_hub("owner/tiny-lm", tokenizer=tiny_tokenizer, token=FAKE_TOKEN)
    commits = [call for call in fake_hub if call[0] == "create_commit"]
    assert len(commits) == 1
    files = commits[0][2]["files"]
    assert {"model.safetensors", "modeling_scratch_gpt.py", "tokenizer.json", "README.md"} <= set(files)
    card = ModelCard(files["README.md"].decode())
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "text-generation"
    assert "Not recorded" in card.text and "loss_curve.png" not in card.text


def test_classifier_push_to_hub_does_not_take_the_card_of_the_base_model_it_was_built_from(
    lm_dir, tiny_tokenizer, fake_hub
):
    write_card(lm_dir)
    (lm_dir / "loss_curve.png").write_bytes(PNG)
    model = ScratchGPTForSequenceClassification.from_pretrained(lm_dir, num_labels=2)
    model.push_to_hub("owner/tiny-classifier", tokenizer=tiny_tokenizer, token=FAKE_TOKEN)
    files = fake_hub[-1][2]["files"]
    assert "loss_curve.png" not in files and "tokenizer.json" in files
    card = ModelCard(files["README.md"].decode())
    assert card.data.pipeline_tag == "text-classification" and "AutoModelForSequenceClassification" in card.text


@pytest.mark.parametrize("case", ["invalid repo id", "no credentials"])
def test_model_push_to_hub_bad_input_fails_before_saving_or_uploading(
    tiny_model, hub_must_not_be_called, no_stored_login, monkeypatch, case
):
    def no_save(*args, **kwargs):
        raise AssertionError("the model was saved despite bad input")

    monkeypatch.setattr(type(tiny_model), "save_pretrained", no_save)
    if case == "invalid repo id":
        with pytest.raises(ValueError, match="Invalid repo id 'not a repo id'"):
            tiny_model.push_to_hub("not a repo id", token=FAKE_TOKEN)
    else:
        with pytest.raises(PermissionError, match="No Hugging Face credentials found"):
            tiny_model.push_to_hub("owner/tiny-lm")


@pytest.mark.slow
def test_remote_code_push_to_hub_without_scratch_gpt_is_transformers_own(lm_dir, run_without_scratch_gpt):
    """Loaded with trust_remote_code where scratch_gpt is absent: transformers' push, tokenizer after it."""
    output = run_without_scratch_gpt(
        f"""
import huggingface_hub
from huggingface_hub import HfApi, ModelCard, RepoUrl
from transformers import AutoModelForCausalLM, AutoTokenizer

def create_repo(self, repo_id, **kwargs):
    return RepoUrl("https://huggingface.co/" + repo_id)

def create_commit(self, repo_id, operations, **kwargs):
    print("commit", sorted(op.path_in_repo for op in operations))
    url = "https://huggingface.co/" + repo_id + "/commit/" + "0" * 40
    return huggingface_hub.CommitInfo(commit_url=url, commit_message="", commit_description="", oid="0" * 40)

def no_card_yet(*args, **kwargs):
    raise huggingface_hub.errors.EntryNotFoundError("no README.md")

HfApi.create_repo, HfApi.create_commit, ModelCard.load = create_repo, create_commit, no_card_yet
model = AutoModelForCausalLM.from_pretrained({str(lm_dir)!r}, trust_remote_code=True)
tokenizer = AutoTokenizer.from_pretrained({str(lm_dir)!r}, trust_remote_code=True)
assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
model.push_to_hub("owner/tiny-lm", tokenizer=tokenizer, token={FAKE_TOKEN!r})
"""
    )
    commits = [line for line in output.splitlines() if line.startswith("commit")]
    assert len(commits) == 2
    assert "'model.safetensors'" in commits[0] and "'modeling_scratch_gpt.py'" in commits[0]
    assert "'tokenizer.json'" in commits[1]


# ------------------------------------------------------------------------------ download by repo id


def test_add_to_hub_cache_uses_the_hub_cache_layout(lm_dir, tmp_path):
    write_card(lm_dir)
    cache = tmp_path / "hub"
    snapshot = hub.add_to_hub_cache(lm_dir, "owner/tiny-lm", cache_dir=cache)
    repo_dir = cache / "models--owner--tiny-lm"
    assert snapshot.parent == repo_dir / "snapshots"
    assert (repo_dir / "refs" / "main").read_text() == snapshot.name
    weights = snapshot / "model.safetensors"
    assert weights.is_symlink() and weights.resolve().parent == (repo_dir / "blobs").resolve()
    assert weights.read_bytes() == (lm_dir / "model.safetensors").read_bytes()
    assert 'model_id = "owner/tiny-lm"' in (snapshot / "README.md").read_text()
    assert (repo_dir / ".no_exist" / snapshot.name / "adapter_config.json").exists()  # known to be absent
    assert not (repo_dir / ".no_exist" / snapshot.name / "config.json").exists()
    found = huggingface_hub.try_to_load_from_cache("owner/tiny-lm", "config.json", cache_dir=cache)
    assert Path(found) == snapshot / "config.json"
    # Installing the same folder again is a no-op (same content, same snapshot).
    assert hub.add_to_hub_cache(lm_dir, "owner/tiny-lm", cache_dir=cache) == snapshot


# Runs in a fresh interpreter where `scratch_gpt` cannot be imported: everything comes from the cache.
LOAD_BY_REPO_ID = """
import importlib.abc, json, re, sys
from pathlib import Path

class NoScratchGPT(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "scratch_gpt":
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")

sys.meta_path.insert(0, NoScratchGPT())
sys.path = [p for p in sys.path if p and Path(p).resolve() != Path(sys.argv[1])]
try:
    import scratch_gpt
    raise SystemExit("scratch_gpt is importable; the test would prove nothing")
except ModuleNotFoundError:
    pass

import torch
from huggingface_hub import hf_hub_download
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("owner/tiny-lm")
input_ids = tokenizer([sys.argv[3]], return_tensors="pt")["input_ids"]
lm = AutoModelForCausalLM.from_pretrained("owner/tiny-lm", trust_remote_code=True).eval()
classifier = AutoModelForSequenceClassification.from_pretrained("owner/tiny-classifier", trust_remote_code=True).eval()
with torch.no_grad():
    result = {
        "input_ids": input_ids.tolist(),
        "lm_module": type(lm).__module__,
        "lm_logits": lm(input_ids).logits.tolist(),
        "classifier_logits": classifier(input_ids).logits.tolist(),
        "labels": classifier.config.id2label,
    }

# Every card's usage snippet runs as written (the repo id was filled in by add_to_hub_cache);
# the LoRA adapter's snippet finds its base model, owner/tiny-lm, by repo id too.
for repo_id in ("owner/tiny-lm", "owner/tiny-classifier", "owner/tiny-instruct", "owner/tiny-lora"):
    card = Path(hf_hub_download(repo_id, "README.md")).read_text()
    exec(re.search(r"```python\\n(.*?)```", card, re.S).group(1), {})
Path(sys.argv[2]).write_text(json.dumps(result))
"""


@pytest.mark.slow
def test_download_by_repo_id_in_a_process_without_scratch_gpt(lm_dir, classifier_dir, tiny_tokenizer, tmp_path):
    # The instruction prompt (with its default system line) needs a longer context than "tiny".
    instruct_dir = tmp_path / "tiny-instruct"
    ScratchGPTForCausalLM(ScratchGPTConfig.from_preset("tiny", max_position_embeddings=256)).save_pretrained(
        instruct_dir
    )
    tiny_tokenizer.save_pretrained(instruct_dir)
    lora_dir = save_lora_adapter(ScratchGPTForCausalLM.from_pretrained(lm_dir), tmp_path / "tiny-lora", "owner/tiny-lm")
    tiny_tokenizer.save_pretrained(lora_dir)
    hf_home = tmp_path / "hf_home"
    folders = ((lm_dir, "base"), (classifier_dir, "classifier"), (instruct_dir, "instruct"), (lora_dir, "base"))
    for folder, kind in folders:
        write_card(folder, kind)
        hub.add_to_hub_cache(folder, f"owner/{folder.name}", cache_dir=hf_home / "hub")

    script = tmp_path / "load_by_repo_id.py"
    script.write_text(LOAD_BY_REPO_ID)
    result_path = tmp_path / "result.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "PYTHON"))}
    env.update(HF_HOME=str(hf_home), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    run = subprocess.run(
        [sys.executable, str(script), str(REPO_ROOT), str(result_path), TEXT],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(result_path.read_text())

    input_ids = tiny_tokenizer([TEXT], return_tensors="pt")["input_ids"]
    assert result["input_ids"] == input_ids.tolist()
    assert result["lm_module"].startswith("transformers_modules.")  # the code shipped in the repo
    lm = ScratchGPTForCausalLM.from_pretrained(lm_dir).eval()
    classifier = ScratchGPTForSequenceClassification.from_pretrained(classifier_dir).eval()
    with torch.no_grad():
        torch.testing.assert_close(torch.tensor(result["lm_logits"]), lm(input_ids).logits, rtol=0, atol=0)
        torch.testing.assert_close(
            torch.tensor(result["classifier_logits"]), classifier(input_ids).logits, rtol=0, atol=0
        )
    assert result["labels"] == {"0": "ham", "1": "spam"}


# ------------------------------------------------------------------------------------------ safety


class PickleBomb:
    """Unpickling this would run code (here: create a folder)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def test_pickle_weights_are_never_unpickled_unsafely(lm_dir, tmp_path):
    marker = tmp_path / "code-ran"
    (lm_dir / "model.safetensors").unlink()
    torch.save({"transformer.wte.weight": PickleBomb(marker)}, lm_dir / "pytorch_model.bin")
    with pytest.raises(OSError, match="model.safetensors"):  # safetensors only by default
        AutoModelForCausalLM.from_pretrained(lm_dir)
    with pytest.raises(Exception, match="Weights only load failed"):  # opted in: still weights_only
        AutoModelForCausalLM.from_pretrained(lm_dir, use_safetensors=False)
    assert not marker.exists()


# -------------------------------------------------------------------------------------------- live


LIVE_ROUND_TRIP = """
import sys, torch, uuid
from huggingface_hub import HfApi
from transformers import AutoModelForCausalLM
from scratch_gpt import ScratchGPTForCausalLM
from scratch_gpt.hub import push_folder

folder, cache = sys.argv[1], sys.argv[2]
api = HfApi()
repo_id = f"{api.whoami()['name']}/scratch-gpt-test-{uuid.uuid4().hex[:8]}"
try:
    push_folder(folder, repo_id, private=True)
    remote = AutoModelForCausalLM.from_pretrained(repo_id, trust_remote_code=True, cache_dir=cache).eval()
    local = ScratchGPTForCausalLM.from_pretrained(folder).eval()
    ids = torch.tensor([[0, 5, 9, 42]])
    with torch.no_grad():
        torch.testing.assert_close(remote(ids).logits, local(ids).logits)
        local.lm_head.weight.mul_(0.5)  # push from memory to a branch, then read that revision back
    local.push_to_hub(repo_id, revision="from-memory")
    files = set(api.list_repo_files(repo_id, revision="from-memory"))
    assert {"model.safetensors", "modeling_scratch_gpt.py", "tokenizer.json", "README.md"} <= files, files
    remote = AutoModelForCausalLM.from_pretrained(
        repo_id, revision="from-memory", trust_remote_code=True, cache_dir=cache
    ).eval()
    with torch.no_grad():
        torch.testing.assert_close(remote(ids).logits, local(ids).logits)
finally:
    api.delete_repo(repo_id, missing_ok=True)
"""


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("HF_TOKEN"),
    reason="HF_TOKEN is not set: the live Hub round trip (push a tiny model, download it by repo id) was skipped",
)
def test_live_push_and_download_round_trip(lm_dir, tmp_path):
    write_card(lm_dir)
    env = {**os.environ, "HF_HUB_OFFLINE": "0", "HF_DATASETS_OFFLINE": "0"}
    run = subprocess.run(
        [sys.executable, "-c", LIVE_ROUND_TRIP, str(lm_dir), str(tmp_path / "cache")],
        env=env,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert os.environ["HF_TOKEN"] not in run.stdout + run.stderr


def test_push_with_no_network_fails_with_one_line(lm_dir, monkeypatch, capsys):
    """Online mode, but the Hub cannot be reached (here: a closed port on this machine)."""
    from huggingface_hub import HfApi

    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    real_init = HfApi.__init__
    monkeypatch.setattr(HfApi, "__init__", lambda self, **kwargs: real_init(self, endpoint="http://127.0.0.1:9", **kwargs))
    assert main(["push", str(lm_dir), "--repo-id", "owner/tiny-lm"]) == 1
    err = capsys.readouterr().err
    assert "the upload failed" in err and "check the network" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and FAKE_TOKEN not in err


@pytest.mark.parametrize("where", ["config.json", "model.safetensors"])
def test_push_refuses_any_token_shaped_string_in_any_file(lm_dir, hub_must_not_be_called, where):
    """A token that is not the user's own, left in the config or in the weights' metadata."""
    from safetensors.torch import load_file, save_file

    other = "hf_" + "A1b2" * 9
    if where == "config.json":
        config = json.loads((lm_dir / "config.json").read_text())
        (lm_dir / "config.json").write_text(json.dumps({**config, "notes": f"pulled with {other}"}))
    else:
        save_file(load_file(lm_dir / "model.safetensors"), lm_dir / "model.safetensors", metadata={"format": "pt", "by": other})
    with pytest.raises(ValueError, match=f"{where} contains a Hugging Face token"):
        hub.push_folder(lm_dir, "owner/tiny-lm", token=FAKE_TOKEN)
