"""The GPU checks of the DeepSeek-V4 stand-ins (kernels/dsv4_ops_selfchecks), exercised on the CPU:
each check passes when the "kernel" is the stand-in itself and raises CheckFailed for a
deliberately wrong one (run under ``python -O`` in CI too, so the verdicts cannot rest on
``assert``). Real head counts and widths, few tokens."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest
import torch

from sglang_ampere.checking import CheckFailed
from sglang_ampere.commands import selftest
from sglang_ampere.kernels import dsv4_ops_selfchecks as C
from sglang_ampere.kernels import dsv4_ops_torch as T


@pytest.fixture
def on_cpu(monkeypatch):
    monkeypatch.setattr(C, "_require_cuda", lambda: torch.device("cpu"))


def test_registered_with_selftest_and_covering_every_stand_in():
    assert "sglang_ampere.kernels.dsv4_ops_selfchecks" in selftest.PROVIDERS
    names = [n for n, _ in C.gpu_checks()]
    for what in ("q norm rope", "rope inplace", "k norm rope store", "store cache", "indexer q",
                 "hc split sinkhorn", "mhc combine", "hc head", "silu_and_mul_clamp", "compression metadata"):
        assert any(what in n and "decode" in n for n in names), what
        assert any(what in n and "prefill" in n for n in names), what


def test_sglang_kernels_named_exist_in_the_installed_source():
    """Every (module, attribute) the checks load is a function in SGLang's source (read, not imported)."""
    spec = importlib.util.find_spec("sglang")
    if spec is None:
        pytest.skip("sglang is not installed")
    root = Path(list(spec.submodule_search_locations)[0]).parent
    for module, attr in C.SGLANG_KERNELS.values():
        tree = ast.parse((root / (module.replace(".", "/") + ".py")).read_text())
        assert any(isinstance(n, ast.FunctionDef) and n.name == attr for n in tree.body), (module, attr)
        assert hasattr(T, attr), attr          # the stand-in has the same name


def test_without_cuda_the_checks_say_why():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(CheckFailed, match="no CUDA device"):
        C.gpu_checks()[0][1]()


def test_an_unloadable_kernel_is_a_failure(monkeypatch):
    monkeypatch.setitem(C.SGLANG_KERNELS, "mhc_combine", ("sglang_ampere_no_such_module", "mhc_combine"))
    with pytest.raises(CheckFailed, match="cannot load SGLang's"):
        C.sglang_kernel("mhc_combine")


def test_compare_verdicts():
    want = torch.linspace(1, 2, 10000).bfloat16().float()
    ulp = want * 2.0 ** -7
    few = want.clone()
    few[:5] += ulp[:5]                                            # 5 in 10^4 flipped by one ulp
    assert "5/10000 differ" in C.compare("few", few, want, C.BF16_ULP)
    many = want + torch.where(torch.arange(10000) % 20 == 0, ulp, 0 * ulp)     # 5 % flipped
    with pytest.raises(CheckFailed, match="rounding point"):
        C.compare("many", many, want, C.BF16_ULP)
    far = want.clone()
    far[7] += 3 * ulp[7]
    with pytest.raises(CheckFailed, match="more than"):
        C.compare("far", far, want, C.BF16_ULP)
    nan = want.clone()
    nan[0] = float("nan")
    with pytest.raises(CheckFailed, match="non-finite"):
        C.compare("nan", nan, want, C.BF16_ULP)
    with pytest.raises(CheckFailed, match="shape"):
        C.compare("shape", want[:-1], want, C.BF16_ULP)


# ---- one pass and one wrong kernel per check


def test_q_norm_rope(on_cpu):
    assert "differ" in C.check_q_norm_rope(4, kernel=T.fused_q_norm_rope)

    def rope_before_rounding(q_in, q_out, eps, fc, pos):   # rounds once, after the RoPE
        cos, sin, rd = T._cos_sin(fc, pos, q_in.device)
        x = q_in.float()
        if eps is not None:
            x = x * torch.rsqrt(x.square().mean(-1, keepdim=True) + eps)
        x[..., -rd:] = T._rotate(x[..., -rd:], cos, sin)
        q_out.copy_(x.to(q_in.dtype))

    # rounding once after the RoPE moves RoPE outputs by an ulp of the pair's magnitude
    with pytest.raises(CheckFailed, match="q norm rope"):
        C.check_q_norm_rope(4, kernel=rope_before_rounding)


def test_rope_inplace(on_cpu):
    assert "differ" in C.check_rope_inplace(4, kernel=T.fused_rope_inplace)
    with pytest.raises(CheckFailed):
        C.check_rope_inplace(4, kernel=lambda q, k, fc, pos, inverse=False: T.fused_rope_inplace(q, k, fc, pos))


def test_k_norm_rope_flashmla(on_cpu, monkeypatch):
    assert "bytes differ" in C.check_k_norm_rope_flashmla(5, kernel=T.fused_k_norm_rope_flashmla)

    def bf16_before_quant(kv, w, eps, fc, pos, loc, cache, ps, layout="v4", q=None):   # the V4.1 rule
        x = kv.float()
        d = (x * torch.rsqrt(x.square().mean(-1, keepdim=True) + eps) * w.float()).bfloat16().float()
        cos, sin, _ = T._cos_sin(fc, pos, kv.device)
        d = torch.cat((d[:, :448], T._rotate(d[:, 448:], cos, sin)), 1)
        T._store_v4(cache, loc[loc >= 0], d[loc >= 0], ps)

    with pytest.raises(CheckFailed, match="k norm rope store"):
        C.check_k_norm_rope_flashmla(5, kernel=bf16_before_quant)

    def writes_the_pad_byte(kv, w, eps, fc, pos, loc, cache, ps, layout="v4", q=None):
        T.fused_k_norm_rope_flashmla(kv, w, eps, fc, pos, loc, cache, ps)
        for slot in loc[loc >= 0].tolist():
            cache[slot // ps, ps * 576 + (slot % ps) * 8 + 7] = 0

    with pytest.raises(CheckFailed, match="outside the rows"):
        C.check_k_norm_rope_flashmla(5, kernel=writes_the_pad_byte)


def test_store_cache(on_cpu):
    assert "differ" in C.check_store_cache(7, kernel=T.fused_store_cache)

    def pow2_index_scale(x, cache, idx, *, page_size, type, layout="v4", freqs_cis=None):
        if type != "indexer":
            return T.fused_store_cache(x, cache, idx, page_size=page_size, type=type)
        T.fused_store_cache(x, cache, idx, page_size=page_size, type=type)
        for i, loc in enumerate(idx.tolist()):                # overwrite with a UE8M0-style scale
            p, j = divmod(loc, page_size)
            s = torch.tensor([2.0 ** torch.ceil(torch.log2(x[i].float().abs().amax() / 448)).item()])
            cache[p, page_size * 128 + 4 * j: page_size * 128 + 4 * j + 4] = s.view(torch.uint8)

    with pytest.raises(CheckFailed, match="indexer scales"):
        C.check_store_cache(7, kernel=pow2_index_scale)


def test_q_indexer(on_cpu):
    assert "differ" in C.check_q_indexer(4, kernel=T.fused_q_indexer_rope_hadamard_quant)

    def no_hadamard(q, w, ws, fc, pos):
        cos, sin, rd = T._cos_sin(fc, pos, q.device)
        x = q.float()
        y = torch.cat((x[..., :-rd], T._rotate(x[..., -rd:], cos, sin)), -1)
        s = y.abs().amax(-1).clamp(min=1e-4) / 448
        return T._to_e4m3(y / s[..., None]), (w.float() * ws * s).unsqueeze(-1)

    with pytest.raises(CheckFailed):
        C.check_q_indexer(4, kernel=no_hadamard)


def test_hc_split_sinkhorn(on_cpu):
    assert "differ" in C.check_hc_split_sinkhorn(5, kernel=T.hc_split_sinkhorn)

    def swapped(*args):
        pre, post, comb = T.hc_split_sinkhorn(*args)
        return post, pre, comb

    with pytest.raises(CheckFailed, match="sinkhorn pre"):
        C.check_hc_split_sinkhorn(5, kernel=swapped)


def test_mhc_combine(on_cpu):
    assert "differ" in C.check_mhc_combine(3, kernel=T.mhc_combine)
    with pytest.raises(CheckFailed):
        C.check_mhc_combine(3, kernel=lambda x, pre, hc, dt: T.mhc_combine(x, pre.flip(1), hc, dt))


def test_hc_head(on_cpu):
    assert "differ" in C.check_hc_head(3, kernel=T.fused_hc_head)

    def no_norm(x, fn, scale, base, norm_eps, hc_eps):       # the mixes without the RMS factor
        pre = torch.sigmoid(x.flatten(1).float() @ fn.t() * scale + base) + hc_eps
        return (pre[:, :, None] * x.float()).sum(1).to(x.dtype)

    with pytest.raises(CheckFailed):
        C.check_hc_head(3, kernel=no_norm)


def test_silu_and_mul_clamp(on_cpu):
    assert "differ" in C.check_silu_and_mul_clamp(4, kernel=T.silu_and_mul_clamp)

    def gate_clamped_both_sides(gu, out, limit):
        n = out.shape[-1]
        g = gu[:, :n].float().clamp(-limit, limit)
        u = gu[:, n:].float().clamp(-limit, limit)
        out.copy_((torch.nn.functional.silu(g) * u).to(out.dtype))

    with pytest.raises(CheckFailed):
        C.check_silu_and_mul_clamp(4, kernel=gate_clamped_both_sides)


def test_compression_metadata(on_cpu):
    assert "9 outputs equal" in C.check_compression_metadata(9, kernel=T.init_compression_metadata)

    def unmasked_out_loc(seq_lens, positions, raw, page_table, page_size, compute=True):
        res = list(T.init_compression_metadata(seq_lens, positions, raw, page_table, page_size, compute))
        res[0] = raw // 4
        return tuple(res)

    with pytest.raises(CheckFailed, match="output 0"):
        C.check_compression_metadata(9, kernel=unmasked_out_loc)
