"""SGLang's own Triton kernels run by Triton's interpreter on CPU tensors (the CPU target).

Some of SGLang's speculative-decoding kernels do integer bookkeeping only (tree building,
verification, draft-extend layouts); on the CPU target they are run as they are, by Triton's
interpreter, instead of being ported. Used by ``patches/cpu_spec.py`` and
:mod:`sglang_ampere.kernels.spec_ops_torch`; pure Python over ``triton`` (no SGLang import).
"""

from __future__ import annotations

import contextlib
import sys

_INTERPRETERS: dict[tuple[str, str], object] = {}


def interpreted(kernel):
    """``kernel`` (a ``triton.jit`` function) run by Triton's interpreter; cached per kernel."""
    from triton.runtime.interpreter import InterpretedFunction

    fn = getattr(kernel, "fn", kernel)
    key = (fn.__module__, fn.__qualname__)
    if key not in _INTERPRETERS:
        _INTERPRETERS[key] = InterpretedFunction(fn)
    return _INTERPRETERS[key]


@contextlib.contextmanager
def kernels_interpreted(module_name: str, names: tuple[str, ...]):
    """The module's Triton kernels ``names`` interpreted for the block, restored after. Inside a
    kernel, calls to other ``triton.jit`` functions (``tl.sum``, ``tl.max`` and the rest of
    Triton's standard library are such functions) are interpreted too, as under
    ``TRITON_INTERPRET=1``: ``JITFunction.__call__`` otherwise refuses ("Cannot call @triton.jit'd
    outside of the scope of a kernel")."""
    from triton.runtime.jit import JITFunction

    module = sys.modules[module_name]
    saved = {n: getattr(module, n) for n in names}
    saved_call = JITFunction.__call__

    def call(self, *args, **kwargs):
        return interpreted(self)(*args, **kwargs)

    try:
        for n, k in saved.items():
            setattr(module, n, interpreted(k))
        JITFunction.__call__ = call
        yield
    finally:
        JITFunction.__call__ = saved_call
        for n, k in saved.items():
            setattr(module, n, k)


