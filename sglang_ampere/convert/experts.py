"""Routed experts: MXFP4 (E2M1 codes + E8M0 group scale) -> INT4 ``uint4b8`` + BF16 group scale.

The rule (issue 3), per group of 32 consecutive K elements of one output row:

* ``absmax`` (floored): ``A = max(max|x|, 2^-126)``.
* candidate scales ``s = max(bf16(fl32(A / d)), 2^-126)`` for the mode's divisors ``d``:
  ``absmax`` uses d = 7; ``mse`` (default) the 19 divisors 5.0, 5.25, ..., 9.5;
  ``optimal`` the 19 ``mse`` candidates first, then every BF16 value ``s`` with
  ``max(A/12, 2^-126) <= s <= A/2`` in ascending order (so it can never be worse than ``mse``).
* codes ``q = clamp(round_half_even(fl32(x / s)), -8, 7)``; the chosen candidate is the first
  one with the smallest ``sum((q*s - x)^2)`` (exact in float64), i.e. ties go to the smaller
  divisor / to the ``mse`` choice.
* a group with a value of magnitude above BF16's largest finite number is an error.

Two implementations of that rule live here:

* :func:`reference_requantize` — the plain one: dequantize to floats, try every candidate.
* :func:`requantize` — the fast one used by the converter. The 32 values of a group are
  ``c_i * 2^e`` with ``c_i`` on the 16-value E2M1 grid and one exponent ``e`` per group, so in
  units of ``2^e`` everything depends only on (the group's largest magnitude code, ``e`` where
  the 2^-126 floors can bind) and the histogram of its 16 codes. Per (combo, candidate) the
  squared error of each code, and the output byte of each input byte, are precomputed tables:
  a group's errors are ``hist @ table`` (exact in float64: every term is a dyadic rational of
  fewer than 53 bits) and its output bytes a 256-entry lookup on the raw MXFP4 bytes. Tests
  prove the two bit-identical on many random groups and the edge cases.

Both work on any torch device; the fast path uses only exact operations (integer ops,
float64 sums of exact dyadic terms, lookups), so CPU and CUDA give the same bytes.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from ..formats.constants import (
    ABSMAX_FLOOR,
    E2M1_MAGNITUDES,
    E8M0_BIAS,
    E8M0_NAN,
    INT4_BIAS,
    INT4_MAX,
    INT4_MIN,
    MXFP4_GROUP,
)
from ..formats.errors import FormatError
from ..formats.mxfp4 import e2m1_table

#: The published converter's MSE grid: 5.0, 5.25, ..., 9.5 (19 divisors).
MSE_DIVISORS = tuple(5.0 + 0.25 * i for i in range(19))
ABSMAX_DIVISOR = 7.0
#: ``optimal`` also tries every BF16 scale in [absmax / WIDE_MAX_DIV, absmax / WIDE_MIN_DIV].
WIDE_MIN_DIV, WIDE_MAX_DIV = 2.0, 12.0
MODES = ("absmax", "mse", "optimal")
#: Largest finite BF16 value, (2 - 2^-7) * 2^127.
BF16_MAX = (2.0 - 2.0**-7) * 2.0**127
#: Exponents below this can make a 2^-126 floor bind; each gets its own tables.
_EXACT_E_MIN = -121
_N_EBINS = _EXACT_E_MIN + E8M0_BIAS + 1  # bins for e = -127..-122, then one for e >= -121


def _divisors(mode: str) -> tuple[float, ...]:
    if mode == "absmax":
        return (ABSMAX_DIVISOR,)
    if mode in ("mse", "optimal"):
        return MSE_DIVISORS
    raise ValueError(f"unknown expert scale mode {mode!r}; choose one of {', '.join(MODES)}")


@functools.lru_cache(maxsize=1)
def _bf16_positive_values() -> torch.Tensor:
    """Every positive finite BF16 value, ascending, as float64."""
    bits = torch.arange(1, 0x7F80, dtype=torch.int32).to(torch.int16)
    return bits.view(torch.bfloat16).double()


def _candidates(absmax: float, floor: float, mode: str) -> list[float]:
    """Candidate scales of one group (in whatever unit ``absmax`` and ``floor`` are given)."""
    a = torch.tensor(max(absmax, floor), dtype=torch.float32)
    out = []
    for d in _divisors(mode):
        s = float((a / torch.tensor(d, dtype=torch.float32)).to(torch.bfloat16).float())
        out.append(max(s, floor))
    if mode == "optimal":
        a64 = float(a)
        v = _bf16_positive_values()
        keep = (v * WIDE_MAX_DIV >= a64) & (v * WIDE_MIN_DIV <= a64) & (v >= floor)
        out.extend(v[keep].tolist())
    return out


# ------------------------------------------------------------------------------------------
# Plain reference


def reference_requantize(
    packed: torch.Tensor, scale: torch.Tensor, mode: str = "mse", name: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The rule above, implemented directly on float values (slow; the test oracle).

    ``packed`` uint8/int8 ``[N, K/2]`` E2M1 codes, ``scale`` E8M0 (or its uint8 bytes)
    ``[N, K/32]`` -> (uint8 ``[N, K/2]`` uint4b8, bfloat16 ``[N, K/32]``).
    """
    from ..formats.e8m0 import e8m0_bytes
    from ..formats.int4 import pack_uint4b8
    from ..formats.nibbles import unpack_nibbles

    n, half_k = packed.shape
    k = 2 * half_k
    sb = e8m0_bytes(scale, name).to(torch.int64)
    if bool((sb == E8M0_NAN).any()):
        raise FormatError(name, "E8M0 scale byte 255 (NaN) found; the checkpoint is damaged (re-download this shard)")
    codes = unpack_nibbles(packed, name).long().view(n, k // MXFP4_GROUP, MXFP4_GROUP)
    x = e2m1_table(torch.float64)[codes] * torch.ldexp(
        torch.ones(sb.shape, dtype=torch.float64), sb - E8M0_BIAS
    ).unsqueeze(-1)
    x = x.reshape(-1, MXFP4_GROUP)
    absmax = x.abs().amax(dim=1)
    if bool((absmax > BF16_MAX).any()):
        raise FormatError(name, "a group's values overflow BF16; cannot store an INT4 scale for it")
    x32 = x.float()  # exact: every value fits float32 (BF16 range, subnormals included)
    q_out = torch.empty_like(x32, dtype=torch.int64)
    s_out = torch.empty(x.shape[0], dtype=torch.float32)
    for g in range(x.shape[0]):
        cands = torch.tensor(_candidates(float(absmax[g]), ABSMAX_FLOOR, mode), dtype=torch.float32)
        q = torch.clamp(torch.round(x32[g].unsqueeze(0) / cands.unsqueeze(1)), INT4_MIN, INT4_MAX)
        err = ((q.double() * cands.double().unsqueeze(1) - x[g].unsqueeze(0)) ** 2).sum(dim=1)
        best = int(torch.argmin(err))  # first minimum: ties go to the earlier candidate
        q_out[g] = q[best].long()
        s_out[g] = cands[best]
    return pack_uint4b8(q_out.view(n, k), name), s_out.view(n, k // MXFP4_GROUP).to(torch.bfloat16)


# ------------------------------------------------------------------------------------------
# Fast path: tables


@dataclass(frozen=True)
class _Tables:
    ncand: int
    err_t: torch.Tensor     # float64 [combos, 16, ncand]: squared error of each code, units of 4^e
    scale: torch.Tensor     # float64 [combos * ncand]: candidate scale, units of 2^e
    lut: torch.Tensor       # uint8 [combos * ncand * 256]: output byte of each input byte
    n_mse: int              # how many leading candidates are the mse ones


def _pair_hist_tables() -> tuple[torch.Tensor, torch.Tensor]:
    """Byte pair (uint16, first byte low) -> its four codes counted in 8-bit fields of an int64
    (one table for codes 0..7, one for 8..15).

    Summing these over a group's 8 byte pairs gives its 16-bin histogram packed in two int64s
    (a count is at most 32, so fields never carry).
    """
    low, high = torch.zeros(256, dtype=torch.int64), torch.zeros(256, dtype=torch.int64)
    for b in range(256):
        for c in (b & 0xF, b >> 4):
            if c < 8:
                low[b] += 1 << (8 * c)
            else:
                high[b] += 1 << (8 * (c - 8))
    pair = torch.arange(65536)
    return low[pair & 0xFF] + low[pair >> 8], high[pair & 0xFF] + high[pair >> 8]


_HIST_LOW, _HIST_HIGH = _pair_hist_tables()
_FIELD_SHIFTS = torch.arange(8, dtype=torch.int64) * 8
#: 2^k for k = -254..254 (float64, exact): index k + 254.
_POW2 = torch.tensor([2.0**k for k in range(-254, 255)], dtype=torch.float64)


def _combo_params(combo: int) -> tuple[float, float]:
    """(largest magnitude, floor), both in units of 2^e, of a (exponent bin, max code) combo."""
    ebin, mcode = divmod(combo, 8)
    e = ebin - E8M0_BIAS if ebin < _N_EBINS - 1 else _EXACT_E_MIN
    return E2M1_MAGNITUDES[mcode], 2.0 ** (-126 - e)


@functools.lru_cache(maxsize=None)
def _tables(mode: str) -> _Tables:
    combos = _N_EBINS * 8
    per = [_candidates(*_combo_params(c), mode) for c in range(combos)]
    ncand = max(len(p) for p in per)
    vals = e2m1_table(torch.float64)                      # [16] signed code values
    scale = torch.empty(combos, ncand, dtype=torch.float64)
    for c, p in enumerate(per):                            # pad with repeats of the last one
        scale[c] = torch.tensor(p + [p[-1]] * (ncand - len(p)), dtype=torch.float64)
    s32 = scale.float()
    q = torch.clamp(torch.round(vals.float().view(1, 1, 16) / s32.unsqueeze(-1)), INT4_MIN, INT4_MAX)
    err = (q.double() * scale.unsqueeze(-1) - vals.view(1, 1, 16)) ** 2
    nib = (q.to(torch.int64) + INT4_BIAS)                  # [combos, ncand, 16] stored nibble
    b = torch.arange(256)
    lut = nib[..., b & 0xF] | (nib[..., b >> 4] << 4)
    n_mse = len(_divisors(mode))
    return _Tables(ncand, err.transpose(1, 2).contiguous(), scale.reshape(-1).contiguous(),
                   lut.reshape(-1).to(torch.uint8).contiguous(), n_mse)


@dataclass
class ExpertStats:
    """Sums over the groups of one tensor, in float64 (units cancel in the ratios)."""

    signal: float = 0.0        # sum x^2
    noise: float = 0.0         # sum (x - dequant)^2 of the chosen scales
    noise_mse: float = 0.0     # the same with the mse choice (for ``optimal``'s gain)

    def add(self, other: "ExpertStats") -> None:
        self.signal += other.signal
        self.noise += other.noise
        self.noise_mse += other.noise_mse


#: Groups per chunk: small enough that the int64/float64 temporaries stay in cache.
CHUNK_GROUPS = 16384


KERNELS = ("auto", "c", "torch")


def requantize(packed: torch.Tensor, scale: torch.Tensor, mode: str = "mse", name: str | None = None,
               stats: ExpertStats | None = None, kernel: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Fast path of the rule; bit-identical to :func:`reference_requantize`.

    ``packed`` uint8/int8 ``[N, K/2]`` and ``scale`` float8_e8m0fnu/uint8 ``[N, K/32]`` on any
    device -> (uint8 ``[N, K/2]`` uint4b8, bfloat16 ``[N, K/32]``) on the same device.
    ``kernel``: ``"c"`` the compiled CPU loop (:mod:`.native_kernel`), ``"torch"`` the table
    path in torch ops (any device), ``"auto"`` the compiled loop on CPU when it can be built.
    """
    if packed.dtype not in (torch.uint8, torch.int8):
        raise FormatError(name, f"MXFP4 weight must be I8/U8 bytes, got {packed.dtype}")
    if scale.dtype not in (torch.uint8, torch.float8_e8m0fnu):
        raise FormatError(name, f"MXFP4 scale must be F8_E8M0, got {scale.dtype}")
    if packed.dim() != 2 or scale.dim() != 2 or (2 * packed.shape[1]) % MXFP4_GROUP or \
            tuple(scale.shape) != (packed.shape[0], 2 * packed.shape[1] // MXFP4_GROUP):
        raise FormatError(name, f"MXFP4 scale shape {tuple(scale.shape)} does not fit weight {tuple(packed.shape)}")
    t = _tables(mode)
    dev = packed.device
    n, half_k = packed.shape
    b = packed.contiguous().view(torch.uint8).reshape(-1, MXFP4_GROUP // 2)   # [G, 16]
    sb = scale.contiguous().view(torch.uint8).reshape(-1)                    # [G]
    if bool((sb == E8M0_NAN).any()):
        bad = int((sb == E8M0_NAN).sum())
        raise FormatError(
            name, f"{bad} E8M0 scale byte(s) are 255 (NaN); the checkpoint is damaged (re-download this shard)"
        )
    if kernel not in KERNELS:
        raise ValueError(f"unknown expert kernel {kernel!r}; choose one of {', '.join(KERNELS)}")
    if kernel != "torch" and dev.type == "cpu":
        from . import native_kernel

        fn = native_kernel.load()
        if fn is None and kernel == "c":
            raise RuntimeError(
                "the compiled INT4 kernel cannot be built here (no working C compiler); use the torch kernel"
            )
        if fn is not None:
            out, s_out = _requantize_c(fn, b, sb, t, name, stats)
            return out.view(n, half_k), s_out.view(n, 2 * half_k // MXFP4_GROUP)
    elif kernel == "c":
        raise ValueError("the compiled INT4 kernel runs on the CPU only")
    tabs = tuple(x.to(dev) for x in (t.err_t, t.scale, t.lut, _HIST_LOW, _HIST_HIGH, _FIELD_SHIFTS, _POW2))
    out = torch.empty_like(b)
    s_out = torch.empty(b.shape[0], dtype=torch.bfloat16, device=dev)
    for i in range(0, b.shape[0], CHUNK_GROUPS):
        j = min(i + CHUNK_GROUPS, b.shape[0])
        out[i:j], s_out[i:j] = _requantize_groups(b[i:j], sb[i:j], t, tabs, name, stats)
    return out.view(n, half_k), s_out.view(n, 2 * half_k // MXFP4_GROUP)


_VALS2 = e2m1_table(torch.float64) ** 2


def _requantize_c(fn, b, sb, t: _Tables, name, stats):
    g = b.shape[0]
    b = b.contiguous()
    sb = sb.contiguous()
    out = torch.empty_like(b)
    s_out = torch.empty(g, dtype=torch.float64)
    st = torch.zeros(3, dtype=torch.float64)
    from .native_kernel import MAX_CANDIDATES

    if t.ncand > MAX_CANDIDATES:
        raise AssertionError("internal error: too many candidates for the compiled kernel")
    bad = fn(b.data_ptr(), sb.data_ptr(), g, t.ncand, t.n_mse, _EXACT_E_MIN, t.err_t.data_ptr(), t.scale.data_ptr(),
             t.lut.data_ptr(), _POW2.data_ptr(), _VALS2.data_ptr(), out.data_ptr(), s_out.data_ptr(),
             st.data_ptr() if stats is not None else None)
    if bad:
        raise FormatError(name, f"group {bad - 1} holds values that overflow BF16; cannot store INT4 scales for it")
    if stats is not None:
        stats.add(ExpertStats(float(st[0]), float(st[1]) , float(st[2])))
    return out, s_out.to(torch.bfloat16)


def _requantize_groups(b, sb, t: _Tables, tabs, name, stats):
    err_t, scale_t, lut, hist_low, hist_high, shifts, pow2 = tabs
    g = b.shape[0]
    # Byte pairs as 0..65535 (first byte low, little-endian), 8 per group.
    pairs = b.view(torch.int16).to(torch.int64) & 0xFFFF                 # [G, 8]
    flat = pairs.reshape(-1)                                              # index_select beats take on CPU
    h_lo = hist_low.index_select(0, flat).view(g, -1).sum(dim=1, keepdim=True)
    h_hi = hist_high.index_select(0, flat).view(g, -1).sum(dim=1, keepdim=True)
    f_lo, f_hi = (h_lo >> shifts) & 255, (h_hi >> shifts) & 255          # [G, 8] counts of codes 0..7 / 8..15
    present = (f_lo + f_hi) > 0                                           # magnitude code present
    mcode = (present * torch.arange(8, device=b.device)).amax(dim=1)     # [G] largest magnitude code
    e = sb.to(torch.int64) - E8M0_BIAS
    # |x| >= 2^128 overflows BF16: magnitude 2 (code 4) at e=127, 4 (code 6) at e=126.
    over = ((e == 127) & (mcode >= 4)) | ((e == 126) & (mcode >= 6))
    if bool(over.any()):
        raise FormatError(
            name, f"{int(over.sum())} group(s) hold values that overflow BF16; cannot store INT4 scales for them"
        )
    combo = (torch.clamp(e, max=_EXACT_E_MIN) + E8M0_BIAS) * 8 + mcode
    hist = torch.cat((f_lo, f_hi), dim=1).double()                        # [G, 16]
    choice = torch.empty(g, dtype=torch.int64, device=b.device)
    best_err = torch.empty(g, dtype=torch.float64, device=b.device) if stats is not None else None
    mse_err = torch.empty(g, dtype=torch.float64, device=b.device) if stats is not None else None
    for c in torch.bincount(combo, minlength=_N_EBINS * 8).nonzero().squeeze(1).tolist():
        mask = combo == c
        whole = bool(mask.all())
        rows = None if whole else mask.nonzero().squeeze(1)
        errs = (hist if whole else hist.index_select(0, rows)) @ err_t[c]    # [Gc, ncand], exact
        best_v, best_i = errs.min(dim=1)                                      # first minimum on ties
        if whole:
            choice = best_i
        else:
            choice[rows] = best_i
        if stats is not None:
            m_v = errs[:, : t.n_mse].amin(dim=1) if t.n_mse < t.ncand else best_v
            if whole:
                best_err, mse_err = best_v, m_v
            else:
                best_err[rows], mse_err[rows] = best_v, m_v
    sel = combo * t.ncand + choice                                         # [G]
    idx = b.to(torch.int32) | (sel.to(torch.int32) << 8).unsqueeze(1)        # < 2^23: int32 is enough
    out = lut.index_select(0, idx.reshape(-1)).view(g, -1)
    s_units = scale_t[sel]                                                 # float64, units of 2^e
    s_abs = torch.where(mcode == 0, torch.full_like(s_units, ABSMAX_FLOOR), s_units * pow2[e + 254])
    if stats is not None:
        four_e = pow2[2 * e + 254]                                         # e in -127..127
        vals2 = e2m1_table(torch.float64, b.device) ** 2
        stats.add(ExpertStats(float(((hist @ vals2) * four_e).sum()), float((best_err * four_e).sum()),
                              float((mse_err * four_e).sum())))
    return out, s_abs.to(torch.bfloat16)
