"""What a fresh install gets: CI runs the README's test command, which installs pinned versions
that satisfy pyproject.toml's ranges (scripts/check_latest.sh tests the newest ones)."""

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def readme_test_command() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("Run the tests") :]
    return re.search(r"```bash\n(.+?)\n```", section, re.DOTALL).group(1).strip()


def pinned() -> dict[str, str]:
    lines = (ROOT / ".ci" / "constraints.txt").read_text().splitlines()
    pins = [line.split("==") for line in lines if line.strip() and not line.startswith("#")]
    assert all(len(pin) == 2 for pin in pins), "every line of .ci/constraints.txt is NAME==VERSION"
    return {canonicalize_name(name): version for name, version in pins}


def test_ci_runs_exactly_the_readme_test_command_with_the_constraints():
    command = readme_test_command()
    assert (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1] == command
    assert "pip install -c .ci/constraints.txt torch==2.13.0" in command and "pip check" in command
    assert "pip install -c .ci/constraints.txt -e" in command


def test_the_constraints_pin_every_requirement_inside_its_range():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = [Requirement(line) for line in project["dependencies"]]
    requirements += [Requirement(line) for extra in project["optional-dependencies"].values() for line in extra]
    pins = pinned()
    for requirement in requirements:
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement.name} is not pinned in .ci/constraints.txt; refresh it (see the README)"
        assert requirement.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} is outside {requirement}"
    assert pins["torch"] == "2.13.0"  # the CPU build on disk; no local version (+cpu) in the pin
    assert "kernels" in pins and "setuptools" in pins  # transitive (transformers, torch bring them): the freeze is full


def test_every_subpackage_is_in_the_wheel():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {".".join(path.parent.relative_to(ROOT).parts) for path in (ROOT / "scratch_gpt").rglob("__init__.py")}
    assert on_disk <= listed, f"add {sorted(on_disk - listed)} to [tool.setuptools] packages in pyproject.toml"
