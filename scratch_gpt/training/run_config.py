"""`config.yaml` in a run folder: the options the run was started with, as a `--config` file holds them.

A command hands its resolved options to the loop (`TrainingConfig.run_options`, from
`scratch_gpt.args.as_config`). The first time the loop takes a run folder it writes them there;
`--resume` first compares the options now with that file, and refuses, before any work, an option
that may not change (an option declared `resumable`, such as --max-steps or --eval-every, may).
"""

from pathlib import Path

from scratch_gpt.args import resume_changes
from scratch_gpt.errors import BadInput
from scratch_gpt.io_utils import write_atomically

FILE = "config.yaml"


def read_run_options(run_dir) -> dict | None:
    import yaml

    path = Path(run_dir) / FILE
    if not path.is_file():
        return None
    try:
        saved = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError):
        raise BadInput(f"The run's {str(path)!r} is damaged; restore it, or start a new run without --resume.") from None
    return saved if isinstance(saved, dict) else None


def check_resume_options(run_options: dict | None, *folders) -> None:
    """On `--resume`: every option that may not change has the value in the run's config.yaml, read from
    the first of `folders` that holds one (a fine-tune's run works in a folder beside its model folder)."""
    run_dir = next((Path(folder) for folder in folders if (Path(folder) / FILE).is_file()), None)
    saved = read_run_options(run_dir) if run_options and run_dir else None
    if saved is None:  # not a command's run, or a run from before config.yaml
        return
    changed = resume_changes(saved, run_options)
    if changed:
        raise BadInput(
            f"--resume continues the run in {str(run_dir)!r} with other options than it started with "
            f"({', '.join(changed)}); give the values of its {FILE}, or start a new run in another --output-dir."
        )


def save_run_options(run_options: dict | None, run_dir) -> None:
    import yaml

    if run_options:
        write_atomically(Path(run_dir) / FILE, yaml.safe_dump(run_options, sort_keys=False, allow_unicode=True))


__all__ = ["check_resume_options", "save_run_options", "read_run_options"]
