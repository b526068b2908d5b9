"""Session setup and the fixtures several test modules share (helpers live in ``tests/helpers/``)."""

import os
import random
import sys

import pytest

# pytest rewrites the asserts of test modules and conftest only: registered here, before any test
# module imports ``helpers``, the helpers' asserts are rewritten too and so still run under
# ``python -O`` (tests/test_suite_guards.py proves it).
pytest.register_assert_rewrite("helpers")

# One torch thread for the whole session: on the 2-core CI machine two threads are several
# times slower than one (OpenMP spinning while subprocesses compete for the cores), and the
# converter itself runs one thread per worker.
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture
def seed(request):
    """A fresh seed per test run (printed on failure); SGLANG_AMPERE_TEST_SEED pins it."""
    s = int(os.environ.get("SGLANG_AMPERE_TEST_SEED", random.SystemRandom().randrange(2**31)))
    request.node.user_properties.append(("seed", s))
    print(f"seed={s}", file=sys.stderr)
    return s


@pytest.fixture
def gen(seed):
    import torch

    g = torch.Generator()
    g.manual_seed(seed)
    return g


@pytest.fixture(scope="session")
def synth_ckpt(tmp_path_factory):
    """The default synthetic native checkpoint, written once per session (read-only use)."""
    from sglang_ampere.synth import SynthSpec, write_checkpoint

    return write_checkpoint(tmp_path_factory.mktemp("synth") / "native", SynthSpec(), seed=1234, progress=False)


@pytest.fixture
def model(tmp_path):
    """A model folder with a dsv4_int ``config.json`` (what ``launch`` checks)."""
    from helpers.launch import make_model

    return make_model(tmp_path)


@pytest.fixture(scope="module")
def real_headers(tmp_path_factory):
    """A headers-only dsv4_int copy of DeepSeek-V4-Flash (the real config and tensor inventory,
    no data), once per test module: what the launcher's memory-plan tests launch."""
    from helpers.headers_only import write_headers_only

    return write_headers_only(tmp_path_factory.mktemp("headers_only") / "dsv4_int_real")


@pytest.fixture
def caller_env(tmp_path):
    """The environment a test's ``launch`` is called from: a PATH and a JIT cache of its own (cold)."""
    return {"PATH": "/usr/bin", "SGLANG_JIT_CACHE_DIR": str(tmp_path / "jit")}


@pytest.fixture(scope="module")
def native(tmp_path_factory):
    """A fresh small native checkpoint per test module (the converter and audit tests)."""
    from helpers.convert import fresh_seed, make_native

    return make_native(tmp_path_factory.mktemp("native"), fresh_seed())


@pytest.fixture(scope="module")
def converted(native, tmp_path_factory):
    """``native`` converted with the default options (block INT8, mse), once per test module."""
    from helpers.convert import cli

    dst = tmp_path_factory.mktemp("converted") / "dsv4_int"
    assert cli("convert", native, dst, "--quiet") == 0
    return dst


@pytest.fixture(autouse=True)
def _sglang_environment_restored():
    """Fail a test that leaves an ``SGLANG_*`` variable changed (see ``helpers.environment``)."""
    from helpers.environment import sglang_vars_unchanged

    with sglang_vars_unchanged():
        yield
