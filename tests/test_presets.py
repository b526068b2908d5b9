"""The presets as data: shape, reasons, and no dead variables against the pinned SGLang source."""

import re
from importlib import resources
from pathlib import Path

import pytest
from helpers import REPO

import sglang_ampere
from sglang_ampere import envvars
from sglang_ampere.envvars import DECODE_BACKEND, FORK_VARS, PREFILL_BACKEND
from sglang_ampere.envvars import HACK_FLASHMLA_VAR as HACK_VAR
from sglang_ampere.gpus import PRESET_TARGETS
from sglang_ampere.launch.presets import load_builtin


def sglang_root() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("sglang")
    if spec is None:
        pytest.skip("SGLang is not installed (pip install '.[serve]')")
    from importlib import metadata

    assert metadata.version("sglang") == sglang_ampere.SGLANG_PIN, "tests must run against the pinned SGLang"
    return Path(spec.origin).parent


_SOURCES: dict[str, str] = {}


def sglang_sources() -> dict[str, str]:
    """path -> text of every SGLang .py file (tests excluded), read once."""
    if not _SOURCES:
        root = sglang_root()
        for p in root.rglob("*.py"):
            rel = p.relative_to(root).as_posix()
            if rel.startswith("test/") or "/tests/" in rel:
                continue
            _SOURCES[rel] = p.read_text(encoding="utf-8", errors="ignore")
    return _SOURCES


def sglang_read_sites(name: str) -> list[str]:
    """Files (and lines) where SGLang reads `name` (not just defines or mentions it)."""
    pattern = re.compile(
        rf"envs\.{name}\.(get|is_set)\(|environ(\.get)?\s*[\(\[]\s*['\"]{name}['\"]|"
        rf"getenv\(\s*['\"]{name}['\"]|get_(bool|int)_env_var\(\s*['\"]{name}['\"]")
    sites = []
    for rel, text in sglang_sources().items():
        for i, line in enumerate(text.splitlines(), 1):
            if pattern.search(line):
                sites.append(f"{rel}:{i}:{line.strip()}")
    return sites


def package_read_sites(name: str) -> list[str]:
    """Where this package reads `name`, outside the table and the launcher that writes it."""
    skip = {"sglang_ampere/envvars.py", "sglang_ampere/commands/doctor.py"}   # launch/ is not scanned: it writes them
    # the name as a string literal, or as the envvars constant that holds it
    spelled = [rf"['\"]{name}['\"]"] + [rf"\benvvars\.{const}\b" for const, value in vars(envvars).items()
                                        if const.isupper() and value == name]
    sites = []
    for base in ("sglang_ampere", "patches"):
        for p in (REPO / base).rglob("*.py"):
            rel = p.relative_to(REPO).as_posix()
            if rel in skip:
                continue
            text = p.read_text(encoding="utf-8")
            # ... in a module that reads variables (directly or via a constant)
            if re.search("|".join(spelled), text) and re.search(r"envvars\.get\(|os\.environ|getenv\(", text):
                sites.append(rel)
    return sites


ALL = [(arch, load_builtin(arch)) for arch in PRESET_TARGETS]


def test_every_arch_has_a_preset_file_shipped_as_package_data():
    files = {p.name for p in resources.files("sglang_ampere.env").iterdir() if p.name.endswith(".toml")}
    assert files == {f"{a}.toml" for a in PRESET_TARGETS}


@pytest.mark.parametrize("arch, preset", ALL, ids=PRESET_TARGETS)
def test_preset_shape_and_reasons(arch, preset):
    assert preset.arch == arch and preset.description
    for entry in list(preset.env) + list(preset.args) + list(preset.native_env) + list(preset.native_args):
        assert entry.reason and "\n" not in entry.reason and len(entry.reason) <= 200, entry
    for e in list(preset.env) + list(preset.native_env):
        assert re.fullmatch(r"[A-Z][A-Z0-9_]*", e.name) and e.value != ""


@pytest.mark.parametrize("arch", ["sm80", "sm86"])
def test_ampere_presets_turn_off_hopper_only_paths(arch):
    env = {e.name: e.value for e in load_builtin(arch).env}
    assert env["SGLANG_OPT_DEEPGEMM_HC_PRENORM"] == "0"
    assert env["SGLANG_OPT_USE_TOPK_V2"] == "0"
    assert env["SGLANG_FP8_PAGED_MQA_LOGITS_TORCH"] == "1"
    assert env["SGLANG_OPT_USE_TILELANG_INDEXER"] == "0"
    assert env["SGLANG_OPT_FUSE_WQA_WKV"] == "0"
    assert env["SGLANG_OPT_USE_TILELANG_MHC_PRE"] == env["SGLANG_OPT_USE_TILELANG_MHC_POST"] == "0"


def preset_variables():
    names = {}
    for arch, preset in ALL:
        for e in list(preset.env) + list(preset.native_env):
            names.setdefault(e.name, []).append(arch)
    return sorted(names.items())


@pytest.mark.parametrize("name, arches", preset_variables(), ids=[n for n, _ in preset_variables()])
def test_no_dead_variables(name, arches):
    """Each variable a preset sets is read by the pinned SGLang or by this package."""
    if name.startswith("SGLANG_AMPERE_"):
        assert name in envvars.VARS, f"{name} must be declared in sglang_ampere/envvars.py"
        preset_values = {e.value for _, p in ALL for e in list(p.env) + list(p.native_env) if e.name == name}
        if envvars.VARS[name].choices:
            assert preset_values <= set(envvars.VARS[name].choices)
        assert package_read_sites(name), (
            f"{name} (set by presets {arches}) is declared but nothing in sglang_ampere/ or patches/ reads it")
    else:
        environ_py = sglang_sources()["srt/environ.py"]
        sites = sglang_read_sites(name)
        declared = re.search(rf"^\s+{name}\s*=\s*Env\w+\(", environ_py, re.M)
        # declared in SGLang's table, or (SGLANG_USE_CPU_ENGINE) read straight from the environment
        assert declared or any("getenv" in s or "environ" in s for s in sites), f"{name} is not an SGLang env var"
        assert sites, f"{name} is defined in SGLang but never read"


@pytest.mark.parametrize("name", [PREFILL_BACKEND, DECODE_BACKEND])
def test_variables_the_launcher_writes_are_read(name):
    """--nsa-*-backend and SGLANG_HACK_FLASHMLA_BACKEND become these; the sparse-MLA patch must read them."""
    assert name in envvars.VARS and set(envvars.VARS[name].choices) == {"torch", "tilelang"}
    assert package_read_sites(name), (
        f"{name} is written by the launcher but nothing in sglang_ampere/ or patches/ reads it"
    )


def test_fork_variable_claims_hold_in_pinned_source():
    # SGLANG_APPLY_CONFIG_BACKUP: not mentioned anywhere.
    assert not [r for r, t in sglang_sources().items() if "SGLANG_APPLY_CONFIG_BACKUP" in t]
    # SGLANG_HACK_FLASHMLA_BACKEND: every read is on a ROCm-only path.
    sites = sglang_read_sites(HACK_VAR)
    assert sites
    for s in sites:
        rel, _, line = s.split(":", 2)
        assert "hip" in rel or "is_hip()" in line, s
    # SGLANG_OPT_FP8_WO_A_GEMM: the wo_a FP8 GEMM only engages for Fp8Config.
    v4 = sglang_sources()["srt/models/deepseek_v4.py"]
    fn = v4[v4.index("def wo_a_fp8_gemm_enabled"):][:600]
    assert "isinstance(quant_config, Fp8Config)" in fn
    # The two that do something are real SGLang variables.
    for name in ("SGLANG_OPT_FUSE_WQA_WKV", "SGLANG_FP8_PAGED_MQA_LOGITS_TORCH"):
        assert sglang_read_sites(name)
    assert set(FORK_VARS) == {HACK_VAR, "SGLANG_APPLY_CONFIG_BACKUP", "SGLANG_OPT_FP8_WO_A_GEMM",
                              "SGLANG_OPT_FUSE_WQA_WKV", "SGLANG_FP8_PAGED_MQA_LOGITS_TORCH"}


def test_nsa_flags_really_are_gone_from_sglang():
    """Why the launcher must take --nsa-*-backend: SGLang 0.5.23 has no such flags."""
    text = "\n".join(t for r, t in sglang_sources().items() if r.startswith("srt/arg_groups/"))
    assert "--nsa-prefill-backend" not in text and "nsa_prefill_backend" not in text
    assert "dsa_prefill_backend" in text


def test_extends_replaces_in_place_and_appends(tmp_path):
    from sglang_ampere.launch.presets import PresetError, load_file

    base = load_builtin("sm86")
    f = tmp_path / "mine.toml"
    f.write_text('[preset]\nextends = "sm86"\n\n'
                 '[[env]]\nname = "SGLANG_OPT_USE_TOPK_V2"\nvalue = "1"\nreason = "testing top-k v2"\n\n'
                 '[[env]]\nname = "MY_VAR"\nvalue = "x"\nreason = "mine"\n\n'
                 '[[arg]]\nflag = "--context-length"\nvalue = "8192"\nreason = "short"\n')
    p = load_file(f)
    assert [e.name for e in p.env] == [e.name for e in base.env] + ["MY_VAR"]
    topk = next(e for e in p.env if e.name == "SGLANG_OPT_USE_TOPK_V2")
    assert (topk.value, topk.reason) == ("1", "testing top-k v2")
    assert [a.flag for a in p.args] == [a.flag for a in base.args]
    assert next(a for a in p.args if a.flag == "--context-length").value == "8192"
    assert p.arch == "sm86" and p.source == str(f)
    f.write_text('[preset]\nextends = "sm77"\n')
    with pytest.raises(PresetError, match="no preset for 'sm77'"):
        load_file(f)
    f.write_text('[preset]\nextend = "sm86"\n')
    with pytest.raises(PresetError, match=r"unknown \[preset\] key\(s\) \['extend'\]"):
        load_file(f)


def test_derived_presets_differ_from_sm86_only_where_they_say():
    sm86, sm89 = load_builtin("sm86"), load_builtin("sm89")
    assert [(e.name, e.value) for e in sm89.env] == [(e.name, e.value) for e in sm86.env]
    assert {a.name for a, b in zip(sm86.env, sm89.env) if a != b} == {"SGLANG_OPT_USE_TILELANG_INDEXER"}
    assert sm89.args == sm86.args
    assert load_builtin("sm80").env == sm86.env
    assert sm89.native_env == sm86.native_env == load_builtin("sm80").native_env
    assert sm89.native_args == sm86.native_args == load_builtin("sm80").native_args
    assert [a.flag for a in load_builtin("sm80").args] == [a.flag for a in sm86.args]


# ----------------------------------------------------------------------------- the [native] table


def test_native_table_below_sm90_only():
    """The native checkpoint's settings exist where sglang-ampere serves it (sm_80/86/89) and
    nowhere SGLang's own kernels do (sm_90, sm_120)."""
    for arch, preset in ALL:
        has = bool(preset.native_env or preset.native_args)
        assert has == (arch in ("sm80", "sm86", "sm89", "cpu")), arch
    sm86 = load_builtin("sm86")
    assert [(a.flag, a.value, a.required) for a in sm86.native_args] == [("--moe-runner-backend", "marlin", True),
                                                                          ("--moe-a2a-backend", "none", True)]
    env = {e.name: (e.value, e.required) for e in sm86.native_env}
    assert env["SGLANG_DSV4_FP4_DEQUANT"] == ("0", True)
    assert env["SGLANG_FORCE_FP8_MARLIN"] == ("1", False) and env["SGLANG_OPT_FP8_WO_A_GEMM"] == ("0", False)


def test_native_moe_runner_backend_is_what_sglang_checks_for():
    """Fp8Config hands MXFP4 experts to Mxfp4MarlinMoEMethod only under the marlin runner, and
    SGLang's DeepSeek-V4 override picks an MXFP4 runner by itself on sm_90/100/120 only."""
    fp8 = sglang_sources()["srt/layers/quantization/fp8.py"]
    assert re.search(r"is_fp4_experts and get_moe_runner_backend\(\)\.is_marlin\(\):\s+from "
                     r"sglang\.srt\.layers\.quantization\.mxfp4_marlin_moe import", fp8)
    v4 = sglang_sources()["srt/arg_groups/model_overrides/deepseek_v4.py"]
    auto = v4[v4.index('if cfg.moe_runner_backend == "auto"'):]
    assert "is_sm90" in auto and "flashinfer_mxfp4" in auto and "is_sm86" not in auto and "is_sm80" not in auto
    from sglang.srt.layers.moe.utils import MoeRunnerBackend

    assert MoeRunnerBackend("marlin").is_marlin()
    assert load_builtin("sm86").native_args[0].value == MoeRunnerBackend.MARLIN.value


def test_fp8_marlin_is_automatic_only_below_sm89():
    """SGLANG_FORCE_FP8_MARLIN is needed on sm_89 (and the Ampere target on sm_90+), not on sm_80..88."""
    utils = sglang_sources()["srt/layers/quantization/fp8_utils.py"]
    fn = utils[utils.index("def can_auto_enable_marlin_fp8"):][:300]
    assert "80 <= sm < 89" in fn
    assert sglang_read_sites("SGLANG_FORCE_FP8_MARLIN")


def test_native_table_parsing(tmp_path):
    from sglang_ampere.launch.presets import PresetError, load_file

    f = tmp_path / "mine.toml"
    f.write_text('[preset]\nextends = "sm86"\n\n[[native.env]]\nname = "SGLANG_FORCE_FP8_MARLIN"\nvalue = "0"\n'
                 'reason = "mine"\n\n[[native.arg]]\nflag = "--moe-runner-backend"\nvalue = "marlin"\n'
                 'reason = "mine too"\n')
    p = load_file(f)
    base = load_builtin("sm86")
    assert [e.name for e in p.native_env] == [e.name for e in base.native_env]
    assert next(e for e in p.native_env if e.name == "SGLANG_FORCE_FP8_MARLIN").value == "0"
    assert p.native_args[0].reason == "mine too" and not p.native_args[0].required   # replaced entry, as written
    f.write_text('[native]\nfoo = 1\n')
    with pytest.raises(PresetError, match=r"\[native\] holds only"):
        load_file(f)
    f.write_text('[[native.env]]\nname = "A"\nvalue = "1"\nreason = "r"\nrequired = "yes"\n')
    with pytest.raises(PresetError, match=r"\[\[native.env\]\] #1: 'required' must be true or false"):
        load_file(f)
    f.write_text('[[env]]\nname = "A"\nvalue = "1"\nreason = "r"\nrequird = true\n')
    with pytest.raises(PresetError, match=r"unknown key\(s\) \['requird'\]"):
        load_file(f)
