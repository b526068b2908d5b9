"""sglang-ampere's CPU-target boot file: on ``PYTHONPATH`` only under ``sglang-ampere launch --gpu cpu``.

Python imports ``sitecustomize`` at start-up in every process of the server (main, scheduler,
detokenizer). When the CPU target is on, ``import sgl_kernel`` is answered by
``sglang_ampere.cpu_target.sgl_kernel_stub`` (see there for why). Any other ``sitecustomize`` later
on ``sys.path`` (a site's or a virtualenv's own) is then run too, since this file shadows it.
"""

import importlib.util
import os
import sys


def _boot() -> None:
    # The names are spelled here, not taken from sglang_ampere.envvars (TARGET, SGLANG_USE_CPU_ENGINE):
    # this file runs at the start of every Python process under the server's PYTHONPATH and imports
    # the package only when the CPU target is on (tests/test_cpu_target.py checks the two agree).
    if os.environ.get("SGLANG_AMPERE_TARGET") == "cpu" and os.environ.get("SGLANG_USE_CPU_ENGINE") == "1":
        try:
            from sglang_ampere.cpu_target import sgl_kernel_stub
        except Exception as e:  # the server then fails loudly on the real sgl_kernel import
            print(f"sglang-ampere: CPU target boot failed ({type(e).__name__}: {e})", file=sys.stderr)
        else:
            sgl_kernel_stub.install_finder()


def _chain() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    for entry in sys.path:
        candidate = os.path.join(entry or os.getcwd(), "sitecustomize.py")
        if os.path.abspath(entry or os.getcwd()) == here or not os.path.isfile(candidate):
            continue
        spec = importlib.util.spec_from_file_location("_sglang_ampere_chained_sitecustomize", candidate)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return


_boot()
_chain()
