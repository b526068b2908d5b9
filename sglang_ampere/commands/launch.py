"""``sglang-ampere launch [options] [--] <sglang server args>``: SGLang's server with the GPU's
preset (:mod:`sglang_ampere.launch`; ``python -m sglang_ampere.launch`` is the same)."""

from __future__ import annotations

from typing import Sequence

#: The launcher parses its own options (and prints ``--help``) and forwards the rest to SGLang,
#: which argparse's ``parse_args`` would reject.
OWN_ARGV = True


def main(argv: Sequence[str]) -> int:
    from ..launch.launcher import main as launch

    return launch(argv)
