"""GPU detection from recorded nvidia-smi outputs (no CUDA, no driver needed)."""


import pytest
from helpers.launch import fake_nvidia_smi, smi

from sglang_ampere import gpus
from sglang_ampere.launch.launcher import LaunchError, build_spec, format_spec, resolve_arch, split_argv


@pytest.mark.parametrize("recorded, count, arch, name, mem_gib", [
    ("rtx3090_x12", 12, "sm86", "NVIDIA GeForce RTX 3090", 24),
    ("rtx3090_x4", 4, "sm86", "NVIDIA GeForce RTX 3090", 24),
    ("a100_sxm4_80gb_x8", 8, "sm80", "NVIDIA A100-SXM4-80GB", 80),
    ("rtx4090_x2", 2, "sm89", "NVIDIA GeForce RTX 4090", 24),
    ("h100_80gb_hbm3_x8", 8, "sm90", "NVIDIA H100 80GB HBM3", 80),
])
def test_parse_recorded_cards(recorded, count, arch, name, mem_gib):
    found = gpus.parse_nvidia_smi(smi(recorded))
    assert len(found) == count
    assert [g.index for g in found] == list(range(count))
    assert {g.arch for g in found} == {arch}
    assert {g.name for g in found} == {name}
    assert round(found[0].memory_gib) == mem_gib
    assert all(g.uuid.startswith("GPU-") for g in found)
    assert gpus.summarize(found) == f"{count} x {name} ({arch}, {mem_gib} GiB)"


def test_arch_of_two_digit_major():
    assert gpus.Arch("12.0") == "sm120"
    assert gpus.Arch("8.6") == "sm86"
    with pytest.raises(gpus.GpuDetectionError, match="compute capability"):
        gpus.parse_nvidia_smi("0, NVIDIA GeForce RTX 3090, [N/A], 24576, GPU-1\n")


def test_old_driver_without_compute_cap_says_what_to_do():
    with pytest.raises(gpus.GpuDetectionError, match="update the NVIDIA driver, or pass --gpu"):
        gpus.parse_nvidia_smi("0, NVIDIA GeForce RTX 3090, 24576, GPU-1\n")


def test_mixed_box_summary_and_error():
    found = gpus.parse_nvidia_smi(smi("mixed_3090_4090_a6000"))
    assert [g.arch for g in found] == ["sm86", "sm89", "sm86", "sm86"]
    assert gpus.summarize(found) == ("2 x NVIDIA GeForce RTX 3090 (sm86, 24 GiB), "
                                     "1 x NVIDIA GeForce RTX 4090 (sm89, 24 GiB), "
                                     "1 x NVIDIA RTX A6000 (sm86, 48 GiB)")
    opts, _ = split_argv(["--model-path", "x"])
    with pytest.raises(LaunchError, match=r"mixed GPU architectures.*--gpu ARCH.*CUDA_VISIBLE_DEVICES"):
        resolve_arch(opts, {}, smi("mixed_3090_4090_a6000"), need_gpu=True)


def test_mixed_box_resolved_by_gpu_flag_or_visible_devices():
    opts, _ = split_argv(["--gpu", "sm86"])
    arch, found = resolve_arch(opts, {}, smi("mixed_3090_4090_a6000"), need_gpu=True)
    assert arch == "sm86" and len(found) == 4
    opts, _ = split_argv([])
    arch, found = resolve_arch(opts, {"CUDA_VISIBLE_DEVICES": "0,2"}, smi("mixed_3090_4090_a6000"), need_gpu=True)
    assert arch == "sm86" and [g.index for g in found] == [0, 2]


@pytest.mark.parametrize("spelling", ["sm_86", "86", "8.6", "SM86", " sm86 "])
def test_gpu_flag_takes_every_arch_spelling(spelling):
    """``--gpu sm_86`` / ``86`` / ``8.6`` pick the preset ``--gpu sm86`` picks (gpus.Arch)."""
    opts, _ = split_argv(["--gpu", spelling])
    arch, found = resolve_arch(opts, {}, smi("mixed_3090_4090_a6000"), need_gpu=True)
    assert arch == "sm86" and len(found) == 4, (spelling, arch)
    cpu, _ = split_argv(["--gpu", "CPU"])
    assert resolve_arch(cpu, {}, "", need_gpu=True) == ("cpu", [])


def test_gpu_flag_spellings_give_the_same_launch(model):
    def dry_run(gpu):
        spec = build_spec(["--gpu", gpu, "--dry-run", "--model-path", str(model)], environ={"PATH": "/usr/bin"},
                          smi_output="")
        return spec.arch, spec.argv, spec.env, format_spec(spec)

    assert dry_run("sm_86") == dry_run("86") == dry_run("sm86")
    assert dry_run("sm_80")[0] == "sm80" and dry_run("120")[0] == "sm120"


def test_cuda_visible_devices_like_the_runtime():
    found = gpus.parse_nvidia_smi(smi("mixed_3090_4090_a6000"))
    assert [g.index for g in gpus.apply_visible_devices(found, "3,1")] == [3, 1]
    assert [g.index for g in gpus.apply_visible_devices(found, found[2].uuid[:12])] == [2]
    assert gpus.apply_visible_devices(found, "") == []
    assert [g.index for g in gpus.apply_visible_devices(found, "0,7,1")] == [0]   # stops at invalid
    assert len(gpus.apply_visible_devices(found, None)) == 4


@pytest.mark.parametrize("recorded, arch", [
    ("rtx3090_x4", "sm86"), ("a100_sxm4_80gb_x8", "sm80"), ("rtx4090_x2", "sm89"), ("h100_80gb_hbm3_x8", "sm90")])
def test_auto_picks_the_preset(recorded, arch):
    opts, _ = split_argv([])
    assert resolve_arch(opts, {}, smi(recorded), need_gpu=True)[0] == arch


def test_detection_runs_the_real_nvidia_smi_binary(tmp_path, monkeypatch):
    env = fake_nvidia_smi(tmp_path, "rtx4090_x2")
    monkeypatch.setenv("PATH", env["PATH"])
    assert [g.arch for g in gpus.detect_gpus({})] == ["sm89", "sm89"]


def test_failing_nvidia_smi_is_reported(tmp_path, monkeypatch):
    env = fake_nvidia_smi(tmp_path, None, fail=True)
    monkeypatch.setenv("PATH", env["PATH"])
    with pytest.raises(gpus.GpuDetectionError, match="nvidia-smi failed .exit 9.: NVIDIA-SMI has failed"):
        gpus.detect_gpus({})


def test_no_nvidia_smi(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(gpus.GpuDetectionError, match="nvidia-smi not found"):
        gpus.run_nvidia_smi()
