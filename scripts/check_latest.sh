#!/usr/bin/env bash
# The newest versions pyproject.toml allows, tested on purpose (CI tests the pinned ones in
# .ci/constraints.txt). Run from anywhere in the repository:
#
#     bash scripts/check_latest.sh                       # the fast suite and the multi-process tests
#     bash scripts/check_latest.sh -k fsdp               # extra pytest arguments narrow the run
#     bash scripts/check_latest.sh --write-constraints   # and, if they pass, pin what was tested
#
# It makes a fresh virtual environment, installs torch 2.13.0 (the CPU build; a newer torch would
# pull a multi-GB CUDA build) and then the package with its test extras, with no constraints file,
# so pip resolves the newest release of everything else. It prints the versions it got and the
# result, and exits non-zero when a test fails. When it does, fix the code or narrow the range in
# pyproject.toml with a comment that says why. With --write-constraints, a passing run writes the
# full freeze of that environment (transitive packages included) to .ci/constraints.txt.
set -euo pipefail
cd "$(dirname "$0")/.."

write=0
if [ "${1:-}" = "--write-constraints" ]; then
  write=1
  shift
fi

venv=$(mktemp -d)/venv
trap 'rm -rf "$(dirname "$venv")"' EXIT
python3 -m venv "$venv"
py="$venv/bin/python"
"$py" -m pip install -q --upgrade pip
"$py" -m pip install -q torch==2.13.0
"$py" -m pip install -q --upgrade ".[test]"
"$py" -m pip check

echo "== resolved versions (newest allowed by pyproject.toml)"
"$py" -m pip list --format=freeze 2>/dev/null \
  | grep -iE '^(torch|transformers|tokenizers|kernels|accelerate|peft|datasets|evaluate|safetensors|huggingface[-_]hub|lm[-_]eval|gradio)=='

if [ "$write" -eq 1 ]; then  # written first, so that the tests check the new pins too; put back on a failure
  [ -f .ci/constraints.txt ] && cp .ci/constraints.txt "$(dirname "$venv")/constraints.before"
  {
    echo "# The versions CI tests (pip install -c .ci/constraints.txt): a full freeze, transitive packages included."
    echo "# Written by 'bash scripts/check_latest.sh --write-constraints' on $(date -u +%Y-%m-%d); its tests passed."
    echo "# torch is the CPU build that 'pip install torch==2.13.0' takes; setuptools (torch needs it) is pinned too;"
    echo "# pip and the package itself are not listed."
    "$py" -m pip freeze --all --exclude-editable | grep -viE '^(scratch[-_]gpt[ =@]|pip==)' | sed -E 's/^torch==([0-9.]+)\+cpu$/torch==\1/'
  } > .ci/constraints.txt
fi

echo "== the fast suite and the multi-process tests (pytest -m 'not slow or processes')"
status=0
HF_HUB_OFFLINE=1 "$py" -m pytest -q -p no:cacheprovider -m "not slow or processes" "$@" || status=$?
if [ "$status" -ne 0 ]; then
  if [ "$write" -eq 1 ]; then
    if [ -f "$(dirname "$venv")/constraints.before" ]; then cp "$(dirname "$venv")/constraints.before" .ci/constraints.txt; else rm -f .ci/constraints.txt; fi
    echo "== .ci/constraints.txt left as it was"
  fi
  echo "== check_latest: FAILED (pytest exit $status): fix the code, or narrow the range in pyproject.toml and say why"
  exit "$status"
fi
echo "== check_latest: PASSED with the newest allowed versions"
[ "$write" -eq 1 ] && echo "== wrote .ci/constraints.txt ($(grep -vc '^#' .ci/constraints.txt) packages)"
exit 0
