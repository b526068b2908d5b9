"""The launch spec: everything ``launch`` decided, before it is printed (:mod:`.render`) or exec'd.

Built by :func:`.launcher.build_spec`; a value with no behaviour, so that the renderer and the
launcher both import it and neither imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sglang_ampere.notes import Note

    from .presets import ArgEntry, Preset
    from .resolve import EnvChange


@dataclass
class LaunchSpec:
    arch: str
    preset: Preset
    gpus: list                         # list[gpus.Gpu] visible on this node
    env: dict[str, str]                # the full environment SGLang gets
    changes: list[EnvChange]           # what differs from the caller's environment
    argv: list[str]                    # python -m sglang.launch_server ...
    node_argvs: list[list[str]] = field(default_factory=list)   # --dry-run with --nnodes N
    notes: list[Note] = field(default_factory=list)
    help_only: bool = False
    dry_run: bool = False
    preset_args_used: list[ArgEntry] = field(default_factory=list)   # added to argv
    preset_args_kept: list[ArgEntry] = field(default_factory=list)   # the user's value overrode them
    spec_args_used: list = field(default_factory=list)       # (flag, value, reason) from --speculative
    swa_args_used: list = field(default_factory=list)        # (flag, value, reason) from the SWA pool rule
    mem_args_used: list = field(default_factory=list)        # (flag, value, reason) from the memory plan
    stage_table: str = ""                                    # the per-stage memory plan (memory known)
    card_arch: str = ""                # the GPUs' own arch, when SGLANG_AMPERE_TARGET=ampere makes it differ
    native_path: bool = False          # the native FP8/FP4 checkpoint below sm_90: the preset's [native] added
