"""Entry point for `accelerate launch`: the same options as `scratch-gpt pretrain`.

    accelerate launch scripts/pretrain.py --max-steps 1000 --output-dir runs/base
    accelerate launch --config_file scripts/accelerate_ddp.yaml scripts/pretrain.py --preset gpt2-small ...
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 scripts/pretrain.py ...   # CPU, gloo
"""

import sys

from scratch_gpt.cli import main

if __name__ == "__main__":
    sys.exit(main(["pretrain", *sys.argv[1:]]))
