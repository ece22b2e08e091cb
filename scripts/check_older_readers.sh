#!/usr/bin/env bash
# Our exports under transformers 4.57 (what llama.cpp's converter and optimum pin), in a virtual
# environment of its own beside this one: scripts/check_older_readers.py writes with this package and
# transformers 5, then reads with transformers 4.57 and without this package. Run from the repository root:
#   bash scripts/check_older_readers.sh [WORK_DIR]
set -euo pipefail
work="${1:-runs/older-readers}"
python scripts/check_older_readers.py write "$work"
old="$work/venv-transformers-4.57"
if [ ! -x "$old/bin/python" ]; then
    python3 -m venv "$old"
    "$old/bin/pip" install -q torch==2.13.0
    "$old/bin/pip" install -q "transformers==4.57.*" "huggingface_hub<1.0" safetensors
fi
"$old/bin/python" scripts/check_older_readers.py read "$work"
