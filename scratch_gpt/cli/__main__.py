import sys

from scratch_gpt.cli import main

sys.exit(main())
