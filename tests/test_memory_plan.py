"""``sglang-ampere plan``: per-stage weights, KV bytes and the layer split, on the real model's headers.

The checkpoint is a headers-only dsv4_int copy of DeepSeek-V4-Flash (the real inventory and
config, sparse shards, no data). Three independent references:

* the weights per stage against a sum over the raw shard headers written here from the
  published layout, with SGLang's load-time changes stated separately (wo_a to BF16, Marlin
  group scales, int32 tid2eid, float32 compressor norms, RoPE tables);
* those load-time rules against SGLang 0.5.23's own module tree, built on the meta device from
  a small synthetic checkpoint (every parameter and buffer, per layer and per global module);
* the KV coefficient and fixed bytes against SGLang's own ``DSV4PoolConfigurator``.
"""

from __future__ import annotations

import itertools
import json
import math

import pytest
from helpers.headers_only import write_headers_only
from helpers.sglang_cpu import scratch_runtime_context

from sglang_ampere import memory_plan as P
from sglang_ampere.safetensors_io import DTYPE_SIZES, list_shards, read_header
from sglang_ampere.synth import SynthSpec

TOPOLOGIES = [(12, 24), (10, 24), (8, 48), (4, 80)]


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    return write_headers_only(tmp_path_factory.mktemp("plan") / "dsv4_int_real")


@pytest.fixture(scope="module")
def real_model(real):
    return P.load_model(real)


@pytest.fixture(scope="module")
def headers(real):
    return raw_headers(real)


def raw_headers(folder):
    """Every tensor's (dtype, shape) as the safetensors headers state it."""
    out = {}
    for f in list_shards(folder):
        out.update({k: (v.dtype, v.shape) for k, v in read_header(f).tensors.items()})
    return out


def sglang_held(name, dtype, shape, headers):
    """What SGLang keeps for one tensor after loading, written independently of plan.py."""
    n = math.prod(shape)
    if name.endswith(".attn.wo_a.weight"):
        return 2 * n                                    # dequantized to BF16 by the loader hook
    if name.endswith(".attn.wo_a.scale"):
        return 0
    if name.endswith(".scale") and ".experts." not in name:
        w_dtype, (rows, cols) = headers[name[: -len("scale")] + "weight"]
        return (cols // 128) * rows * 2                 # Marlin group-128 scales [K/128, N] BF16
    if name.endswith("tid2eid"):
        return 4 * n
    if name.endswith("compressor.norm.weight"):
        return 4 * n
    return DTYPE_SIZES[dtype] * n


def expected_stage_weights(config, headers, start, stop, first, last, context):
    """The headers' bytes of a stage, plus its RoPE tables at the served ``context`` rows
    (patches/dsv4_rope.py; no speculative decoding here)."""
    total = 0
    for name, (dtype, shape) in headers.items():
        parts = name.split(".")
        mine = (parts[0] == "layers" and start <= int(parts[1]) < stop) \
            or (first and name == "embed.weight") \
            or (last and (name in ("head.weight", "norm.weight") or name.startswith("hc_head_")))
        if mine:
            total += sglang_held(name, dtype, shape, headers)
    kinds = {config["compress_ratios"][i] != 0 for i in range(start, stop)}
    pos, dim = min(config["max_position_embeddings"], context), config["qk_rope_head_dim"]
    return total + len(kinds) * (pos * dim // 2 * 8 + pos * dim * 2)


@pytest.mark.parametrize("gpus,mem", TOPOLOGIES, ids=[f"{g}x{m}" for g, m in TOPOLOGIES])
def test_stage_weights_match_an_independent_sum_over_the_headers(real, real_model, headers, gpus, mem):
    plan = P.make_plan(real_model, gpus, mem)
    config = json.loads((real / "config.json").read_text())
    assert sum(plan.partition) == 43 and len(plan.partition) == gpus, f"partition {plan.partition}"
    start = 0
    for r in plan.ranks:
        want = expected_stage_weights(config, headers, start, start + r.layers, r.rank == 0, r.rank == plan.pp - 1,
                                      plan.settings.context_length)
        assert r.weight_bytes == want, f"{gpus}x{mem} stage {r.rank}: plan {r.weight_bytes} != headers {want}"
        assert r.first_layer == start, f"stage {r.rank} starts at {r.first_layer}, expected {start}"
        assert r.free_bytes == int(mem * 2**30) - r.weight_bytes - r.reserve_bytes - r.kv_fixed_bytes, (
            f"stage {r.rank}: free_bytes is not memory - weights - reserves - fixed KV")
        start += r.layers
    # Whole model: the header sum over all stages is the model as SGLang holds it (+ RoPE per stage).
    assert start == 43, "stages must cover the 43 layers"


def test_table_output_and_refusal_exit_code(real, capsys):
    from sglang_ampere.cli import main

    assert main(["plan", str(real), "--gpus", "12x24"]) == 0, "plan exits 0"
    out = capsys.readouterr().out
    assert "SGLANG_PP_LAYER_PARTITION=" in out and "not measured" in out, out
    assert main(["plan", str(real), "--gpus", "2x24"]) == 2, "an impossible topology exits 2"
    assert "GiB short" in capsys.readouterr().err, "the refusal says by how much"


@pytest.mark.parametrize("gpus,mem,spec", [(g, m, "none") for g, m in TOPOLOGIES] + [(12, 24, "mtp")],
                         ids=[f"{g}x{m}" for g, m in TOPOLOGIES] + ["12x24-mtp"])
def test_partition_is_never_worse_balanced_than_sglangs_default(real_model, gpus, mem, spec):
    settings = P.Settings(speculative=spec)
    plan = P.make_plan(real_model, gpus, mem, settings=settings)
    default = P.make_plan(real_model, gpus, mem, settings=settings, partition=P.default_partition(43, gpus))
    ours = min(r.free_bytes for r in plan.ranks)
    theirs = min(r.free_bytes for r in default.ranks)
    assert ours >= theirs, f"{gpus}x{mem}: smallest free {ours} < SGLang default's {theirs}"
    assert theirs == plan.default_min_free_bytes, "default_min_free_bytes disagrees with the default split's stages"
    assert plan.max_total_tokens >= default.max_total_tokens or ours > theirs, (
        "a better-balanced split must not lose KV tokens unless it gains free memory")


def test_partition_is_the_exact_optimum_for_three_stages(real_model):
    """Brute force over every split of 43 layers into 3 stages (903 of them)."""
    s, mem = P.Settings(), 80 * 2**30
    best = max(
        min(r.free_bytes for r in P._stages(real_model, [a, b - a, 43 - b], 3, 1, 3, mem, s))
        for a, b in itertools.combinations(range(1, 43), 2))
    got = min(r.free_bytes for r in P.make_plan(real_model, 3, 80, settings=s).ranks)
    assert got == best, f"DP optimum {got} != brute force {best}"


def test_12x24_split_and_last_stage_draft(real_model):
    base = P.make_plan(real_model, 12, 24)
    mtp = P.make_plan(real_model, 12, 24, settings=P.Settings(speculative="mtp"))
    last, last_mtp = base.ranks[-1], mtp.ranks[-1]
    draft = P._share(real_model.units["mtp"], 1) + P._share(real_model.units["embed"], 1)
    assert last_mtp.weights["draft"] + last_mtp.weights["draft_embed"] == draft, (
        "the MTP draft on pp > 1 holds its layer and its own embedding")
    assert "draft" not in last.weights and mtp.partition[-1] < base.partition[-1], (
        f"the draft's stage gets fewer layers: {base.partition} -> {mtp.partition}")
    assert all("draft" not in r.weights for r in mtp.ranks[:-1]), "the draft lives on the last stage only"
    one = P.make_plan(real_model, 4, 80, tp=4, settings=P.Settings(speculative="mtp"))
    assert "draft_embed" not in one.ranks[0].weights, "with pp 1 the draft shares the target's embedding"


def test_refuses_a_topology_that_cannot_hold_the_weights_and_says_by_how_much(real_model):
    with pytest.raises(P.PlanError, match=r"cannot hold the model: stage \d+ .* GiB short"):
        P.make_plan(real_model, 4, 24)
    with pytest.raises(P.PlanError, match="dspark"):
        P.make_plan(real_model, 12, 24, settings=P.Settings(speculative="dspark"))


def test_tensor_parallel_splits_what_sglang_splits(real_model):
    one = P.make_plan(real_model, 8, 48)
    tp4 = P.make_plan(real_model, 8, 24, tp=4)
    assert tp4.pp == 2 and len(tp4.partition) == 2, f"8 GPUs at tp 4 is pp 2, got {tp4.partition}"
    layer = real_model.units["layer.10"]
    assert P._share(layer, 4) == -(-layer[0] // 4) + layer[1] and layer[1] > 0 and layer[0] > 50 * layer[1], (
        "a layer is mostly tp-split (experts, wq_b, wo_a, wo_b, shared expert), a little replicated")
    per_rank_tp4 = sum(r.weight_bytes for r in tp4.ranks)
    assert per_rank_tp4 < sum(r.weight_bytes for r in one.ranks) / 3, (
        "tp 4 ranks hold about a quarter of the weights each")


def test_json_output_through_the_console_script(real, capsys):
    from sglang_ampere.cli import main

    assert main(["plan", str(real), "--gpus", "12x24", "--json"]) == 0, "plan exits 0"
    doc = json.loads(capsys.readouterr().out)
    assert len(doc["partition"]) == 12 and sum(doc["partition"]) == 43, f"partition {doc['partition']}"
    assert doc["SGLANG_PP_LAYER_PARTITION"] == ",".join(map(str, doc["partition"])), "env string"
    for r, n in zip(doc["ranks"], doc["partition"]):
        assert set(r) >= {"layers", "weight_bytes", "kv_bytes_per_token", "free_bytes"} and r["layers"] == n, (
            f"rank entry {sorted(r)}")
    assert "not measured" in doc["computed"], "the plan says it is computed, not measured"


# ------------------------------------------------------------------------ against SGLang itself


@pytest.fixture(scope="module")
def sglang_plugin():
    pytest.importorskip("sglang")
    from sglang.srt.plugins import load_plugins

    load_plugins()


KV_CASES = [(0.05, False, 1), (0.05, True, 1), (0.05, True, 12), (None, False, 1), (None, True, 1),
            (None, False, 12), (None, True, 12)]


@pytest.mark.parametrize("swa,spec,pp", KV_CASES,
                         ids=[f"{'unset' if r is None else r}-{'mtp' if m else 'nospec'}-pp{p}"
                              for r, m, p in KV_CASES])
def test_kv_model_matches_sglangs_pool_configurator(real, sglang_plugin, swa, spec, pp):
    """The presets' --swa-full-tokens-ratio and none given (SGLang then uses its DeepSeek-V4 override,
    0.1), with and without MTP, pp 1 and pp 12, against SGLang's DSV4PoolConfigurator."""
    from types import SimpleNamespace as NS

    from sglang.srt.arg_groups.model_override_base import model_config_of
    from sglang.srt.model_executor.pool_configurator import DSV4PoolConfigurator
    from sglang.srt.runtime_context import SpawnRanks, get_schedule, publish
    from sglang.srt.server_args import ServerArgs
    from sglang.srt.speculative.spec_info import SpeculativeAlgorithm

    extra = dict(speculative_algorithm="EAGLE", speculative_num_steps=P.MTP_STEPS,
                 speculative_eagle_topk=P.MTP_TOPK, speculative_num_draft_tokens=P.MTP_DRAFT_TOKENS) if spec else {}
    if swa is not None:
        extra["swa_full_tokens_ratio"] = swa
    with scratch_runtime_context():
        sa = ServerArgs(model_path=str(real), max_running_requests=16, chunked_prefill_size=4096, device="cuda",
                        pp_size=pp, **extra)
        publish(sa, role="test", ranks=SpawnRanks(world_rank=0))
        mc = model_config_of(sa)
        config = json.loads((real / "config.json").read_text())
        ratio = P.SGLANG_DSV4_SWA_RATIO if swa is None else swa
        got_ratio = get_schedule().swa_full_tokens_ratio
        assert got_ratio == ratio, f"SGLang's SWA ratio {got_ratio}, expected {ratio}"
        for a, b in [(0, 3), (3, 6), (12, 16), (40, 43), (0, 43)]:
            kvc = NS(kv_cache_dtype_str="fp8_e4m3", model_config=mc, layer_info=NS(start_layer=a, end_layer=b),
                     pp_size=pp, pp_group=NS(rank_in_group=0), sliding_window_size=128, page_size=256,
                     attn_dp_size=1, spec_algorithm=SpeculativeAlgorithm.from_string("EAGLE" if spec else None),
                     spec_aux_config=None)
            theirs = DSV4PoolConfigurator(kvc)
            ours = P.kv_model(config, range(a, b), swa_ratio=ratio, max_running_requests=16, speculative=spec)
            assert abs(theirs.bytes_per_full_token - ours.bytes_per_token) < 1e-9, (
                f"layers {a}-{b}: per token {ours.bytes_per_token} != SGLang {theirs.bytes_per_full_token}")
            assert abs(theirs.bytes_per_swa_token - ours.bytes_per_swa_token) < 1e-9, f"layers {a}-{b}: SWA"
            parts = ours.by_type
            assert abs(sum(parts.values()) - ours.bytes_per_token) < 1e-9, "the per-type parts add up"
            infl = (b - a + 1) / (b - a) if spec else 1.0
            c128 = infl * theirs._compressed_bytes_per_full_token(128) * theirs.num_layers(128)
            window = ratio * theirs.bytes_per_swa_token
            assert abs(parts["window"] - window) < 1e-9 and abs(parts["c128"] - c128) < 1e-9, (
                f"layers {a}-{b}: window / c128 parts against SGLang's")
            fixed = theirs._get_c128_state_fixed_bytes(16) + theirs._get_swa_fixed_bytes()
            assert abs(fixed - ours.fixed_bytes) <= 1, f"layers {a}-{b}: fixed {ours.fixed_bytes} != SGLang {fixed}"
            for budget in (1 << 30, 5 << 30):
                got = theirs.calculate_pool_sizes(budget, 256).max_total_num_tokens
                assert got == P.pool_tokens(budget, ours), (
                    f"layers {a}-{b}: tokens {P.pool_tokens(budget, ours)} != SGLang's {got} for a {budget} "
                    "byte budget")


def _meta_model_bytes(folder, draft: bool):
    """Per-unit bytes of SGLang's real model built on the meta device (params + distinct buffers)."""
    import torch
    from helpers.sglang_cpu import init_sglang_cpu
    from sglang.srt.configs.load_config import LoadConfig
    from sglang.srt.configs.model_config import ModelConfig
    from sglang.srt.model_loader.loader import (
        DefaultModelLoader,
        _get_quantization_config,
        _initialize_model,
        set_default_torch_dtype,
    )

    init_sglang_cpu()
    mc = ModelConfig(str(folder), dtype="bfloat16", is_draft_model=draft)
    loader = DefaultModelLoader(LoadConfig())
    qc = _get_quantization_config(mc, loader.load_config)
    with set_default_torch_dtype(mc.dtype), torch.device("meta"):
        model = _initialize_model(mc, loader.load_config, qc)
    units: dict[str, int] = {}
    rope = 0
    params = dict(model.named_parameters())
    for name, p in params.items():
        nbytes = p.numel() * p.element_size()
        if name.endswith("weight_scale_inv") and ".experts." not in name and p.dim() == 2:
            rows = params[name[: -len("_scale_inv")]].shape[0]
            nbytes = p.shape[1] * rows * 2               # what Marlin repacks the block scale into
        parts = name.split(".")
        if draft:
            unit = "embed" if "embed_tokens" in name else "head" if "lm_head" in name else "mtp"
        elif "layers" in parts:
            unit = f"layer.{parts[parts.index('layers') + 1]}"
        else:
            unit = {"model.embed_tokens.weight": "embed", "lm_head.weight": "head"}.get(name, "final")
        units[unit] = units.get(unit, 0) + nbytes
    for _name, b in model.named_buffers():             # shared RoPE tables appear once
        rope += b.numel() * b.element_size()
    return units, rope


def test_load_rules_match_sglangs_module_tree_on_meta(tmp_path, sglang_plugin):
    spec = SynthSpec(layers=5, hash_layers=2)
    folder = write_headers_only(tmp_path / "small", spec, layers_per_shard=2)
    model = P.load_model(folder)
    theirs, rope = _meta_model_bytes(folder, draft=False)
    for unit in [f"layer.{i}" for i in range(5)] + ["embed", "head", "final"]:
        ours = sum(model.units[unit])
        assert ours == theirs[unit], f"{unit}: plan {ours} != SGLang's parameters {theirs[unit]}"
    assert rope == 2 * model.rope_kind_bytes(), f"RoPE buffers {rope} != two kinds of {model.rope_kind_bytes()}"
    draft, draft_rope = _meta_model_bytes(folder, draft=True)
    assert sum(model.units["mtp"]) == draft["mtp"], f"MTP draft: plan {model.units['mtp']} != SGLang {draft['mtp']}"
    assert draft["embed"] == sum(model.units["embed"]), "the draft's own embedding is the target's size"
    assert draft_rope == model.rope_kind_bytes(), "the draft's window-only layer has one RoPE kind"


def test_sglang_pool_budget_follows_sglangs_profile(real, real_model, sglang_plugin, monkeypatch):
    """``KVCacheConfigurator._profile_available_bytes``: free after load - pre_load * (1 - F)."""
    from types import SimpleNamespace as NS

    import sglang.srt.mem_cache.kv_cache_configurator as K
    from sglang.srt.runtime_context import SpawnRanks, get_parallel, publish
    from sglang.srt.server_args import ServerArgs

    plan = P.make_plan(real_model, 12, 24)
    pre = 24 * 2**30 - int(P.CUDA_CONTEXT_GIB * 2**30)
    with scratch_runtime_context():
        publish(ServerArgs(model_path=str(real), mem_fraction_static=0.85, max_running_requests=16, device="cuda"),
                role="test", ranks=SpawnRanks(world_rank=0))
        with get_parallel().override(world_group=NS(cpu_group=None)):
            _check_profile(K, NS, plan, pre, real_model, monkeypatch)


def _check_profile(K, NS, plan, pre, real_model, monkeypatch):
    """Per stage: SGLang's budget from a free-after-load figure equals the plan's; SGLang's pool is the
    smallest token count over the stages (``_apply_token_constraints`` all-reduces the MIN)."""
    tokens = []
    for r in plan.ranks:
        free_after_load = pre - r.weight_bytes - r.reserves["nccl"]
        monkeypatch.setattr(K, "get_available_gpu_memory", lambda *a, _f=free_after_load, **k: _f / 2**30)
        fake = NS(device="cuda", gpu_id=0, mambaish_config=None, model_config=NS(is_multimodal=False),
                  post_capture_kv_active=False)
        theirs = K.KVCacheConfigurator._profile_available_bytes(fake, pre / 2**30)
        ours = free_after_load - pre * (1 - 0.85)
        assert abs(theirs - ours) <= 1, f"stage {r.rank}: budget {ours} != SGLang's {theirs}"
        kv = P.kv_model(real_model.config, range(r.first_layer, r.first_layer + r.layers), swa_ratio=0.05,
                        max_running_requests=16, speculative=False)
        tokens.append(P.pool_tokens(theirs, kv))
    assert plan.sglang_pool_tokens == min(tokens), f"SGLang's pool {min(tokens)} != plan {plan.sglang_pool_tokens}"


# ----------------------------------------------------------------------------- the native checkpoint


@pytest.fixture(scope="module")
def native_real(tmp_path_factory):
    return write_headers_only(tmp_path_factory.mktemp("plan") / "native_real", native=True)


@pytest.mark.parametrize("gpus,mem", [(12, 24), (8, 24)])
def test_native_stage_weights_match_an_independent_sum_over_the_headers(native_real, gpus, mem):
    """FP8 dense weights keep one byte, their block scales become Marlin's BF16 group scales, wo_a
    BF16, MXFP4 codes and E8M0 scales keep their bytes (the release's widths need no padding)."""
    model = P.load_model(native_real)
    assert model.kind == "native", f"kind {model.kind}"
    headers = raw_headers(native_real)
    assert {d for d, _ in headers.values()} >= {"F8_E4M3", "F8_E8M0", "I8"}, "native dtypes in the headers"
    config = json.loads((native_real / "config.json").read_text())
    plan = P.make_plan(model, gpus, mem)
    assert plan.kind == "native" and "native checkpoint" in P.format_table(plan), "the table names the format"
    start = 0
    for r in plan.ranks:
        want = expected_stage_weights(config, headers, start, start + r.layers, r.rank == 0, r.rank == plan.pp - 1,
                                      plan.settings.context_length)
        assert r.weight_bytes == want, f"{gpus}x{mem} stage {r.rank}: plan {r.weight_bytes} != headers {want}"
        start += r.layers


def test_native_layer_differs_from_dsv4_int_by_the_expert_scales_only(native_real, real_model):
    """Per layer, native minus dsv4_int = the routed experts' scales: E8M0 (1 byte per 32 weights)
    instead of BF16 (2 bytes per 32); everything else is held the same way."""
    native = P.load_model(native_real)
    cfg = native.config
    experts, hidden, inter = cfg["n_routed_experts"], cfg["hidden_size"], cfg["moe_intermediate_size"]
    per_layer = experts * 3 * inter * hidden // 32           # scale elements of w1, w2, w3
    for i in (0, 2, 3, 42):
        n, d = sum(native.units[f"layer.{i}"]), sum(real_model.units[f"layer.{i}"])
        assert d - n == per_layer, f"layer {i}: dsv4_int {d} - native {n} = {d - n}, expected {per_layer}"


def test_native_marlin_padding_is_counted(tmp_path):
    """Below sm_90 Mxfp4MarlinMoEMethod pads the hidden size to a multiple of 256 (and each rank's
    expert width to 128): a hidden size of 384 is held as 512."""
    spec = SynthSpec(hidden=384, moe_inter=128, layers=2, hash_layers=1, experts=4, vocab=512)
    folder = write_headers_only(tmp_path / "pad", spec, native=True)
    model = P.load_model(folder)
    headers = raw_headers(folder)
    padded = unpadded = 0
    for name, (_dtype, shape) in headers.items():
        if name.startswith("layers.0.ffn.experts."):
            rows, cols = shape
            unpadded += rows * cols
            if ".w2." in name:
                padded += 512 * cols                       # hidden rows 384 -> 512
            else:
                padded += rows * cols * 512 // 384         # hidden columns (codes or scales) 384 -> 512
    assert padded > unpadded, "the test shape must pad"
    others = sum(sglang_held(n, d, s, headers) for n, (d, s) in headers.items()
                 if n.startswith("layers.0.") and ".ffn.experts." not in n)
    assert sum(model.units["layer.0"]) == padded + others, (
        f"layer 0 holds {sum(model.units['layer.0'])}, expected {padded + others} (experts padded {padded})")
    plan = P.make_plan(model, 2, 24, tp=2)
    assert any("Marlin pads each rank's expert width 64 to 128" in n for n in map(str, plan.notes)), plan.notes


def test_release_experts_need_no_padding_at_any_tensor_parallel_size(native_real):
    model = P.load_model(native_real)
    for tp in (1, 2, 4, 8):                          # 8 output groups: tp <= 8
        plan = P.make_plan(model, 8 * tp, 80, tp=tp)
        assert not any("pads each rank" in n for n in map(str, plan.notes)), f"tp {tp}: {plan.notes}"


def test_speculative_draft_must_match_what_mtp_holds(real_model):
    """plan refuses the draft the checkpoint's mtp.* cannot give, with the same rule as launch."""
    import dataclasses

    v0731 = dataclasses.replace(real_model, config={**real_model.config, "dspark_block_size": 4})
    with pytest.raises(P.PlanError, match=r"--speculative mtp: this checkpoint \(V4-Flash-0731\) holds a DSpark"):
        P.make_plan(v0731, 12, 24, settings=P.Settings(speculative="mtp"))
    with pytest.raises(P.PlanError, match="--speculative dspark: this checkpoint has no DSpark drafter"):
        P.make_plan(real_model, 4, 80, tp=4, settings=P.Settings(speculative="dspark"))
    one = P.make_plan(v0731, 4, 80, tp=4, settings=P.Settings(speculative="dspark"))
    assert one.pp == 1, f"pp {one.pp}"


def test_rope_tables_at_the_served_length_and_what_they_free(real_model):
    """12 x 24 GB at 65,536 tokens: 24 MiB per RoPE kind instead of SGLang's 384; stage 0 holds both
    kinds (720 MiB freed), every other stage one (360 MiB). Negative control: served at the full
    1,048,576 positions nothing is freed."""
    plan = P.make_plan(real_model, 12, 24)
    line = next(ln for ln in P.format_table(plan).splitlines() if ln.startswith("# RoPE tables:"))
    assert line.startswith("# RoPE tables: 65536 rows per kind, 24 MiB (SGLang alone: 1048576 rows, 384 MiB"), line
    assert line.endswith("freed per stage (MiB): 720," + ",".join(["360"] * 11)), line
    assert plan.to_json()["rope_rows_per_kind"] == 65536, "the JSON carries the rows"
    full = P.make_plan(real_model, 16, 80, settings=P.Settings(context_length=1 << 20, max_running_requests=1))
    line = next(ln for ln in P.format_table(full).splitlines() if ln.startswith("# RoPE tables:"))
    assert line.endswith("(MiB): " + ",".join(["0"] * 16)), line
