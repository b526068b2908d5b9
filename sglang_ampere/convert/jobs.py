"""The conversion plan: every tensor of a native checkpoint classified from its name, dtype
and shape (headers only), and the exact output each shard will get.

Roles come from :func:`sglang_ampere.inventory.classify` (one place for the rule); this module
checks that the dtypes and shapes on disk fit the role, pairs each ``.weight`` with its
``.scale``, and refuses — before anything is written, with the tensor and the shard named —
unknown names, unknown or wrong dtypes, a weight without its scale, a scale without its
weight, a scale shape that does not fit its weight, and duplicated names.

One output shard per input shard, same file name. A quantized pair is emitted in the shard
that holds its weight (where its scale lived does not matter).
"""

from __future__ import annotations

import fnmatch
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .. import QUANT_METHOD, rules
from ..inventory import EXPERT, PRESERVED, classify
from ..safetensors_io import CheckpointError, OutTensor, ShardHeader, TensorInfo, file_size, list_shards, read_header
from .options import Options

#: The dtype rules live in :mod:`sglang_ampere.rules`; re-exported for the converter's readers.
PRESERVED_DTYPES = rules.PRESERVED_DTYPES
#: How many problems the error message lists (``CheckpointError.problems`` has them all).
SHOWN_PROBLEMS = 25

# Job kinds (also the class names ``audit`` reports).
K_EXPERT, K_DENSE, K_KEEP, K_COPY = "expert_int4", "dense_int8", "dense_bf16", "preserved"


@dataclass(frozen=True)
class Job:
    kind: str                        # K_EXPERT | K_DENSE | K_KEEP | K_COPY
    name: str                        # source weight name (or the preserved tensor's name)
    weight: TensorInfo
    weight_shard: str
    scale: TensorInfo | None = None
    scale_shard: str | None = None
    outputs: tuple[OutTensor, ...] = ()

    @property
    def in_bytes(self) -> int:
        return self.weight.nbytes + (self.scale.nbytes if self.scale else 0)


@dataclass
class ShardPlan:
    name: str                        # output file name (= the input shard's name)
    jobs: list[Job] = field(default_factory=list)

    @property
    def outputs(self) -> list[OutTensor]:
        return [o for j in self.jobs for o in j.outputs]

    @property
    def sources(self) -> list[str]:
        s = {self.name}
        s.update(j.scale_shard for j in self.jobs if j.scale_shard)
        return sorted(s)

    @property
    def in_bytes(self) -> int:
        return sum(j.in_bytes for j in self.jobs)

    @property
    def out_bytes(self) -> int:
        return file_size(self.outputs)


@dataclass
class Plan:
    src: Path
    options: Options
    headers: dict[str, ShardHeader]
    shards: list[ShardPlan]
    config: dict

    def counts(self) -> dict[str, int]:
        c = Counter(j.kind for s in self.shards for j in s.jobs)
        return {k: c.get(k, 0) for k in (K_EXPERT, K_DENSE, K_KEEP, K_COPY)}

    @property
    def source_bytes(self) -> int:
        return sum(h.file_size for h in self.headers.values())

    @property
    def output_bytes(self) -> int:
        return sum(s.out_bytes for s in self.shards if s.jobs)

    def source_tensor_count(self) -> int:
        return sum(len(h.tensors) for h in self.headers.values())


class _Problems:
    def __init__(self):
        self.items: list[str] = []

    def add(self, shard: str, tensor: str | None, msg: str) -> None:
        self.items.append(f"{shard}: {tensor}: {msg}" if tensor else f"{shard}: {msg}")

    def raise_if_any(self, src: Path) -> None:
        if not self.items:
            return
        shown = self.items[:SHOWN_PROBLEMS]
        more = f"\n  ... and {len(self.items) - len(shown)} more" if len(self.items) > len(shown) else ""
        raise CheckpointError(
            f"{src} cannot be converted: {len(self.items)} problem(s), nothing was written:\n  - "
            + "\n  - ".join(shown) + more
            + "\nThis converter takes the native DeepSeek-V4-Flash release (MXFP4 experts, FP8 dense); "
              "fix or re-download the shards named above.", problems=self.items)


def read_config(src: Path) -> dict:
    path = Path(src) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{src}: no config.json; point SRC at the folder of a DeepSeek-V4-Flash checkpoint")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: cannot read it as JSON ({e})") from e


def read_headers(src: Path) -> dict[str, ShardHeader]:
    shards = list_shards(src)
    if not shards:
        raise CheckpointError(f"{src}: no *.safetensors shards found")
    return {p.name: read_header(p) for p in shards}


def make_plan(src: Path, options: Options, headers: dict[str, ShardHeader] | None = None) -> Plan:
    """Classify every tensor from the headers alone; raise CheckpointError listing every problem."""
    src = Path(src)
    options.validate()
    config = read_config(src)
    qm = (config.get("quantization_config") or {}).get("quant_method")
    if qm == QUANT_METHOD:
        raise CheckpointError(f"{src} is already a dsv4_int checkpoint (config.json quant_method); "
                              "convert the native release instead, or run `sglang-ampere audit` on it")
    headers = read_headers(src) if headers is None else headers
    problems = _Problems()

    where, duplicates = rules.locate_tensors({s: h.tensors for s, h in headers.items()})
    for sname, tname, first in duplicates:
        problems.add(sname, tname, f"also stored in {first} (duplicate tensor)")
    infos = {n: headers[s].tensors[n] for n, s in where.items()}

    shard_plans = {s: ShardPlan(s) for s in headers}
    pairs: dict[str, dict[str, str]] = {}    # base -> {"weight": name, "scale": name}
    roles = {}
    kept_any = {p: False for p in options.keep_bf16}
    for sname, h in headers.items():
        for tname, info in sorted(h.tensors.items(), key=lambda kv: kv[1].begin):
            if where.get(tname) != sname:
                continue
            role = classify(tname)
            if role is None:
                problems.add(sname, tname, "unknown tensor name (not part of DeepSeek-V4-Flash)")
                continue
            roles[tname] = role
            if role.role == PRESERVED:
                if info.dtype not in PRESERVED_DTYPES:
                    problems.add(sname, tname, f"dtype {info.dtype} is not valid for a preserved tensor "
                                 f"(expected one of {', '.join(PRESERVED_DTYPES)})")
                    continue
                shard_plans[sname].jobs.append(
                    Job(K_COPY, tname, info, sname, outputs=(OutTensor(tname, info.dtype, info.shape),))
                )
            else:
                pairs.setdefault(role.base, {})[role.part] = tname

    for base, pair in pairs.items():
        w, s = pair.get("weight"), pair.get("scale")
        if w is None:
            problems.add(where[s], s, f"scale without its weight ({base}.weight is missing)")
            continue
        if s is None:
            problems.add(where[w], w, f"weight without its scale ({base}.scale is missing)")
            continue
        wi, si, role = infos[w], infos[s], roles[w].role
        wshard, sshard = where[w], where[s]
        if role == EXPERT:
            job = _expert_job(w, wi, wshard, s, si, sshard, problems)
        else:
            job = _dense_job(base, w, wi, wshard, s, si, sshard, options, problems)
            if job is not None and job.kind == K_KEEP:
                for p in options.keep_bf16:
                    if fnmatch.fnmatchcase(base, p):
                        kept_any[p] = True
        if job is not None:
            shard_plans[wshard].jobs.append(job)

    for p, hit in kept_any.items():
        if not hit:
            problems.add("options", None, f"--keep-bf16 {p!r} matches no dense module (e.g. 'layers.*.attn.wo_a')")
    problems.raise_if_any(src)
    # Keep each shard's jobs in source order (preserved and pairs interleaved as on disk).
    for sp in shard_plans.values():
        sp.jobs.sort(key=lambda j: j.weight.begin)
    return Plan(src, options, headers, [shard_plans[s] for s in headers], config)


def _pair_problem(check, w, wi, wshard, s, si, sshard, problems) -> bool:
    """Report a native pair's problem (per :mod:`sglang_ampere.rules`) on the tensor it concerns."""
    found = check(wi.dtype, wi.shape, si.dtype, si.shape, weight_name=w)
    if found is None:
        return False
    part, reason = found
    if part == "scale":
        problems.add(sshard, s, reason)
    else:
        problems.add(wshard, w, reason)
    return True


def _expert_job(w, wi, wshard, s, si, sshard, problems) -> Job | None:
    if _pair_problem(rules.native_expert_problem, w, wi, wshard, s, si, sshard, problems):
        return None
    outs = (OutTensor(w, rules.EXPERT_WEIGHT_DTYPE, tuple(wi.shape)),
            OutTensor(s, rules.SCALE_DTYPE, rules.expert_scale_shape(wi.shape)))
    return Job(K_EXPERT, w, wi, wshard, si, sshard, outs)


def _dense_job(base, w, wi, wshard, s, si, sshard, options: Options, problems) -> Job | None:
    if _pair_problem(rules.native_dense_problem, w, wi, wshard, s, si, sshard, problems):
        return None
    shape = tuple(wi.shape)
    if options.keeps_bf16(base):
        return Job(K_KEEP, w, wi, wshard, si, sshard, (OutTensor(w, "BF16", shape),))
    strategy = options.dense_mode
    outs = (OutTensor(w, rules.DENSE_INT8_DTYPES[strategy], shape),
            OutTensor(s, rules.SCALE_DTYPE, rules.dense_scale_shape(strategy, shape)))
    return Job(K_DENSE, w, wi, wshard, si, sshard, outs)
