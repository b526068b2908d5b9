"""A small real device kit, built here, and the runner's dry run on it (no GPU).

The kit holds one TileLang kernel (the indexer's 8-split decode kernel, which the 16-row 4k
check requests on an H100) and SGLang's repack module, built by the same code as the full kit
(``sglang-ampere device-kit``, about 10 minutes for everything; here about a minute). Checked:
the manifest against the cubin's parameter records, sm_90 SASS without PTX, the modules and
the vendored SGLang wrappers loading in a process where SGLang and TileLang cannot be imported,
and the runner's dry run, with planted errors that must FAIL.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from helpers import PY, REPO
from helpers.blocked import BLOCK, run_blocked

pytestmark = pytest.mark.slow

KERNEL = "indexer_logits_decode_s8_h64"
CHECK = "indexer decode (16 rows, ctx 4k)"
#: The paged sparse-MLA kernel with both caches (whose two lists' sizes once shared names), and a check
#: that requests it on a 132-SM card.
PAGED = "sparse_mla_paged_c4_decode_s16_h64"
PAGED_CHECK = "sparse-mla paged decode c4 (8 seqs, ctx 4k)"


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    pytest.importorskip("sglang")
    pytest.importorskip("tilelang")
    from sglang_ampere.cuda_tools import find_tool
    from sglang_ampere.device_kit.builder import build_kit

    try:
        find_tool("nvcc"), find_tool("cuobjdump")
    except FileNotFoundError as e:
        pytest.skip(str(e))
    out = tmp_path_factory.mktemp("kit") / "device-kit"
    data = build_kit(out, only=f"{KERNEL},{PAGED}", marlin_modules=["repack"], wheel=False, log=lambda s: None)
    return out, data


def test_the_kit_holds_the_kernel_its_manifest_and_the_module(kit):
    out, data = kit
    saved = json.loads((out / "kit.json").read_text())
    assert saved["arch"] == 90 and saved["source_arch"] == 86
    m, paged = sorted(saved["tilelang"], key=lambda k: k["name"])
    assert m["name"] == KERNEL and m["entry"] == "indexer_logits_kernel"
    assert m["grid"] == ["rows", 8, 1] and m["block"] == [256, 1, 1] and m["dynamic_shared"] > 48 * 1024
    assert [p["kind"] for p in m["params"]] == ["ptr"] * 7 + ["int32"] * 4
    # the paged kernel: 9 pointers (no Sink: the split kernel leaves it to the combine) and 5 distinct sizes,
    # each bound to the dimension that defines it
    assert paged["name"] == PAGED and paged["grid"] == ["num_tokens", 2, 16]
    ints = [p["expr"] for p in paged["params"] if p["kind"] == "int32"]
    assert sorted(ints) == sorted(set(ints)) and len(ints) == 5
    assert {paged["symbols"][e] for e in ints} == {"Q.shape[0]", "C1.shape[0]", "Idx1.shape[1]", "C2.shape[0]",
                                                  "Idx2.shape[1]"}
    names = [t["name"] for t in paged["tensors"]]
    assert sorted(names[p["tensor"]] for p in paged["params"] if p["kind"] == "ptr") == sorted(
        set(names) - {"Sink"})
    assert saved["marlin"]["modules"]["repack"]["module_name"] == "sgl_kernel_jit_gptq_marlin_repack"
    assert set(saved["marlin"]["scalar_type_ids"]) == {"uint8b128", "uint4b8", "float8_e4m3fn", "float4_e2m1f"}
    for f in ("gptq_marlin.py", "moe_wna16_marlin.py", "gptq_marlin_repack.py", "moe_align.py", "scalar_type.py",
              "marlin_prep.py"):
        assert (out / "sgl_ops" / f).exists()
    assert saved["size_bytes"] < 1e6


def test_the_cubin_is_sm90_machine_code_and_matches_its_manifest(kit):
    from sglang_ampere.cuda_tools import find_tool
    from sglang_ampere.device_kit import manifest as MF

    out, _ = kit
    m = next(k for k in MF.load_kit(out)["tilelang"] if k.name == KERNEL)
    cuobjdump = find_tool("cuobjdump")
    elf = subprocess.run([cuobjdump, "--list-elf", str(out / m.cubin)], capture_output=True, text=True).stdout
    assert "sm_90" in elf
    kp = MF.read_kparam_info(out / m.cubin, cuobjdump)
    MF.check_against_cubin(m, kp)
    wrong = MF.KernelManifest(**{**m.to_json(), "params": m.to_json()["params"][:-1]})
    with pytest.raises(MF.ManifestError, match="takes 11 parameters"):
        MF.check_against_cubin(wrong, kp)
    so = out / "marlin" / "sgl_kernel_jit_gptq_marlin_repack.so"
    elf = subprocess.run([cuobjdump, "--list-elf", str(so)], capture_output=True, text=True).stdout
    ptx = subprocess.run([cuobjdump, "--list-ptx", str(so)], capture_output=True, text=True).stdout
    assert "sm_90" in elf and "sm_86" not in elf and ".ptx" not in ptx


def test_modules_and_wrappers_load_without_sglang_or_tilelang(kit):
    out, _ = kit
    p = run_blocked(f"""
        import sys, torch
        from pathlib import Path
        kit = Path({str(out)!r})
        sys.path.insert(0, str(kit))
        from sglang_ampere.device_kit import shim
        shim.configure(kit)
        import sgl_ops.gptq_marlin, sgl_ops.moe_wna16_marlin, sgl_ops.moe_align, sgl_ops.marlin_prep
        import sgl_ops.scalar_type
        from sgl_ops.gptq_marlin_repack import gptq_marlin_repack
        mod = shim.load_jit("gptq_marlin_repack")
        print("LOADED", type(mod).__name__, hasattr(mod, "gptq_marlin_repack"))
        try:
            gptq_marlin_repack(torch.zeros(64, 256, dtype=torch.int32), torch.empty(0, dtype=torch.int32),
                               size_k=512, size_n=256, num_bits=4)
            print("CALL returned")
        except Exception as e:           # no GPU here: the module's body must be what refuses
            print("CALL", type(e).__name__, str(e).splitlines()[0][:200])
        try:
            shim.load_jit("gptq_marlin", "bf16_t")
        except shim.KitModuleMissing as e:
            print("MISSING", e)
        bad = [m for m in sys.modules if m.split(".")[0] in ("sglang", "tilelang", "tvm", "sgl_kernel")]
        print("IMPORTED", bad)
    """)
    assert "LOADED Module True" in p.stdout, p.stdout + p.stderr[-3000:]
    call = next(ln for ln in p.stdout.splitlines() if ln.startswith("CALL"))
    assert call != "CALL returned" and "ImportError" not in call and "KitModuleMissing" not in call, call
    assert "MISSING the kit has no sgl_kernel_jit_gptq_marlin_bf16_t.so" in p.stdout
    assert "IMPORTED []" in p.stdout


def _dry_run(kit_dir, out, *extra):
    argv = ["--dry-run", "--kit", str(kit_dir), "--out", str(out), *extra]
    code = BLOCK + f"from sglang_ampere.device_kit.runner import main; import sys; sys.exit(main({argv!r}))"
    p = subprocess.run([PY, "-c", code], capture_output=True, text=True, timeout=600, cwd=str(REPO))
    result = json.loads((out / "kit_result.json").read_text())
    return p, result


def test_dry_run_binds_the_tilelang_launch_and_runs_every_marlin_format_on_stand_ins(kit, tmp_path):
    out, _ = kit
    p, res = _dry_run(out, tmp_path / "ok", "--only", CHECK, "--sections", "tilelang")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    (c,) = res["checks"]
    assert c["ok"] and "bound to the manifest and marshalled (grid [16, 8, 1] block [256, 1, 1]" in c["detail"]
    assert res["kernels_requested"] == [{"variant": 86, "kernels": [KERNEL]}]
    assert res["kit"]["kernel_sources_match"] is True
    p, res = _dry_run(out, tmp_path / "paged", "--only", PAGED_CHECK, "--sections", "tilelang")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    (c,) = res["checks"]
    assert c["ok"] and "grid [8, 2, 16] block [256, 1, 1]" in c["detail"] and "14 parameters" in c["detail"]
    p, res = _dry_run(out, tmp_path / "marlin", "--sections", "marlin")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert [c["ok"] for c in res["checks"]] == [True] * 6, res["checks"]
    assert res["checks"][0]["name"].startswith("MoE align")
    assert "6/6 checks passed" in (tmp_path / "marlin" / "kit_summary.md").read_text()


def test_dry_run_reports_a_wrong_kernel_a_wrong_manifest_and_a_missing_kernel_as_fail(kit, tmp_path):
    out, _ = kit
    p, res = _dry_run(out, tmp_path / "bug", "--sections", "marlin", "--plant-bug", "scale")
    assert p.returncode == 1
    align, *gemms = res["checks"]
    assert align["ok"] and [c["ok"] for c in gemms] == [False] * 5      # the planted scale error is in the GEMMs
    assert all("relative error" in c["error"] and c["traceback"] for c in gemms)
    # a manifest whose tensor dtype disagrees with what the launch builder passes
    bad = tmp_path / "badkit"
    shutil.copytree(out, bad)
    data = json.loads((bad / "kit.json").read_text())
    idx = next(k for k in data["tilelang"] if k["name"] == KERNEL)
    idx["tensors"][3]["dtype"] = "float16"                             # Wt is float32
    data["kernel_sources_sha256"] = "0" * 64                           # as if built from other kernel sources
    (bad / "kit.json").write_text(json.dumps(data))
    p, res = _dry_run(bad, tmp_path / "badout", "--only", "indexer decode (", "--sections", "tilelang")
    assert p.returncode == 1
    by_name = {c["name"]: c for c in res["checks"]}
    assert not by_name[CHECK]["ok"] and "LaunchError" in by_name[CHECK]["error"]
    assert "dtype float32, expected float16" in by_name[CHECK]["error"]
    assert res["kit"]["kernel_sources_match"] is False
    assert "kernel files differ from the kit's" in (tmp_path / "badout" / "kit_summary.md").read_text()
    missing = by_name["indexer decode (16 rows, ctx 64k)"]           # requests the 32-split kernel
    assert not missing["ok"] and "the kit has no kernel for indexer_logits_decode_s32_h64" in missing["error"]
