"""What the CPU server tests share (``tests/test_cpu_server*.py``, ``test_quickstart``): prompts of
synth's byte tokens, the synthetic checkpoints, and the CPU server's own logprob bound."""

from __future__ import annotations

import os
import random
import subprocess
from pathlib import Path

from sglang_ampere import server_probe as sp
from sglang_ampere.synth import BYTE_IDS

#: The CPU server computes in bf16, as the bf16 reference does, so its distance from the float32
#: reference sits at about the bf16 floor (measured 0.7-1.0 x); gpu-check's 4 x is the allowance for
#: a card's kernels. This tighter check caught the native MoE reference's double routed scaling (4.4 x).
CPU_FACTOR, CPU_SLACK = 2.0, 0.01


def ids(n: int, seed: int) -> list[int]:
    """``n`` random byte tokens of synth's tokenizer (no special or chat tokens)."""
    rng = random.Random(seed)
    return [rng.randrange(BYTE_IDS.start, BYTE_IDS.stop) for _ in range(n)]


def synth(root: Path, seed: int, native_hook=None) -> Path:
    """The default synthetic native checkpoint at ``root/native`` (``native_hook(path)`` may rewrite it)."""
    native = root / "native"
    subprocess.run(sp.cli("synth", str(native), "--quiet", "--seed", str(seed)), check=True, timeout=300)
    if native_hook is not None:
        native_hook(native)
    return native


def synth_dsv4_int(root: Path, seed: int, native_hook=None) -> Path:
    """:func:`synth`, converted to dsv4_int at ``root/dsv4_int``."""
    native, dst = synth(root, seed, native_hook), root / "dsv4_int"
    subprocess.run(sp.cli("convert", str(native), str(dst), "--workers", "1"), check=True, timeout=600,
                   capture_output=True)
    return dst


def assert_cpu_close(mean: float, floor: float) -> None:
    assert mean <= CPU_FACTOR * floor + CPU_SLACK, f"mean |d| {mean:.4f} nats vs bf16 floor {floor:.4f}"


#: Variables the test process itself may carry from earlier tests (SGLang's ``envs.X.set`` writes
#: ``os.environ``; ``init_sglang_cpu`` sets a torch.distributed world of one) and that must not
#: reach a server: the launcher keeps a caller's value over its preset's.
_TEST_PROCESS_VARS = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK")


def server_env(**extra: str) -> dict[str, str]:
    """The environment a user's shell would give ``sglang-ampere launch``: this process's, less
    every ``SGLANG_*`` variable and the distributed-world variables earlier tests left behind."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("SGLANG_") and k not in _TEST_PROCESS_VARS}
    env.update(extra)
    return env
