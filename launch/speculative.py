"""``launch --speculative mtp|dspark|none``, and SGLang's own verdict on the final arguments.

``mtp``: SGLang's EAGLE over the checkpoint's MTP layer (the draft model is the checkpoint
itself; SGLang sets ``speculative_draft_model_path`` to the model for DeepSeek-V4). The
arguments are what SGLang 0.5.23 itself picks for DeepSeek (``_auto_choose_speculative_params``),
written out so the plan and the dry run see them:

* ``--speculative-num-steps 3``: the one MTP layer is applied 3 times in a chain, each step
  drafting the next token from the previous draft;
* ``--speculative-eagle-topk 1``: one candidate per step, a chain rather than a tree; the only
  value SGLang accepts for DeepSeek-V4 (``deepseek_v4_hook``), and what the PP relay carries;
* ``--speculative-num-draft-tokens 4``: the verify pass checks the 3 drafts plus the bonus
  token (steps + 1 for a chain); within what the c4 compressor ring serves (at most 10).

With pp > 1 SGLang refuses EAGLE unless ``SGLANG_ENABLE_PP_SPEC=1`` (otherwise only PD prefill
nodes may speculate), so the launcher sets it whenever the final arguments ask for EAGLE over
pp > 1 and the user did not set it. ``dspark``: ``--speculative-algorithm DSPARK`` (the 0731
drafter); SGLang 0.5.23 runs it at pp = 1 only (outside PD prefill) and needs the drafter
(``--speculative-draft-model-path``) unless the checkpoint bundles one.

Whatever speculative arguments the final command has, :func:`validate` builds ``ServerArgs``
from the final argv the way ``launch_server`` does (plugins loaded, SGLang's parser,
``ServerArgs.from_cli_args``, ``resolve_once``) and runs ``check_server_args``, in the final
environment; a refusal is SGLang's own message plus what to change.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from typing import Mapping, Sequence

from sglang_ampere import envvars

from .argv import ServerArgv, quiet_sglang_warnings
from .errors import LaunchError

PP_SPEC_VAR = envvars.SGLANG_ENABLE_PP_SPEC



def mtp_args() -> tuple[tuple[str, str, str], ...]:
    """(flag, ServerArgs field, value) of ``--speculative mtp``; the values are the ones the memory
    plan sizes the draft for. Imported here, not at module level: the launcher must import
    without torch (the plan reads the checkpoint through ``sglang_ampere.inventory``)."""
    from sglang_ampere import memory_plan as plan_mod

    return (
        ("--speculative-algorithm", "speculative_algorithm", "EAGLE"),
        ("--speculative-num-steps", "speculative_num_steps", str(plan_mod.MTP_STEPS)),
        ("--speculative-eagle-topk", "speculative_eagle_topk", str(plan_mod.MTP_TOPK)),
        ("--speculative-num-draft-tokens", "speculative_num_draft_tokens", str(plan_mod.MTP_DRAFT_TOKENS)),
    )

REASON = {
    "--speculative-algorithm": "EAGLE runs the checkpoint's MTP layer as the draft",
    "--speculative-num-steps": "3 chained steps of the one MTP layer (SGLang's own choice for DeepSeek)",
    "--speculative-eagle-topk": "a chain: DeepSeek-V4 accepts only top-k 1",
    "--speculative-num-draft-tokens": "the 3 drafts + the bonus token are verified in one pass",
}

#: What to change, by a phrase of SGLang's refusal (the refusal itself is always quoted).
HINTS = (
    ("PP + speculative decoding", f"set {PP_SPEC_VAR}=1 (launch --speculative mtp does), or --pp-size 1"),
    ("SGLANG_ENABLE_PP_SPEC is not compatible",
     "drop the option it names, or unset SGLANG_ENABLE_PP_SPEC and use --pp-size 1"),
    ("topk == 1", "use --speculative-eagle-topk 1 (or launch --speculative mtp)"),
    ("Pipeline parallel DSPARK", "use --speculative mtp with --pp-size > 1, or --pp-size 1 for dspark"),
    ("DSpark pipeline parallelism", "use --speculative mtp with --pp-size > 1, or --pp-size 1 for dspark"),
    ("draft-model-path", "pass --speculative-draft-model-path DIR of the DSpark drafter (DeepSeek-V4-Flash-0731)"),
    ("multi-layer", "drop --enable-multi-layer-eagle"),
)


def speculative_args(choice: str | None, server: ServerArgv) -> tuple[list[str], list[tuple[str, str, str]]]:
    """(argv to add, [(flag, value, reason)] added) for ``--speculative``; user's values win."""
    if choice in (None, "none"):
        return [], []
    if choice == "mtp":
        algo = server.value("speculative_algorithm")
        if server.is_given("speculative_algorithm") and str(algo).upper() not in ("EAGLE", "NEXTN"):
            raise LaunchError(f"--speculative mtp contradicts --speculative-algorithm {algo}; give one")
        wanted = mtp_args()
    else:
        algo = server.value("speculative_algorithm")
        if server.is_given("speculative_algorithm") and str(algo).upper() != "DSPARK":
            raise LaunchError(f"--speculative dspark contradicts --speculative-algorithm {algo}; give one")
        wanted = (("--speculative-algorithm", "speculative_algorithm", "DSPARK"),)
    argv, used = [], []
    for flag, dest, value in wanted:
        if not server.is_given(dest):
            argv += [flag, value]
            used.append((flag, value, REASON.get(flag, "the DSpark drafter")))
    return argv, used


def check_draft_source(final: ServerArgv, config: Mapping) -> None:
    """Refuse a speculative algorithm whose draft this checkpoint's ``mtp.*`` cannot give (EAGLE on
    V4-Flash-0731's DSpark drafter, DSpark on V4-Flash's MTP block), unless the user names the draft
    checkpoint; SGLang itself only fails while loading the draft (the rule:
    :func:`sglang_ampere.inventory.draft_problem`)."""
    algo = str(final.value("speculative_algorithm") or "").upper()
    choice = "dspark" if algo == "DSPARK" else "mtp" if algo in ("EAGLE", "NEXTN") else None
    if choice is None:
        return
    from sglang_ampere.inventory import draft_problem  # imports torch (formats/); launch itself does not

    problem = draft_problem(choice, dict(config), final.is_given("speculative_draft_model_path"))
    if problem:
        raise LaunchError(f"--speculative-algorithm {algo}: {problem}")


def pp_spec_env(final: ServerArgv, pp: int, environ: Mapping[str, str],
                overrides: Mapping[str, str]) -> tuple[str, str] | None:
    """``(SGLANG_ENABLE_PP_SPEC, "1")`` when EAGLE runs over pp > 1 and the user did not set it."""
    algo = str(final.value("speculative_algorithm") or "").upper()
    if pp > 1 and algo in ("EAGLE", "NEXTN") and PP_SPEC_VAR not in environ and PP_SPEC_VAR not in overrides:
        return PP_SPEC_VAR, "1"
    return None


@contextlib.contextmanager
def _environment(env: Mapping[str, str]):
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def validate(server_args: Sequence[str], env: Mapping[str, str], assume_device: str | None = "cuda") -> None:
    """SGLang's own resolution and checks on the final server arguments, in the final environment.

    ``server_args`` is what follows ``-m sglang.launch_server``. ``assume_device``: added as
    ``--device`` when the arguments name none, so the check runs on a machine without a GPU
    (SGLang would resolve the device to CUDA on the server). Raises :class:`LaunchError` with
    SGLang's reason and what to change.
    """
    args = list(server_args)
    if assume_device and not any(a == "--device" or a.startswith("--device=") for a in args):
        args += ["--device", assume_device]
    with _environment(env), quiet_sglang_warnings():
        try:
            from sglang.srt.arg_groups.validation_hook import check_server_args
            from sglang.srt.plugins import load_plugins
            from sglang.srt.server_args import ServerArgs
        except ImportError as exc:
            raise LaunchError(f"SGLang is not importable here ({exc})") from exc
        load_plugins()
        parser = argparse.ArgumentParser(prog="sglang serve")
        ServerArgs.add_cli_args(parser)
        if "--config" in args:
            from sglang.srt.utils.server_args_config_parser import ConfigArgumentMerger

            args = ConfigArgumentMerger(parser).merge_config_with_args(args)
        try:
            sa = ServerArgs.from_cli_args(parser.parse_args(args))
            sa.resolve_once()
            check_server_args(sa)
        except SystemExit as exc:                       # argparse
            raise LaunchError(f"SGLang refuses the arguments (exit {exc.code})") from exc
        except Exception as exc:                        # SGLang's checks raise ValueError / AssertionError
            reason = (str(exc) or type(exc).__name__).rstrip(".")
            hint = next((h for key, h in HINTS if key in reason), "change the argument SGLang names")
            raise LaunchError(f"SGLang 0.5.23 refuses this combination: {reason}. To fix: {hint}") from exc
