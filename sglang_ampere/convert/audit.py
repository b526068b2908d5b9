"""``sglang-ampere audit PATH [--json] [--against SRC]``.

* On a **native** checkpoint: the conversion plan from the safetensors headers alone (no
  tensor data is read, so it answers in seconds on the 157 GB release): tensors per class,
  per-shard bytes in and out, the output size, or the list of problems that ``convert`` would
  refuse.
* On a **dsv4_int** checkpoint: tensors per class (expert INT4, dense INT8 block/channel,
  dense BF16, preserved), missing scales, wrong dtypes/shapes, names the model does not have or
  lacks, index and config consistency. Exit status 1 with the list of problems if any.
* ``--against SRC`` (dsv4_int only): fidelity, SNR in dB per class (min / median / mean over
  all or ``--sample N`` tensors per class) of the dequantized INT values against the native
  dequantized values; preserved tensors must be byte-identical.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

from .. import QUANT_METHOD, rules
from ..inventory import EXPERT, PRESERVED, classify, native_inventory
from ..safetensors_io import (
    CheckpointError,
    ShardHeader,
    TensorInfo,
    list_shards,
    read_header,
    read_tensor,
    read_tensor_bytes,
)
from ..schema import ROUTED_EXPERTS_INT4, ROUTED_EXPERTS_KEY, SchemaError, parse_quantization_config
from .jobs import K_COPY, K_DENSE, K_EXPERT, K_KEEP, make_plan, read_config
from .options import Options

C_EXPERT, C_BLOCK, C_CHANNEL, C_BF16, C_PRESERVED = (
    "expert_int4",
    "dense_int8_block",
    "dense_uint8_channel",
    "dense_bf16",
    "preserved",
)
#: The dense class of each dsv4_int INT8 strategy (see :func:`sglang_ampere.rules.dense_int8_strategy`).
_DENSE_CLASS = {"block": C_BLOCK, "channel": C_CHANNEL}
#: Problems ``format_report`` prints for a human (``--json`` and the report carry them all).
SHOWN_PROBLEMS = 200


# ------------------------------------------------------------------------------------------
# Native: the plan


def audit_native(path: Path) -> tuple[dict, list[str]]:
    report: dict = {"kind": "native", "path": str(path)}
    try:
        plan = make_plan(path, Options())
    except CheckpointError as e:
        return report, list(e.problems)
    counts = {"expert_weight": 0, "expert_scale": 0, "dense_weight": 0, "dense_scale": 0, "preserved": 0}
    for h in plan.headers.values():
        for name in h.tensors:
            r = classify(name)
            key = "preserved" if r.role == PRESERVED else f"{r.role}_{r.part}"
            counts[key] += 1
    report.update({
        "tensors": plan.source_tensor_count(),
        "counts": counts,
        "plan": plan.counts(),
        "shards": [{"name": sp.name, "tensors": len(plan.headers[sp.name].tensors),
                    "bytes": plan.headers[sp.name].file_size, "out_bytes": sp.out_bytes if sp.jobs else 0}
                   for sp in plan.shards],
        "source_bytes": plan.source_bytes,
        "output_bytes": plan.output_bytes,
        "options": plan.options.as_dict(),
    })
    return report, []


# ------------------------------------------------------------------------------------------
# Converted


def _classify_converted(headers: dict[str, ShardHeader], problems: list[str]) -> tuple[dict, dict]:
    first_shard, duplicates = rules.locate_tensors({s: h.tensors for s, h in headers.items()})
    for sname, n, first in duplicates:
        problems.append(f"{sname}: {n}: also stored in {first} (duplicate tensor)")
    infos: dict[str, tuple[str, TensorInfo]] = {n: (s, headers[s].tensors[n]) for n, s in first_shard.items()}
    classes: dict[str, list[str]] = {c: [] for c in (C_EXPERT, C_BLOCK, C_CHANNEL, C_BF16, C_PRESERVED)}
    counts = {"missing_scales": 0, "orphan_scales": 0}
    for n, (sname, info) in sorted(infos.items()):
        r = classify(n)
        where = f"{sname}: {n}"
        if r is None:
            problems.append(f"{where}: unknown tensor name (not part of DeepSeek-V4-Flash)")
            continue
        if r.role == PRESERVED:
            if info.dtype not in rules.PRESERVED_DTYPES:
                problems.append(f"{where}: dtype {info.dtype} is not valid for a preserved tensor")
            else:
                classes[C_PRESERVED].append(n)
            continue
        if r.part == "scale":
            if f"{r.base}.weight" not in infos:
                counts["orphan_scales"] += 1
                problems.append(f"{where}: scale without its weight")
            continue
        s = infos.get(f"{r.base}.scale")
        scale = (s[1].dtype, s[1].shape) if s else None
        shape = info.shape
        if r.role == EXPERT:
            problem = rules.expert_problem(info.dtype, shape, scale)
            if problem == rules.MISSING_SCALE:
                counts["missing_scales"] += 1
                problems.append(f"{where}: missing scale {r.base}.scale")
            elif problem:
                problems.append(f"{where}: {problem}")
            else:
                classes[C_EXPERT].append(n)
        else:
            if info.dtype == "BF16" and scale is None:
                classes[C_BF16].append(n)
                continue
            if info.dtype == rules.NATIVE_DENSE_WEIGHT_DTYPE:
                problems.append(f"{where}: dense weight is still FP8 (not converted)")
                continue
            if scale is None:
                counts["missing_scales"] += 1
                problems.append(f"{where}: missing scale {r.base}.scale")
                continue
            strategy = rules.dense_int8_strategy(info.dtype, shape, scale)
            if strategy is not None:
                classes[_DENSE_CLASS[strategy]].append(n)
            else:
                sinfo = s[1]
                problems.append(f"{where}: dense weight {info.dtype} {list(shape)} with scale {sinfo.dtype} "
                                f"{list(sinfo.shape)} is neither block INT8 nor channel UINT8")
    return {n: v for n, v in infos.items()}, {"classes": classes, **counts}


def _check_config(config: dict, classes: dict, problems: list[str]) -> None:
    qc = config.get("quantization_config") or {}
    if config.get("expert_dtype") != "int4":
        problems.append(
            f"config.json: expert_dtype is {config.get('expert_dtype')!r}, must be 'int4' (loaders would take the "
            "MXFP4 path)"
        )
    if qc.get(ROUTED_EXPERTS_KEY) is None:
        problems.append(f"config.json: quantization_config.{ROUTED_EXPERTS_KEY} is missing; set it to "
                        f"{ROUTED_EXPERTS_INT4!r} or SGLang 0.5.23 takes the INT4 experts for MXFP4")
    try:
        schema = parse_quantization_config(qc)
    except SchemaError as e:
        problems.append(f"config.json: {e}")
        return
    strategy = schema.dense_strategy
    if classes[C_BLOCK] and strategy != "block":
        problems.append(
            f"config.json: linears_w8a16 strategy is {strategy!r} but {len(classes[C_BLOCK])} dense tensors are block "
            "INT8"
        )
    if classes[C_CHANNEL] and strategy != "channel":
        problems.append(
            f"config.json: linears_w8a16 strategy is {strategy!r} but {len(classes[C_CHANNEL])} dense tensors are "
            "channel UINT8"
        )


def _check_index(path: Path, headers: dict[str, ShardHeader], problems: list[str]) -> None:
    ipath = path / "model.safetensors.index.json"
    if not ipath.is_file():
        problems.append("model.safetensors.index.json is missing")
        return
    try:
        index = json.loads(ipath.read_text())
        wm, total = index["weight_map"], index["metadata"]["total_size"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        problems.append(f"model.safetensors.index.json is unreadable ({e})")
        return
    actual = {n: s for s, h in headers.items() for n in h.tensors}
    for n, s in wm.items():
        if actual.get(n) != s:
            problems.append(f"index: {n} is mapped to {s} but is {'in ' + actual[n] if n in actual else 'in no shard'}")
    for n, s in actual.items():
        if n not in wm:
            problems.append(f"index: {n} (in {s}) is not in weight_map")
    real = sum(i.nbytes for h in headers.values() for i in h.tensors.values())
    if total != real:
        problems.append(f"index: metadata.total_size is {total}, the tensors hold {real} bytes")


def _check_inventory(config: dict, infos: dict, classes: dict, problems: list[str]) -> None:
    try:
        expected = native_inventory(config)
    except (KeyError, TypeError, IndexError):
        problems.append("config.json lacks DeepSeek-V4-Flash geometry keys; cannot check the tensor list")
        return
    kept = {n.rsplit(".", 1)[0] for n in classes[C_BF16]}
    for n in expected:
        if n not in infos and not (n.endswith(".scale") and n.rsplit(".", 1)[0] in kept):
            problems.append(f"{n}: missing (the model with this config.json has it)")
    for n in infos:
        if n not in expected and classify(n) is not None:
            problems.append(f"{n}: present but not part of the model this config.json describes")


def audit_converted(path: Path, config: dict, headers: dict[str, ShardHeader]) -> tuple[dict, list[str], dict]:
    problems: list[str] = []
    infos, cls = _classify_converted(headers, problems)
    classes = cls["classes"]
    _check_config(config, classes, problems)
    _check_index(path, headers, problems)
    _check_inventory(config, infos, classes, problems)
    report = {
        "kind": QUANT_METHOD,
        "path": str(path),
        "shards": [{"name": s, "tensors": len(h.tensors), "bytes": h.file_size} for s, h in headers.items()],
        "bytes": sum(h.file_size for h in headers.values()),
        "tensors": len(infos),
        "counts": {c: len(v) for c, v in classes.items()}
        | {"missing_scales": cls["missing_scales"], "orphan_scales": cls["orphan_scales"]},
        "scale_mode": (
            ((config.get("quantization_config") or {}).get("config_groups") or {}).get("experts_w4a16") or {}
        )
        .get("weights", {})
        .get("scale_mode"),
    }
    return report, problems, {"infos": infos, "classes": classes}


# ------------------------------------------------------------------------------------------
# Fidelity against the native source

def _load(path: Path, shard: str, info: TensorInfo):
    return read_tensor(path / shard, info)


def _sample(names: list[str], n: int) -> list[str]:
    names = sorted(names)
    if n <= 0 or len(names) <= n:
        return names
    return [names[round(i * (len(names) - 1) / (n - 1))] if n > 1 else names[0] for i in range(n)]


def _snr(ref, got) -> float:
    sig = float((ref.double() ** 2).sum())
    noise = float(((ref.double() - got.double()) ** 2).sum())
    return math.inf if noise == 0 else (10 * math.log10(sig / noise) if sig > 0 else -math.inf)


def fidelity(path: Path, src: Path, state: dict, sample: int, problems: list[str]) -> dict:
    from ..formats import (
        fp8_block_dequantize,
        int4_group_dequantize,
        int8_block_dequantize,
        mxfp4_dequantize,
        uint8_channel_dequantize,
    )
    from ..formats.errors import FormatError

    src_headers = {p.name: read_header(p) for p in list_shards(src)}
    src_where = {n: (s, i) for s, h in src_headers.items() for n, i in h.tensors.items()}
    infos = state["infos"]
    out: dict = {}
    for cls, names in state["classes"].items():
        chosen = _sample(names, sample)
        snrs, identical = [], 0
        for n in chosen:
            base = n.rsplit(".", 1)[0]
            if n not in src_where:
                problems.append(f"--against: {n} is not in {src}")
                continue
            try:
                if cls == C_PRESERVED:
                    a = read_tensor_bytes(src / src_where[n][0], src_where[n][1])
                    b = read_tensor_bytes(path / infos[n][0], infos[n][1])
                    if a == b:
                        identical += 1
                    else:
                        problems.append(f"{n}: preserved tensor differs from the source")
                    continue
                sw, ss = src_where[n], src_where.get(f"{base}.scale")
                if ss is None:
                    problems.append(f"--against: {base}.scale is not in {src}")
                    continue
                w_src, s_src = _load(src, *sw), _load(src, *ss)
                w_out = _load(path, *infos[n])
                if cls == C_EXPERT:
                    ref = mxfp4_dequantize(w_src, s_src, n)
                    got = int4_group_dequantize(w_out, _load(path, *infos[f"{base}.scale"]), n)
                else:
                    ref = fp8_block_dequantize(w_src, s_src, n)
                    if cls == C_BLOCK:
                        got = int8_block_dequantize(w_out, _load(path, *infos[f"{base}.scale"]), n)
                    elif cls == C_CHANNEL:
                        got = uint8_channel_dequantize(w_out, _load(path, *infos[f"{base}.scale"]), n)
                    else:
                        got = w_out.float()
                if tuple(ref.shape) != tuple(got.shape):
                    problems.append(f"{n}: shape {list(got.shape)} differs from the source's {list(ref.shape)}")
                    continue
                snrs.append(_snr(ref, got))
            except (FormatError, CheckpointError) as e:
                problems.append(f"--against: {e}")
        entry: dict = {"tensors": len(chosen), "of": len(names)}
        if cls == C_PRESERVED:
            entry["identical"] = identical
        elif snrs:
            finite = [s for s in snrs if math.isfinite(s)]
            entry.update({"snr_db_min": min(snrs), "snr_db_median": statistics.median(snrs),
                          "snr_db_mean": statistics.fmean(finite) if finite else math.inf})
        out[cls] = entry
    return out


# ------------------------------------------------------------------------------------------
# Entry points


def _verify_manifest(path: Path, headers: dict[str, ShardHeader], problems: list[str]) -> int:
    """Re-hash every shard against the SHA-256 that ``convert`` recorded (reads all data)."""
    from .manifest import ManifestError, load_manifest
    from .safetensors_out import sha256_file

    try:
        manifest = load_manifest(path)
    except ManifestError as e:
        problems.append(str(e))
        return 0
    if manifest is None:
        problems.append(
            "--verify: no sglang-ampere-convert.json in this checkpoint (not written by `sglang-ampere convert`)"
        )
        return 0
    ok = 0
    for name in headers:
        entry = manifest.shards.get(name)
        if entry is None:
            problems.append(f"--verify: {name} is not in the manifest")
        elif sha256_file(path / name) != entry["sha256"]:
            problems.append(
                f"--verify: {name} does not match its recorded SHA-256 (damaged; re-run convert to redo it)"
            )
        else:
            ok += 1
    return ok


def audit(path, against=None, sample: int = 64, verify: bool = False) -> tuple[dict, list[str]]:
    """Audit a native or dsv4_int checkpoint; returns (report, problems)."""
    path = Path(path)
    if not path.is_dir():
        return {"kind": "unknown", "path": str(path)}, [f"{path} is not a folder"]
    try:
        config = read_config(path)
    except CheckpointError as e:
        return {"kind": "unknown", "path": str(path)}, [str(e)]
    if (config.get("quantization_config") or {}).get("quant_method") != QUANT_METHOD:
        if against is not None:
            return {"kind": "native", "path": str(path)}, [
                "--against needs a dsv4_int checkpoint as PATH (this one is native)"
            ]
        return audit_native(path)
    try:
        shards = list_shards(path)
        if not shards:
            raise CheckpointError(f"{path}: no *.safetensors shards found")
        headers = {p.name: read_header(p) for p in shards}
    except CheckpointError as e:
        return {"kind": QUANT_METHOD, "path": str(path)}, list(e.problems)
    report, problems, state = audit_converted(path, config, headers)
    if verify:
        report["verified_shards"] = _verify_manifest(path, headers, problems)
    if against is not None:
        report["against"] = str(against)
        report["fidelity"] = fidelity(path, Path(against), state, sample, problems)
    return report, problems


def _gb(n: int) -> str:
    return f"{n / 1e9:.3f} GB"


def format_report(report: dict, problems: list[str]) -> str:
    lines = []
    kind = report.get("kind")
    if kind == "native" and "counts" in report:
        c, p = report["counts"], report["plan"]
        lines.append(
            f"{report['path']}: native DeepSeek-V4-Flash checkpoint, {report['tensors']} tensors in "
            f"{len(report['shards'])} shard(s), {_gb(report['source_bytes'])}"
        )
        lines.append(
            f"  routed experts MXFP4: {c['expert_weight']} weights + {c['expert_scale']} E8M0 scales -> INT4 uint4b8 "
            "+ BF16 g32"
        )
        lines.append(
            f"  dense FP8:            {c['dense_weight']} weights + {c['dense_scale']} block scales -> INT8 W8A16 "
            "(block)"
        )
        lines.append(f"  preserved:            {c['preserved']} tensors (copied byte for byte)")
        lines.append(
            f"  plan: {p[K_EXPERT]} expert pairs, {p[K_DENSE]} dense pairs, {p[K_KEEP]} dense kept BF16, {p[K_COPY]} "
            "copies"
        )
        lines.append(f"  output size: {_gb(report['output_bytes'])} (source {_gb(report['source_bytes'])})")
        lines.append("  shards (in -> out):")
        for s in report["shards"]:
            lines.append(f"    {s['name']}: {s['tensors']} tensors, {_gb(s['bytes'])} -> {_gb(s['out_bytes'])}")
    elif kind == QUANT_METHOD:
        lines.append(f"{report['path']}: dsv4_int checkpoint")
        if "counts" in report:
            c = report["counts"]
            lines.append(
                f"  {report['tensors']} tensors in {len(report['shards'])} shard(s), {_gb(report['bytes'])}; expert "
                f"scale mode {report.get('scale_mode')}"
            )
            lines.append(
                f"  expert INT4 pairs: {c[C_EXPERT]}   dense INT8 block: {c[C_BLOCK]}   dense UINT8 channel: "
                f"{c[C_CHANNEL]}   "
                f"dense BF16: {c[C_BF16]}   preserved: {c[C_PRESERVED]}   missing scales: {c['missing_scales']}"
            )
        if "verified_shards" in report:
            lines.append(
                f"  verified: {report['verified_shards']}/{len(report['shards'])} shard(s) match their recorded SHA-256"
            )
        for cls, f in (report.get("fidelity") or {}).items():
            if cls == C_PRESERVED:
                lines.append(f"  fidelity {cls}: {f['identical']}/{f['tensors']} byte-identical to the source")
            elif "snr_db_min" in f:
                lines.append(
                    f"  fidelity {cls}: SNR dB min {f['snr_db_min']:.2f} / median {f['snr_db_median']:.2f} / mean "
                    f"{f['snr_db_mean']:.2f} "
                    f"over {f['tensors']} of {f['of']} tensors"
                )
    else:
        lines.append(f"{report.get('path')}: not a checkpoint")
    if problems:
        lines.append(f"PROBLEMS ({len(problems)}):")
        lines.extend(f"  - {p}" for p in problems[:SHOWN_PROBLEMS])
        if len(problems) > SHOWN_PROBLEMS:
            lines.append(f"  ... and {len(problems) - SHOWN_PROBLEMS} more (use --json for all)")
    else:
        lines.append("OK: no problems found")
    return "\n".join(lines)
