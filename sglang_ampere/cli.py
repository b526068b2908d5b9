"""The ``sglang-ampere`` console script.

Each sub-command lives in its own module exposing ``add_arguments(parser)`` and
``run(args) -> int``, or ``OWN_ARGV = True`` and ``main(argv) -> int`` for a command that
parses its own arguments. Only the chosen command's module is imported, so ``--help`` and
the launcher never pay for torch or SGLang imports they do not need.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__

#: command -> one-line help, in the order ``--help`` lists them. The command lives in
#: ``sglang_ampere.commands.<command>`` (``-`` spelled ``_``): :func:`module_name`.
COMMANDS: dict[str, str] = {
    "quickstart": "synth -> convert -> audit in one folder, then say what to run next",
    "synth": "write a small native-format DeepSeek-V4-Flash checkpoint",
    "convert": "requantize a native checkpoint (MXFP4/FP8) into dsv4_int (INT4/INT8)",
    "audit": "check a native or dsv4_int checkpoint (plan, counts, config, SNR)",
    "eval": "run the reference forward: perplexity, KL / top-1 against the native model, layer SNR",
    "plan": "memory per pipeline stage from the headers, the balanced layer split, what context fits",
    "launch": "start SGLang's server with the GPU's preset (see launch --help)",
    "doctor": "check SGLang, the plugin, patches, GPUs, JIT tools and presets",
    "selftest": "run every GPU kernel check and print a pass/fail table",
    "bench": "TTFT, TPOT and tok/s per stream over context x concurrency against a server",
    "gpu-check": "on a GPU: doctor, selftest, tests/gpu, a server vs the reference, bench",
    "warmup": "compile SGLang's JIT kernels for the dsv4_int and native paths ahead of time",
    "kernel-report": "compile the TileLang kernels for sm_86/sm_80 (no GPU) and inspect their SASS",
    "device-kit": "build a folder that checks every GPU kernel on a bare GPU machine (torch only)",
}


def module_name(command: str) -> str:
    return f"{__package__}.commands.{command.replace('-', '_')}"


def _build_parser(selected: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sglang-ampere",
        description="DeepSeek-V4-Flash on NVIDIA Ampere with upstream SGLang "
        "(converter, plugin, sparse MLA, launcher).",
    )
    parser.add_argument("--version", action="version", version=f"sglang-ampere {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_ in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        if name == selected:
            importlib.import_module(module_name(name)).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    selected = next((a for a in argv if not a.startswith("-")), None)
    if selected in COMMANDS:
        module = importlib.import_module(module_name(selected))
        if getattr(module, "OWN_ARGV", False):
            # The command parses its own arguments (launch forwards the ones it does not
            # know to SGLang, which argparse's parse_args would reject).
            return int(module.main(argv[argv.index(selected) + 1:]) or 0)
    parser = _build_parser(selected if selected in COMMANDS else None)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    module = importlib.import_module(module_name(args.command))
    return int(module.run(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
