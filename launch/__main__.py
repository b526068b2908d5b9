"""``python -m sglang_ampere.launch [options] [--] <sglang server args>``."""
import sys

from .launcher import main

sys.exit(main(sys.argv[1:]))
