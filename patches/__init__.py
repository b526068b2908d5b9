"""The patch layer: one module per upstream SGLang target it hooks.

Every module in :data:`PATCH_MODULES` starts with a docstring stating its target(s), the
hook type, why the hook exists and the SGLang version it was written for, and exposes

    def hooks() -> list[Hook]

The plugin (``sglang_ampere.plugin``) registers every hook with SGLang's HookRegistry and
then verifies that each one took effect (SGLang logs and swallows hook errors).
Importing this package must not import SGLang; patch modules import SGLang lazily.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

#: Import paths of the patch modules, in registration order.
PATCH_MODULES: list[str] = [
    "sglang_ampere.patches.dsv4_loader",
    "sglang_ampere.patches.dsv4_attention",
    "sglang_ampere.patches.dsv4_indexer",
    "sglang_ampere.patches.dsv4_native",
    "sglang_ampere.patches.dsv4_rope",
    "sglang_ampere.patches.cpu_engine",
    "sglang_ampere.patches.cpu_ops",
    "sglang_ampere.patches.cpu_spec",
]


@dataclass(frozen=True)
class Hook:
    target: str                 # dotted path: "module.attr" or "module.Class.method"
    fn: Callable                # the hook (signature per SGLang's HookType)
    hook_type: str              # "BEFORE" | "AFTER" | "AROUND" | "REPLACE"
    why: str                    # one line, shown by `doctor` and in verification errors
