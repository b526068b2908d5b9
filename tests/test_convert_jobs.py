"""The plan (headers only) and every refused input: clear message naming tensor and shard,
non-zero exit, and no output left behind."""

import json
import os

import pytest
import torch
from helpers.convert import cli, copy_ckpt, first_name, fresh_seed, mutate_shard, shard_of

from sglang_ampere.convert.jobs import K_COPY, K_DENSE, K_EXPERT, K_KEEP, make_plan
from sglang_ampere.convert.options import Options
from sglang_ampere.inventory import DENSE, EXPERT, PRESERVED, native_inventory
from sglang_ampere.safetensors_io import CheckpointError, read_header


@pytest.fixture
def broken(native, tmp_path):
    return copy_ckpt(native, tmp_path / "src")


def test_plan_classifies_every_tensor_like_the_inventory(native):
    plan = make_plan(native, Options())
    inv = native_inventory(json.loads((native / "config.json").read_text()))
    n_expert = sum(1 for s in inv.values() if s.role == EXPERT and s.name.endswith(".weight"))
    n_dense = sum(1 for s in inv.values() if s.role == DENSE and s.name.endswith(".weight"))
    n_pres = sum(1 for s in inv.values() if s.role == PRESERVED)
    assert plan.counts() == {K_EXPERT: n_expert, K_DENSE: n_dense, K_KEEP: 0, K_COPY: n_pres}
    assert plan.source_tensor_count() == len(inv)
    outs = {o.name: o for sp in plan.shards for o in sp.outputs}
    assert set(outs) == set(inv)
    for name, spec in inv.items():
        o = outs[name]
        if spec.role == EXPERT:
            assert (o.dtype, o.shape) == (("I8", spec.shape) if name.endswith(".weight") else ("BF16", spec.shape))
        elif spec.role == DENSE:
            assert (o.dtype, o.shape) == (("I8", spec.shape) if name.endswith(".weight") else ("BF16", spec.shape))
        else:
            assert (o.dtype, o.shape) == (spec.dtype, spec.shape)


def test_plan_channel_and_keep_bf16_outputs(native):
    plan = make_plan(native, Options("mse", "channel", ("layers.*.attn.wo_a",)))
    outs = {o.name: o for sp in plan.shards for o in sp.outputs}
    assert outs["layers.1.attn.wq_a.weight"].dtype == "U8"
    assert outs["layers.1.attn.wq_a.scale"].shape == (outs["layers.1.attn.wq_a.weight"].shape[0],)
    assert outs["layers.0.attn.wo_a.weight"].dtype == "BF16"
    assert "layers.0.attn.wo_a.scale" not in outs and "mtp.0.attn.wo_a.scale" in outs
    assert plan.counts()[K_KEEP] == 3


def test_keep_bf16_pattern_that_matches_nothing_is_refused(native):
    with pytest.raises(CheckpointError, match="--keep-bf16 'layers.*.attn.nothing' matches no dense module"):
        make_plan(native, Options(keep_bf16=("layers.*.attn.nothing",)))


def _refused(src, tmp_path, capsys, *needles):
    dst = tmp_path / "out"
    rc = cli("convert", src, dst, "--quiet")
    err = capsys.readouterr().err
    assert rc != 0
    for n in needles:
        assert n in err, f"{n!r} not in:\n{err}"
    assert not dst.exists(), "a refused input left output behind"
    rc = cli("audit", src)
    out = capsys.readouterr().out
    assert rc == 1 and "PROBLEMS" in out
    return err


def test_unknown_tensor_is_refused(broken, tmp_path, capsys):
    shard = shard_of(broken, "embed.weight")
    mutate_shard(shard, lambda t: t.__setitem__("layers.0.attn.mystery.weight", torch.ones(3, 5, dtype=torch.bfloat16)))
    _refused(broken, tmp_path, capsys, "layers.0.attn.mystery.weight", shard.name, "unknown tensor name")


def test_wrong_dtype_for_role_is_refused(broken, tmp_path, capsys):
    name = first_name(broken, lambda n: n.endswith("attn.wq_a.weight"))
    shard = shard_of(broken, name)
    mutate_shard(shard, lambda t: t.__setitem__(name, t[name].float().to(torch.bfloat16)))
    _refused(broken, tmp_path, capsys, name, shard.name, "dtype BF16 is not valid for a dense FP8 weight")


def test_expert_scale_with_wrong_dtype_is_refused(broken, tmp_path, capsys):
    name = first_name(broken, lambda n: ".experts." in n and n.endswith(".scale"))
    shard = shard_of(broken, name)
    mutate_shard(shard, lambda t: t.__setitem__(name, t[name].float().to(torch.bfloat16)))
    _refused(broken, tmp_path, capsys, name, shard.name, "expected F8_E8M0")


def test_missing_scale_is_refused(broken, tmp_path, capsys):
    name = first_name(broken, lambda n: ".experts.3.w2.scale" in n)
    shard = shard_of(broken, name)
    mutate_shard(shard, lambda t: t.pop(name))
    _refused(broken, tmp_path, capsys, name.replace(".scale", ".weight"), "weight without its scale")


def test_scale_without_weight_is_refused(broken, tmp_path, capsys):
    name = first_name(broken, lambda n: n.endswith("shared_experts.w2.weight"))
    shard = shard_of(broken, name)
    mutate_shard(shard, lambda t: t.pop(name))
    _refused(broken, tmp_path, capsys, name.replace(".weight", ".scale"), shard.name, "scale without its weight")


def test_misfit_scale_shape_is_refused(broken, tmp_path, capsys):
    name = first_name(broken, lambda n: ".experts.0.w1.scale" in n)
    shard = shard_of(broken, name)
    mutate_shard(shard, lambda t: t.__setitem__(name, t[name][:, :-1].contiguous()))
    _refused(broken, tmp_path, capsys, name, shard.name, "does not fit weight")


def test_truncated_shard_is_refused(broken, tmp_path, capsys):
    shard = sorted(broken.glob("*.safetensors"))[1]
    size = shard.stat().st_size
    with open(shard, "r+b") as f:
        f.truncate(size - 1000 - (fresh_seed() % 5000))
    _refused(broken, tmp_path, capsys, shard.name, "truncated")


def test_corrupt_header_is_refused(broken, tmp_path, capsys):
    shard = sorted(broken.glob("*.safetensors"))[-1]
    with open(shard, "r+b") as f:
        f.seek(9)
        f.write(b"\xff\x00garbage{")
    _refused(broken, tmp_path, capsys, shard.name, "corrupt")


def test_nan_scale_byte_is_refused_without_partial_output(broken, tmp_path, capsys):
    name = first_name(broken, lambda n: ".experts.2.w3.scale" in n)
    shard = shard_of(broken, name)

    def poison(t):
        b = t[name].view(torch.uint8).clone()
        b.view(-1)[b.numel() // 2] = 255
        t[name] = b.view(torch.float8_e8m0fnu)

    mutate_shard(shard, poison)
    dst = tmp_path / "out"
    rc = cli("convert", broken, dst, "--quiet")
    err = capsys.readouterr().err
    assert rc != 0 and "NaN" in err and name.replace(".scale", ".weight") in err and "re-download" in err
    assert shard.name in err
    assert not dst.exists()
    assert cli("convert", broken, dst, "--quiet", "--workers", "2") != 0          # raised in a worker process
    err = capsys.readouterr().err
    assert "NaN" in err and name.replace(".scale", ".weight") in err and shard.name in err
    assert not dst.exists()
    dst.mkdir()                                       # an empty folder the user made: emptied again, kept
    assert cli("convert", broken, dst, "--quiet") != 0
    capsys.readouterr()
    assert dst.is_dir() and not any(dst.iterdir())


def test_destination_inside_or_equal_to_source_is_refused(native, tmp_path, capsys):
    before = sorted(p.name for p in native.iterdir())
    for dst in (native / "converted", native):
        rc = cli("convert", native, dst, "--quiet")
        err = capsys.readouterr().err
        assert rc != 0 and ("inside the source" in err or "is the source itself" in err)
    assert sorted(p.name for p in native.iterdir()) == before


def test_foreign_non_empty_destination_is_refused(native, tmp_path, capsys):
    dst = tmp_path / "mine"
    dst.mkdir()
    (dst / "notes.txt").write_text("user data")
    rc = cli("convert", native, dst, "--quiet")
    assert rc != 0 and "--overwrite" in capsys.readouterr().err
    assert [p.name for p in dst.iterdir()] == ["notes.txt"]


def test_source_identity_is_the_header_not_the_data(native, tmp_path):
    shard = sorted(native.glob("*.safetensors"))[0]
    h = read_header(shard)
    # Same header, different data bytes: identical identity (the header is what is hashed).
    copy = tmp_path / shard.name
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    copy.write_bytes(bytes(data))
    os.utime(copy, ns=(h.mtime_ns, h.mtime_ns))
    assert read_header(copy).identity() == h.identity()
    os.utime(copy, ns=(h.mtime_ns + 10**9, h.mtime_ns + 10**9))   # touched/re-downloaded: a new identity
    assert read_header(copy).identity() != h.identity()


def test_unknown_safetensors_dtype_is_refused(broken, tmp_path, capsys):
    shard = sorted(broken.glob("*.safetensors"))[0]
    before = read_header(shard)
    name = next(k for k, v in before.tensors.items() if v.dtype == "BF16")
    raw, n = shard.read_bytes(), before.data_start - 8      # the JSON header: raw[8:8 + n]
    header = json.loads(raw[8:8 + n])
    header[name]["dtype"] = "Q4_K"
    new = json.dumps(header, separators=(",", ":")).encode()
    new += b" " * (n - len(new))                      # same length, so offsets stay valid
    assert len(new) == n
    shard.write_bytes(raw[:8] + new + raw[8 + n:])
    _refused(broken, tmp_path, capsys, name, shard.name, "unknown safetensors dtype 'Q4_K'")


def test_pair_split_across_shards_is_converted_from_both(native, tmp_path):
    from safetensors.torch import load_file

    from sglang_ampere.convert.engine import convert

    src = copy_ckpt(native, tmp_path / "src")
    scale = first_name(src, lambda n: ".experts.4.w1.scale" in n)
    home = shard_of(src, scale)
    other = next(p for p in sorted(src.glob("*.safetensors")) if p != home)
    moved = {}
    mutate_shard(home, lambda t: moved.update({scale: t.pop(scale)}))
    mutate_shard(other, lambda t: t.update(moved))
    index = json.loads((src / "model.safetensors.index.json").read_text())
    index["weight_map"][scale] = other.name
    (src / "model.safetensors.index.json").write_text(json.dumps(index))

    plan = make_plan(src, Options())
    sp = next(s for s in plan.shards if s.name == home.name)
    assert sp.sources == sorted([home.name, other.name])
    a, b = tmp_path / "a", tmp_path / "b"
    convert(src, a, Options(), progress=False)
    convert(native, b, Options(), progress=False)
    ta, tb = load_file(str(a / home.name)), load_file(str(b / home.name))
    assert scale in ta                                # emitted with its weight
    for k in tb:
        assert torch.equal(ta[k].view(torch.uint8), tb[k].view(torch.uint8)), k
    manifest = json.loads((a / "sglang-ampere-convert.json").read_text())
    assert sorted(manifest["shards"][home.name]["sources"]) == sorted([home.name, other.name])
