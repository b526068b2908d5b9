"""Restartability: SIGKILL mid-run then resume == uninterrupted run, byte for byte; finished
shards are verified and kept; damaged, missing or re-sourced shards are redone; a destination
made with other options is refused unless --overwrite."""

import json
import os
import signal
import subprocess
import time

import pytest
from helpers.convert import (
    PY,
    REPO,
    cli,
    copy_ckpt,
    files_of,
    first_name,
    fresh_seed,
    make_native,
    mutate_shard,
    shard_of,
)

from sglang_ampere.convert.engine import convert
from sglang_ampere.convert.manifest import MANIFEST_NAME
from sglang_ampere.convert.options import Options


@pytest.fixture(scope="module")
def native(tmp_path_factory):
    return make_native(tmp_path_factory.mktemp("resume"), fresh_seed(), shards=4)


@pytest.fixture(scope="module")
def reference(native, tmp_path_factory):
    dst = tmp_path_factory.mktemp("ref") / "out"
    convert(native, dst, Options(), progress=False)
    return dst


def test_sigkill_mid_run_then_resume_is_byte_identical(tmp_path_factory):
    root = tmp_path_factory.mktemp("kill")
    # Large enough that a shard takes a noticeable time with the slowest scale search.
    src = make_native(root, fresh_seed(), shards=6, experts=6, hidden=512, moe_inter=1024)
    whole, killed = root / "whole", root / "killed"
    assert cli("convert", src, whole, "--quiet", "--expert-scale", "optimal") == 0

    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [PY, "-m", "sglang_ampere", "convert", str(src), str(killed), "--quiet", "--expert-scale", "optimal"]
    proc = subprocess.Popen(cmd, cwd=str(REPO), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    state = None
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        man = killed / MANIFEST_NAME
        partial = list(killed.glob(".*.partial")) if killed.exists() else []
        if man.exists() and partial:
            try:
                done = json.loads(man.read_text())["shards"]
            except (ValueError, OSError):
                continue
            if done:                                   # at least one shard finished, another half written
                os.kill(proc.pid, signal.SIGKILL)
                state = (len(done), [p.name for p in partial])
                break
        time.sleep(0.005)
    proc.wait()
    assert state is not None, "the converter finished before it could be killed mid-shard; make the test model larger"
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "config.json").exists(), "a killed run must not look like a finished checkpoint"
    assert json.loads((killed / MANIFEST_NAME).read_text())["complete"] is False

    res = subprocess.run(cmd, cwd=str(REPO), env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "verified and kept" in res.stderr
    assert not list(killed.glob(".*.partial"))
    assert files_of(killed) == files_of(whole)


def test_rerun_verifies_and_skips_everything(native, reference, tmp_path):
    dst = copy_ckpt(reference, tmp_path / "out")
    s = convert(native, dst, Options(), progress=False)
    assert s.converted == [] and len(s.skipped) == 4
    assert files_of(dst) == files_of(reference)


def test_damaged_and_missing_shards_are_redone(native, reference, tmp_path):
    dst = copy_ckpt(reference, tmp_path / "out")
    shards = sorted(dst.glob("*.safetensors"))
    with open(shards[1], "r+b") as f:                  # flip one data byte: same size, wrong hash
        f.seek(shards[1].stat().st_size - 7)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 0x5A]))
    shards[3].unlink()
    s = convert(native, dst, Options(), progress=False)
    assert sorted(s.converted) == sorted([shards[1].name, shards[3].name])
    assert files_of(dst) == files_of(reference)


def test_changed_source_shard_is_redone(native, reference, tmp_path):
    src = copy_ckpt(native, tmp_path / "src")
    dst = copy_ckpt(reference, tmp_path / "out")
    name = first_name(src, lambda n: n.endswith("attn_norm.weight"))
    shard = shard_of(src, name)
    mutate_shard(shard, lambda t: t.__setitem__(name, t[name] * 2))
    s = convert(src, dst, Options(), progress=False)
    assert s.converted == [shard.name]
    out = (dst / shard.name).read_bytes()
    assert out != (reference / shard.name).read_bytes()


def test_other_options_are_refused_unless_overwrite(native, reference, tmp_path, capsys):
    dst = copy_ckpt(reference, tmp_path / "out")
    before = files_of(dst)
    assert cli("convert", native, dst, "--quiet", "--dense-int8", "channel") == 2
    assert "different options" in capsys.readouterr().err
    assert files_of(dst) == before
    assert cli("convert", native, dst, "--quiet", "--dense-int8", "channel", "--overwrite") == 0
    cfg = json.loads((dst / "config.json").read_text())
    assert cfg["quantization_config"]["config_groups"]["linears_w8a16"]["weights"]["strategy"] == "channel"
    assert cli("audit", dst) == 0


def test_stale_partial_file_is_removed_on_resume(native, reference, tmp_path):
    dst = copy_ckpt(reference, tmp_path / "out")
    (dst / ".model-00002-of-00004.safetensors.partial").write_bytes(b"half a shard")
    convert(native, dst, Options(), progress=False)
    assert not list(dst.glob(".*.partial"))
    assert files_of(dst) == files_of(reference)


def test_interrupt_keeps_finished_shards_for_resume(native, reference, tmp_path, monkeypatch):
    import sglang_ampere.convert.engine as engine

    real = engine.convert_shard
    calls = []

    def flaky(src, dst, sp, options, device="cpu", report=None, **kw):
        calls.append(sp.name)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(src, dst, sp, options, device, report, **kw)

    monkeypatch.setattr(engine, "convert_shard", flaky)
    dst = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        convert(native, dst, Options(), progress=False)
    assert len(list(dst.glob("*.safetensors"))) == 2 and not (dst / "config.json").exists()
    monkeypatch.setattr(engine, "convert_shard", real)
    s = convert(native, dst, Options(), progress=False)
    assert len(s.skipped) == 2 and len(s.converted) == 2
    assert files_of(dst) == files_of(reference)


def test_shards_the_source_no_longer_has_are_removed(native, reference, tmp_path):
    dst = copy_ckpt(reference, tmp_path / "out")
    stale = dst / "model-00009-of-00009.safetensors"
    stale.write_bytes((dst / "model-00001-of-00004.safetensors").read_bytes())
    man = json.loads((dst / MANIFEST_NAME).read_text())
    man["shards"][stale.name] = dict(man["shards"]["model-00001-of-00004.safetensors"], name=stale.name)
    (dst / MANIFEST_NAME).write_text(json.dumps(man))
    convert(native, dst, Options(), progress=False)
    assert not stale.exists()
    assert files_of(dst) == files_of(reference)
