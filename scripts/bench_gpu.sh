#!/usr/bin/env bash
# Issue 15's GPU benchmark in one run (under 5 minutes on an H100/H200): scripts/bench_gpu.py's table.
#
# The GPU machine is offline, with its own packages (Python 3.12, torch 2.11, transformers 5.17,
# no datasets/evaluate). The package needs transformers >= 5.20 and runs from this source tree
# (PYTHONPATH, no install), so pinned wheels travel in the ignored folder .whl/ (15.4 MiB).
# Fetch them once, on a machine with PyPI, in the repository root (.gitignore already ignores
# .whl/; in a clone with another .gitignore first run: echo /.whl/ >> .git/info/exclude):
#
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl transformers==5.24.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 evaluate==0.4.6 \
#     regex==2026.5.9 peft==0.21.2 llms-from-scratch==1.0.19
#
# Why these: transformers 5.24 needs huggingface-hub>=1.31 (1.33 there), tokenizers>=0.23.1,<0.24
# (0.23.2 there), safetensors>=0.8 (0.8.0 there) and regex>=2025.10.22 (checked when transformers is
# imported; the machine's version is not known, so regex travels); datasets needs dill and
# multiprocess; evaluate (the classifier's metrics) needs datasets; peft is pinned to the tested one;
# llms-from-scratch is the book's GPTModel for the peers step (installed --no-deps like the rest: it needs only torch).
#
# Last, a short peers step (scripts/bench_peers.py, at most 60 s of the 5 minutes; bench_gpu.py's compiled rows
# stop at 200 s instead of 240 to leave it room): GPT-2 124M in fp32 (its logits check is at 1e-4), ours beside
# GPT2LMHeadModel and the book's GPTModel. litgpt needs a venv of its own, which the GPU machine has not: it is
# skipped with its one line.
#
# Then run it there, with the device tool, from the repository root:
#   command: bash scripts/bench_gpu.sh      carry: [".whl"]      timeout_s: 420
# The log is also written to $OUT/bench_gpu.log when $OUT is set. Here, without a GPU:
#   bash scripts/bench_gpu.sh --cpu-dry-run        (arguments go to bench_gpu.py)
set -o pipefail
cd "$(dirname "$0")/.."

# The wheels are built for the GPU machine's Python 3.12; elsewhere (a CPU dry run) the installed packages serve.
if ls .whl/*.whl >/dev/null 2>&1 && python3 -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))'; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || { echo "bench_gpu.sh: installing the carried wheels failed" >&2; exit 1; }
    export PYTHONPATH=$PWD:/tmp/site  # before site-packages: the carried transformers 5.24 wins over the machine's
else
    echo "bench_gpu.sh: no .whl/ for this Python; using the installed packages" >&2
    export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

PEERS=(--preset gpt2-small --seq-len 1024 --batch 8 --arch gpt2 --repeats 2 --steps 5 --new-tokens 32) PEERS_S=60
case " $* " in *" --cpu-dry-run "*)  # tiny, on CPU (a shared CPU starts its processes slowly: more time)
    PEERS=(--vocab-size 512 --hidden-size 32 --layers 2 --seq-len 16 --batch 2 --arch gpt2 --repeats 1 --steps 1 \
        --new-tokens 4 --device cpu) PEERS_S=600 ;;
esac
run() {
    python3 scripts/bench_gpu.py --budget-s 200 "$@"
    local status=$?  # the run's exit status: bench_gpu.py's
    echo "== peers (scripts/bench_peers.py ${PEERS[*]})"
    timeout "$PEERS_S" python3 scripts/bench_peers.py "${PEERS[@]}" || echo "bench_peers.py: stopped (exit $?; 124: past its $PEERS_S s)"
    return $status
}
if [ -n "${OUT:-}" ]; then
    run "$@" 2>&1 | tee "$OUT/bench_gpu.log"
else
    run "$@"
fi
