"""The command line, parsed once: the launcher's own options, then SGLang's server arguments.

The SGLang arguments are read with SGLang 0.5.23's own machinery, not a copy of its rules:
the parser ``ServerArgs.add_cli_args`` builds and, for ``--config FILE``, the
``ConfigArgumentMerger`` that ``prepare_server_args`` uses (YAML values first, the command line
after them, so CLI > config > defaults). :class:`ServerArgv` then holds every server argument's
value after that merge and which ones the user set (on the command line or in the YAML), so
the preset fills only what the user set nowhere and the topology check sees the merged values.

SGLang is imported only when the server arguments are parsed (about 6 s, it imports torch);
importing this module is cheap.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import re
from dataclasses import dataclass
from typing import Mapping, Sequence

from sglang_ampere import envvars
from sglang_ampere.gpus import PRESET_TARGETS
from sglang_ampere.speculative import CHOICES as SPECULATIVE

from .errors import LaunchError

#: (launcher flag, options attribute, variable it sets) of the fork-era sparse-MLA / indexer flags.
NSA_FLAGS = (
    ("--nsa-prefill-backend", "nsa_prefill_backend", envvars.PREFILL_BACKEND),
    ("--nsa-decode-backend", "nsa_decode_backend", envvars.DECODE_BACKEND),
    ("--nsa-indexer-backend", "nsa_indexer_backend", envvars.INDEXER_BACKEND),
)
NSA_CHOICES = ("torch", "tilelang")
HELP_FLAGS = ("-h", "--help")
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


# ----------------------------------------------------------------------------- launcher options


def make_parser(prog: str = "sglang-ampere launch") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        usage=f"{prog} [options] [--] <sglang server args>",
        description=(
            "Start SGLang's OpenAI-compatible server (python -m sglang.launch_server) for a\n"
            "DeepSeek-V4-Flash checkpoint (dsv4_int, or the native FP8/FP4 release: below sm_90\n"
            "the preset's [native] settings are added) with the preset for this GPU.\n"
            "Arguments this launcher does not know (or everything after --) go to SGLang,\n"
            "which reads them (and --config FILE) with its own parser."),
        epilog=(
            "precedence:\n"
            "  environment: --env KEY=VALUE (and --nsa-*-backend) > your environment > preset\n"
            "  server args: your SGLang arguments (command line or --config YAML) > preset defaults\n"
            "fork-era names: --nsa-prefill-backend/--nsa-decode-backend/--nsa-indexer-backend are\n"
            "  taken here (SGLang 0.5.23 has no such flags); SGLANG_HACK_FLASHMLA_BACKEND=torch\n"
            "  selects the torch sparse-MLA path for both phases.\n"
            "examples:\n"
            f"  {prog} --model-path /models/DeepSeek-V4-Flash-dsv4_int --pp-size 12\n"
            f"  {prog} --gpu sm86 --dry-run --model-path DIR --pp-size 4 --nnodes 3 \\\n"
            "      --dist-init-addr 10.0.0.1:5000"),
    )
    p.add_argument("--gpu", default="auto", metavar="ARCH",
                   help=f"auto (read nvidia-smi) or one of {', '.join(PRESET_TARGETS)} (sm_86 and 86 also "
                        "work; default: auto; cpu: "
                        "SGLang's CPU engine with sglang-ampere's torch stand-ins, no GPU needed, slow: for tests "
                        "and a first try)")
    p.add_argument("--preset", metavar="FILE", help="use this preset TOML file instead of env/<arch>.toml")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="set an environment variable for SGLang (repeatable; beats everything)")
    what = {"--nsa-prefill-backend": "sparse-MLA prefill", "--nsa-decode-backend": "sparse-MLA decode",
            "--nsa-indexer-backend": "C4 indexer logits"}
    for flag, _attr, var in NSA_FLAGS:
        p.add_argument(flag, choices=NSA_CHOICES,
                       help=f"{what[flag]} implementation below sm_90 (sets {var})")
    p.add_argument("--num-gpus", type=int, metavar="N",
                   help="GPUs per node for the topology check (default: the GPUs visible here)")
    p.add_argument("--speculative", choices=SPECULATIVE, default=None,
                   help="mtp: SGLang's EAGLE with the checkpoint's MTP layer (steps 3, top-k 1, 4 draft "
                        "tokens; sets SGLANG_ENABLE_PP_SPEC=1 with --pp-size > 1); dspark: the 0731 drafter "
                        "(pp 1 only); every combination is checked by SGLang's own argument validation")
    p.add_argument("--dry-run", action="store_true",
                   help="print the environment changes and the exact command instead of running it")
    return p


def split_argv(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """Launcher options and the SGLang arguments (order kept; ``--nsa-*`` taken from both)."""
    argv = list(argv)
    tail: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, tail = argv[:cut], argv[cut + 1:]
    opts, unknown = make_parser().parse_known_args(argv)
    return opts, _take_nsa_flags(unknown + tail, opts)


def _take_nsa_flags(server_args: list[str], opts: argparse.Namespace) -> list[str]:
    """Remove ``--nsa-*-backend`` that ended up among the SGLang arguments (after ``--``)."""
    out, i = [], 0
    while i < len(server_args):
        a = server_args[i]
        for flag, attr, _var in NSA_FLAGS:
            if a == flag or a.startswith(flag + "="):
                if a == flag:
                    value = server_args[i + 1] if i + 1 < len(server_args) else None
                    i += 2
                else:
                    value = a.split("=", 1)[1]
                    i += 1
                if value not in NSA_CHOICES:
                    raise LaunchError(f"{flag} must be one of {', '.join(NSA_CHOICES)} (got {value!r})")
                setattr(opts, attr, value)
                break
        else:
            out.append(a)
            i += 1
    return out


def parse_env_overrides(items: Sequence[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not _ENV_KEY.match(key):
            raise LaunchError(
                f"--env {item!r} is not KEY=VALUE with KEY a variable name "
                "(write e.g. --env SGLANG_OPT_USE_TOPK_V2=0; quote values with spaces)")
        env[key] = value
    return env


def wants_help(server_args: Sequence[str]) -> bool:
    """``launch ... -- --help``: only SGLang's help is printed, nothing is checked."""
    return any(a in HELP_FLAGS for a in server_args)


# ----------------------------------------------------------------------------- SGLang's arguments


@dataclass(frozen=True)
class ServerArgv:
    """SGLang's server arguments as SGLang reads them."""

    cli: tuple[str, ...]                 # as given on the command line (what SGLang is exec'd with)
    values: Mapping[str, object]         # every argument after the --config merge, defaults included
    given: frozenset[str]                # dests set on the command line or in the --config YAML
    config_file: str | None = None

    def value(self, dest: str, default=None):
        v = self.values.get(dest)
        return default if v is None else v

    def is_given(self, dest: str) -> bool:
        return dest in self.given

    def with_args(self, args: Sequence[str]) -> ServerArgv:
        """These arguments with ``args`` (the launcher's: the preset's, ``--speculative``'s, the
        memory plan's) after them, as SGLang's parser would read the whole command line: each
        dest ``args`` sets takes its value there (:func:`values_of`, the parser already built) and
        counts as given. The user's command line and ``--config`` are not read again; ``args``
        only set dests the user did not (the launcher adds nothing the user set)."""
        added = values_of(args)
        return ServerArgv(cli=self.cli + tuple(args), values={**self.values, **added},
                          given=self.given | frozenset(added), config_file=self.config_file)


class _ServerArgParser(argparse.ArgumentParser):
    """SGLang's parser, with its usage errors raised as :class:`LaunchError` instead of exiting."""

    def error(self, message: str):
        m = re.match(r"argument (--[\w-]+)\S*: invalid int value: '(.*)'$", message)
        if m:
            raise LaunchError(f"{m.group(1)} {m.group(2)!r} is not an integer")
        raise LaunchError(f"SGLang's server arguments: {message}")


@functools.lru_cache(maxsize=1)
def _sglang_parsers() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """(SGLang's server parser, the same with every default suppressed), built once.

    The second parser reports only the arguments that were actually given, which is how
    "the user set it (CLI or YAML)" is told from "it is SGLang's default". ``dsv4_int`` is added
    to the ``--quantization`` choices first, as the plugin does in the server process.
    ``--model-path`` is made optional so that its absence gets the launcher's own message.
    """
    try:
        from sglang.srt.server_args import ServerArgs
    except ImportError as exc:
        raise LaunchError(f"SGLang is not importable here ({exc}); install it with "
                          "pip install 'sglang-ampere[serve]'") from exc
    from sglang_ampere.plugin import register_quantization_choice

    register_quantization_choice()
    parsers = []
    for suppress in (False, True):
        p = _ServerArgParser(prog="sglang.launch_server", allow_abbrev=True)
        ServerArgs.add_cli_args(p)
        for action in p._actions:       # argparse has no public API to iterate its actions
            action.required = False
            if suppress:
                action.default = argparse.SUPPRESS
        parsers.append(p)
    return parsers[0], parsers[1]


@contextlib.contextmanager
def quiet_sglang_warnings():
    """Silence log warnings while the launcher runs SGLang's parser or checks: SGLang logs them
    again (e.g. for deprecated flags) when the server itself parses the same arguments."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


def _merge_config(parser: argparse.ArgumentParser, cli: list[str]) -> tuple[list[str], str | None]:
    """``prepare_server_args``'s config merge: YAML values, then the command line."""
    if any(a.startswith("--config=") for a in cli):
        raise LaunchError("write --config FILE, not --config=FILE: SGLang 0.5.23 merges the file only "
                          "in the two-word form and would silently ignore it")
    if "--config" not in cli:
        return cli, None
    from sglang.srt.utils.server_args_config_parser import ConfigArgumentMerger

    i = cli.index("--config")
    path = cli[i + 1] if i + 1 < len(cli) else None
    try:
        return ConfigArgumentMerger(parser).merge_config_with_args(cli), path
    except Exception as exc:   # SGLang raises ValueError, yaml errors, OSError; each is the user's to fix
        raise LaunchError(f"--config {path}: {exc}") from exc


def parse_server_args(cli: Sequence[str]) -> ServerArgv:
    """Read SGLang's arguments exactly as ``prepare_server_args`` does. Raises :class:`LaunchError`."""
    cli = list(cli)
    full, probe = _sglang_parsers()
    merged, config_file = _merge_config(full, cli)
    with quiet_sglang_warnings():
        values = vars(full.parse_args(merged))
        given = vars(probe.parse_args(merged))
    return ServerArgv(cli=tuple(cli), values=values, given=frozenset(given) - {"config"},
                      config_file=config_file)


def values_of(args: Sequence[str]) -> dict[str, object]:
    """dest -> value of a fragment of server arguments (e.g. ``["--context-length", "8"]``), as
    SGLang's parser reads it (only the dests the fragment sets)."""
    _, probe = _sglang_parsers()
    with quiet_sglang_warnings():
        return vars(probe.parse_args(list(args)))


def dests_of(args: Sequence[str]) -> frozenset[str]:
    """The SGLang dests a fragment of server arguments sets (e.g. ``["--context-length", "8"]``)."""
    return frozenset(values_of(args))


def with_arg(args: Sequence[str], flag: str, value: str) -> list[str]:
    """``args`` (a fragment of server arguments, e.g. the preset's) without ``flag`` (both the
    ``--flag VALUE`` and ``--flag=VALUE`` forms), then ``flag value``."""
    out, i = [], 0
    while i < len(args):
        if args[i] == flag:
            i += 2
            continue
        if not args[i].startswith(flag + "="):
            out.append(args[i])
        i += 1
    return out + [flag, value]
