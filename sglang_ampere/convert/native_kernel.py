"""Optional compiled CPU kernel for the INT4 expert requantization (same tables, same bytes).

The torch fast path in :mod:`.experts` needs ~10 passes over each tensor; this C loop does the
whole rule for one group in registers (histogram of the 32 codes, the exact float64 error of
every candidate from the same tables, first minimum, 256-entry output lookup), so the CPU stops
being the bottleneck. It is compiled on first use with the system C compiler into
``$XDG_CACHE_HOME/sglang-ampere`` (``~/.cache/sglang-ampere``) and loaded with ctypes; if no
compiler is available the torch path is used (same bytes, slower). Tests check it
bit-for-bit against the plain float reference and the torch path.

The sums are exact in float64 (every term is a dyadic rational of < 53 bits), so the order of
summation does not matter and the result equals the torch path's matmul exactly.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

SOURCE = r"""
#include <stdint.h>

/* Returns 0, or 1 + index of the first group whose values overflow BF16. */
int64_t sa_int4_requant(const uint8_t *b, const uint8_t *sb, int64_t groups, int64_t ncand, int64_t n_mse,
                        int64_t exact_e_min, const double *err, const double *scale_units,
                        const uint8_t *lut, const double *pow2, const double *vals2,
                        uint8_t *out, double *scale_out, double *stats)
{
    double acc[1024];
    double sig = 0.0, noise = 0.0, noise_mse = 0.0;
    for (int64_t g = 0; g < groups; ++g) {
        const uint8_t *gb = b + 16 * g;
        int hist[16] = {0};
        for (int j = 0; j < 16; ++j) { hist[gb[j] & 15]++; hist[gb[j] >> 4]++; }
        int mcode = 0;
        for (int k = 7; k > 0; --k) if (hist[k] | hist[k + 8]) { mcode = k; break; }
        int e = (int)sb[g] - 127;
        if ((e == 127 && mcode >= 4) || (e == 126 && mcode >= 6)) return g + 1;
        int ebin = (e < exact_e_min ? e : exact_e_min) + 127;
        int64_t combo = (int64_t)ebin * 8 + mcode;
        const double *E = err + combo * 16 * ncand;
        for (int64_t c = 0; c < ncand; ++c) acc[c] = 0.0;
        for (int k = 0; k < 16; ++k) {
            if (!hist[k]) continue;
            const double h = (double)hist[k];
            const double *row = E + (int64_t)k * ncand;
            for (int64_t c = 0; c < ncand; ++c) acc[c] += h * row[c];
        }
        int64_t best = 0;
        double bv = acc[0];
        for (int64_t c = 1; c < ncand; ++c) if (acc[c] < bv) { bv = acc[c]; best = c; }
        int64_t sel = combo * ncand + best;
        const uint8_t *L = lut + sel * 256;
        uint8_t *o = out + 16 * g;
        for (int j = 0; j < 16; ++j) o[j] = L[gb[j]];
        scale_out[g] = mcode == 0 ? pow2[-126 + 254] : scale_units[sel] * pow2[e + 254];
        if (stats) {
            double mv = bv;
            if (n_mse < ncand) { mv = acc[0]; for (int64_t c = 1; c < n_mse; ++c) if (acc[c] < mv) mv = acc[c]; }
            double s2 = 0.0;
            for (int k = 0; k < 16; ++k) s2 += hist[k] * vals2[k];
            const double f = pow2[2 * e + 254];
            sig += s2 * f; noise += bv * f; noise_mse += mv * f;
        }
    }
    if (stats) { stats[0] += sig; stats[1] += noise; stats[2] += noise_mse; }
    return 0;
}
"""

#: Size of the kernel's per-group candidate buffer (``double acc[1024]`` in :data:`SOURCE`).
MAX_CANDIDATES = 1024


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "sglang-ampere"


def _cpu_key() -> str:
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                flags = line
                break
    except OSError:
        pass
    return f"{platform.machine()} {platform.system()} {flags}"


def _compile(so: Path) -> None:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not cc:
        raise OSError("no C compiler found")
    so.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=so.parent) as tmp:
        src = Path(tmp) / "k.c"
        src.write_text(SOURCE)
        out = Path(tmp) / so.name
        flags = ["-O3", "-shared", "-fPIC", "-fno-math-errno", "-ffp-contract=off"]
        if platform.machine() in ("x86_64", "AMD64"):
            flags.append("-march=native")
        subprocess.run([cc, *flags, "-o", str(out), str(src)], check=True, capture_output=True, timeout=120)
        os.replace(out, so)        # atomic: concurrent workers may compile at the same time


@functools.lru_cache(maxsize=1)
def load():
    """The compiled kernel's function, or None if it cannot be built here."""
    key = hashlib.sha256((SOURCE + _cpu_key()).encode()).hexdigest()[:16]
    so = _cache_dir() / f"int4_requant-{key}.so"
    try:
        if not so.exists():
            _compile(so)
        lib = ctypes.CDLL(str(so))
    except (OSError, subprocess.SubprocessError):
        return None
    fn = lib.sa_int4_requant
    p, i = ctypes.c_void_p, ctypes.c_int64
    fn.argtypes = [p, p, i, i, i, i, p, p, p, p, p, p, p, p]
    fn.restype = i
    return fn
