"""``sglang-ampere eval``: native vs dsv4_int, a broken conversion, logits dumps, bad input."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from helpers.convert import cli, copy_ckpt, mutate_shard, shard_of
from helpers.reference import converted, tiny_checkpoint, tiny_ids
from safetensors.torch import load_file

from sglang_ampere.convert.audit import audit
from sglang_ampere.reference.eval import evaluate
from sglang_ampere.reference.model import ReferenceModel, new_caches

T = 160


@pytest.fixture(scope="module")
def ck(tmp_path_factory):
    root, seed, native = tiny_checkpoint(tmp_path_factory, "eval")
    ids = tiny_ids(seed, T).tolist()
    (root / "tokens.json").write_text(json.dumps(ids))
    return {
        "root": root,
        "native": native,
        "ids": ids,
        "tokens": root / "tokens.json",
        "mse": converted(native, root / "mse"),
        "absmax": converted(native, root / "absmax", expert_mode="absmax"),
    }


def _expert_snr(path, native) -> float:
    report, problems = audit(path, native, sample=0)
    assert not problems, problems
    return report["fidelity"]["expert_int4"]["snr_db_mean"]


def test_native_vs_dsv4_int_kl_is_finite_and_follows_the_tensor_snr(ck):
    res = {}
    for mode in ("mse", "absmax"):
        r = evaluate(ck[mode], ck["ids"], ck["native"], decode=4, dtype="float32", stream=False)
        assert all(0 < r["kl"][k] < 5 for k in ("mean", "p95", "max"))
        assert r["kl"]["mean"] <= r["kl"]["p95"] <= r["kl"]["max"]
        assert 0.3 < r["top1_agreement"] < 1.0
        assert len(r["layer_snr_db"]) == 4 and all(0 < s < 60 for s in r["layer_snr_db"])
        res[mode] = (r, _expert_snr(ck[mode], ck["native"]))
    (rm, sm), (ra, sa) = res["mse"], res["absmax"]
    assert sm - sa > 3  # the converter's mse scales beat absmax per tensor ...
    # ... and the model sees the same gap: first-layer hidden SNR moves by about the tensor SNR gap,
    # and the KL grows.
    gap = rm["layer_snr_db"][0] - ra["layer_snr_db"][0]
    assert abs(gap - (sm - sa)) < 1.5, (gap, sm - sa)  # seen: within 0.6 dB over 8 seeds
    assert ra["kl"]["mean"] > 1.2 * rm["kl"]["mean"]
    # the same model against itself: zero KL, identical top-1, infinite SNR
    same = evaluate(ck["native"], ck["ids"], ck["native"], dtype="float32", stream=False)
    assert same["kl"]["max"] == 0 and same["top1_agreement"] == 1 and same["layer_snr_db"][0] == float("inf")


def test_a_broken_converted_tensor_shows_as_a_large_kl(ck, tmp_path):
    broken = copy_ckpt(ck["mse"], tmp_path / "broken")
    # The layer-0 expert most tokens are routed to (hash routing: tid2eid[token]).
    tid2eid = load_file(str(shard_of(ck["native"], "layers.0.ffn.gate.tid2eid")))["layers.0.ffn.gate.tid2eid"]
    e = int(torch.bincount(tid2eid[torch.tensor(ck["ids"])].flatten()).argmax())
    name = f"layers.0.ffn.experts.{e}.w1.weight"

    def swap(t):
        b = t[name].view(torch.uint8)
        t[name] = ((b >> 4) | (b << 4)).view(torch.int8)

    mutate_shard(shard_of(broken, name), swap)
    good = evaluate(ck["mse"], ck["ids"], ck["native"], dtype="float32", stream=False)
    bad = evaluate(broken, ck["ids"], ck["native"], dtype="float32", stream=False)
    # Seen over 12 seeds: KL 5.6-8x the intact conversion's, first-layer SNR 13-16 dB lower.
    assert bad["kl"]["mean"] > 3 * good["kl"]["mean"], (bad["kl"], good["kl"])
    assert bad["layer_snr_db"][0] < good["layer_snr_db"][0] - 8


def test_cli_json_and_logits_dump_cover_prefill_and_decode_rows(ck, tmp_path, capsys):
    out = tmp_path / "logits.safetensors"
    rc = cli(
        "eval",
        ck["mse"],
        "--against",
        ck["native"],
        "--tokens",
        ck["tokens"],
        "--decode",
        "7",
        "--dtype",
        "float32",
        "--dump-logits",
        out,
        "--json",
        "--quiet",
    )
    assert rc == 0
    r = json.loads(capsys.readouterr().out)
    assert (r["tokens"], r["prefill"], r["decode"]) == (T, T - 7, 7)
    assert r["model"]["kind"] == "dsv4_int" and r["against"]["kind"] == "native" and r["model"]["ppl"] > 1
    logits = load_file(str(out))["logits"]
    assert logits.dtype == torch.float32 and logits.shape == (T, 300)
    m = ReferenceModel(ck["mse"], dtype=torch.float32, stream=False)
    full = m.forward(torch.tensor(ck["ids"]), 0, new_caches(m.cfg))
    assert (logits - full).abs().max().item() <= 1e-5 * full.abs().max().item()
    lp = torch.log_softmax(full.double(), -1)
    ppl = float(torch.exp(-lp[:-1].gather(1, torch.tensor(ck["ids"][1:]).view(-1, 1)).mean()))
    assert r["model"]["ppl"] == pytest.approx(ppl, rel=1e-9)


def test_cli_text_input_uses_the_checkpoint_tokenizer(ck, tmp_path, capsys):
    pytest.importorskip("tokenizers")
    text = tmp_path / "t.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 3, encoding="utf-8")
    assert cli("eval", ck["mse"], "--text", text, "--json", "--quiet") == 0
    r = json.loads(capsys.readouterr().out)
    assert r["tokens"] == 1 + len(text.read_bytes())  # BOS + one token per byte (synth tokenizer)


@pytest.mark.parametrize(
    "case,needle",
    [
        ("range", "token id 300 is out of range"),
        ("cap", "over the cap of 10"),
        ("missing", "missing tensors ['layers.1.attn.wkv.weight']"),
        ("unknown", "quant_method 'awq'"),
        ("decode", "--decode 200 must be between 0"),
        ("device", "no CUDA device is available here"),
    ],
)
def test_cli_bad_input_gets_a_clear_error(ck, tmp_path, capsys, case, needle):
    model, tokens, extra = ck["mse"], ck["tokens"], []
    if case == "range":
        tokens = tmp_path / "bad.json"
        tokens.write_text(json.dumps([1, 2, 300]))
    elif case == "cap":
        extra = ["--max-tokens", "10"]
    elif case == "decode":
        extra = ["--decode", "200"]
    elif case == "device":
        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")
        extra = ["--device", "cuda"]
    elif case == "missing":
        model = copy_ckpt(ck["mse"], tmp_path / "m")
        mutate_shard(
            shard_of(model, "layers.1.attn.wkv.weight"),
            lambda t: [t.pop(k) for k in ("layers.1.attn.wkv.weight", "layers.1.attn.wkv.scale")],
        )
        idx = json.loads((model / "model.safetensors.index.json").read_text())
        for k in ("layers.1.attn.wkv.weight", "layers.1.attn.wkv.scale"):
            idx["weight_map"].pop(k)
        (model / "model.safetensors.index.json").write_text(json.dumps(idx))
    elif case == "unknown":
        model = tmp_path / "u"
        shutil.copytree(ck["mse"], model)
        cfg = json.loads((model / "config.json").read_text())
        cfg["quantization_config"] = {"quant_method": "awq"}
        (model / "config.json").write_text(json.dumps(cfg))
    assert cli("eval", model, "--tokens", tokens, "--quiet", *extra) == 2
    assert needle in capsys.readouterr().err


def test_mtp_block_figures(ck):
    r = evaluate(ck["mse"], ck["ids"], ck["native"], decode=3, dtype="float32", stream=False, mtp=True)
    m = r["mtp"]
    assert 0 < m["kl_mean"] <= m["kl_max"] < 5 and 0.3 < m["top1_agreement"] < 1 and m["ppl"] > 1
    same = evaluate(ck["native"], ck["ids"], ck["native"], dtype="float32", stream=False, mtp=True)["mtp"]
    assert same["kl_max"] == 0 and same["top1_agreement"] == 1 and same["ppl"] == pytest.approx(m["ref_ppl"], rel=1e-9)
    # the MTP logits are those of the block run on the main model's last streams
    mod = ReferenceModel(ck["native"], dtype=torch.float32, stream=False)
    ids = torch.tensor(ck["ids"])
    _, R = mod.forward(ids, 0, new_caches(mod.cfg), return_streams=True)
    lg = mod.mtp(R[:-1], ids[1:], 0, new_caches(mod.cfg))
    lp = torch.log_softmax(lg[:-1].double(), -1)
    assert same["ppl"] == pytest.approx(float(torch.exp(-lp.gather(1, ids[2:].view(-1, 1)).mean())), rel=1e-6)
