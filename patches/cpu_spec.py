"""The CPU target: SGLang's MTP (EAGLE, top-k 1) speculative decoding on its CPU engine.

Target:   the Python launchers in ``sglang.kernels.ops.speculative`` that the EAGLE v2 worker
          calls with DeepSeek-V4's chain draft (``--speculative-eagle-topk 1``) and whose Triton
          kernels have no CPU branch (:data:`INTERPRETED`), and the two top-1 argmax launchers
          (:data:`ARGMAX`, which also holds the c128 compressor-state cleanup after a verify pass,
          ``kernels/ops/kvcache/dsv4_c128_cleanup.py`` ~37); ``sglang.srt.mem_cache.allocation.get_last_loc``.
Hook:     :data:`INTERPRETED`: AROUND. For the call, the launcher's Triton kernels (module globals
          it looks up when it launches them) are SGLang's own kernel source run by Triton's
          interpreter (``triton.runtime.interpreter.InterpretedFunction``) on the CPU tensors;
          nothing is re-implemented, so the index/length/tree arithmetic is SGLang's. These kernels
          only move integers and booleans, which the interpreter executes exactly
          (``reference/tilelang-cpu.md``: its known faults are bf16 arithmetic and inline asm).
          :data:`ARGMAX`: REPLACE with :mod:`sglang_ampere.kernels.spec_ops_torch` (float logits:
          the interpreter's bf16 handling is not trusted, and an argmax is one torch call).
          ``get_last_loc``: REPLACE with SGLang's own ``get_last_loc_torch``.
          Registered only on the CPU target without CUDA (:func:`sglang_ampere.cpu_target.active`);
          elsewhere :func:`hooks` returns no hook.
Why:      With ``SGLANG_USE_CPU_ENGINE=1`` SGLang 0.5.23's speculative kernels take the CPU build of
          sgl-kernel where they have a CPU branch (those ops are in
          :mod:`sglang_ampere.cpu_target.sgl_kernel_stub`), but the chain-draft helpers added for
          EAGLE v2 (``eagle.py`` ``prepare_verify_commit_outputs`` ~158, ``prepare_draft_extend_inputs``
          ~237, ``prepare_draft_extend_lengths`` ~296, ``prepare_draft_extend_layout`` ~317,
          ``build_chain_tree`` ~404; ``topk1.py`` ``draft_topk1_postprocess`` ~75; ``row_argmax.py``
          ``row_argmax`` ~134) launch Triton kernels unconditionally, which cannot run without a GPU.
SGLang:   written for 0.5.23 (file:line above).
"""

from __future__ import annotations

import importlib

from sglang_ampere.kernels.triton_interpret import kernels_interpreted

from . import Hook

SPEC = "sglang.kernels.ops.speculative"

#: launcher (module.function) -> the Triton kernels (module globals) it launches.
INTERPRETED: dict[str, tuple[str, ...]] = {
    f"{SPEC}.eagle.prepare_verify_commit_outputs": ("_verify_commit_outputs_kernel",),
    f"{SPEC}.eagle.prepare_draft_extend_inputs": ("_draft_extend_inputs_kernel",),
    f"{SPEC}.eagle.prepare_draft_extend_lengths": ("_prepare_draft_extend_lengths_kernel",),
    f"{SPEC}.eagle.prepare_draft_extend_layout": ("_prepare_draft_extend_lengths_kernel",),
    f"{SPEC}.eagle.build_chain_tree": ("_build_chain_tree_kernel",),
}

ALLOCATION = "sglang.srt.mem_cache.allocation"


def get_last_loc_torch_hook(req_to_token, req_pool_indices_tensor, prefix_lens_tensor):
    """SGLang's own torch ``get_last_loc_torch`` (``allocation.py`` ~140), which ``get_last_loc``
    takes only for the ascend/torch_native attention backends (~108-137) and otherwise launches
    the Triton ``get_last_loc_kernel`` (``kernels/ops/memory/common.py`` ~121); spec decode's
    page allocation (``alloc_for_spec_decode`` ~797) is the caller."""
    from sglang.srt.mem_cache.allocation import get_last_loc_torch

    return get_last_loc_torch(req_to_token, req_pool_indices_tensor, prefix_lens_tensor)


#: launcher -> its torch stand-in (``sglang_ampere.kernels.spec_ops_torch``).
ARGMAX: dict[str, str] = {
    f"{SPEC}.topk1.draft_topk1_postprocess": "draft_topk1_postprocess",
    f"{SPEC}.row_argmax.row_argmax": "row_argmax",
    "sglang.kernels.ops.kvcache.dsv4_c128_cleanup.clear_unaccepted_c128_draft_states":
        "clear_unaccepted_c128_draft_states",
}

def _interpreting_hook(module_name: str, names: tuple[str, ...]):
    def hook(original, *args, **kwargs):
        with kernels_interpreted(module_name, names):
            return original(*args, **kwargs)
    hook.__name__ = f"interpreted_{'_'.join(names)}"
    return hook


def active() -> bool:
    from sglang_ampere import cpu_target

    return cpu_target.active()


def hooks() -> list[Hook]:
    if not active():
        return []
    from sglang_ampere.kernels import spec_ops_torch

    out = []
    for target, names in INTERPRETED.items():
        module_name = target.rsplit(".", 1)[0]
        importlib.import_module(module_name)
        out.append(Hook(target, _interpreting_hook(module_name, names), "AROUND",
                        f"CPU target: SGLang's Triton kernels {', '.join(names)} run by Triton's interpreter"))
    for target, name in ARGMAX.items():
        importlib.import_module(target.rsplit(".", 1)[0])
        out.append(Hook(target, getattr(spec_ops_torch, name), "REPLACE",
                        f"CPU target: torch stand-in for SGLang's Triton {name}"))
    importlib.import_module(ALLOCATION)
    out.append(Hook(f"{ALLOCATION}.get_last_loc", get_last_loc_torch_hook, "REPLACE",
                    "CPU target: spec decode's last-slot lookup through SGLang's own get_last_loc_torch"))
    return out
