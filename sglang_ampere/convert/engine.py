"""Run a conversion: check paths, plan, resume from the manifest, convert shards (in this
process or ``workers`` processes), then write config.json, the index and the other files.

Memory: tensors are streamed one at a time (dense ones in row chunks, preserved ones in 64 MB
pieces) straight into the output file, so the peak is about one tensor plus a constant,
whatever the shard or checkpoint size.
"""

from __future__ import annotations

import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..formats.errors import FormatError
from ..safetensors_io import CheckpointError, read_tensor, torch_dtype
from .config import dsv4_int_config, dumps, index_json, index_sha256, provenance
from .jobs import K_COPY, K_DENSE, K_EXPERT, K_KEEP, Plan, ShardPlan, make_plan
from .manifest import MANIFEST_NAME, Manifest, ManifestError, load_manifest
from .options import Options
from .safetensors_out import ShardWriter, sha256_file, temp_path, write_atomic

COPY_CHUNK = 64 << 20
#: Files of the source that are rewritten, not copied.
REWRITTEN = {"config.json", "model.safetensors.index.json"}


@dataclass
class ClassStats:
    tensors: int = 0
    signal: float = 0.0
    noise: float = 0.0
    noise_mse: float = 0.0

    def add(self, tensors=0, signal=0.0, noise=0.0, noise_mse=0.0):
        self.tensors += tensors
        self.signal += signal
        self.noise += noise
        self.noise_mse += noise_mse

    def snr_db(self, noise=None) -> float:
        n = self.noise if noise is None else noise
        return math.inf if n == 0 else 10 * math.log10(self.signal / n)


@dataclass
class Summary:
    dst: Path
    plan: Plan
    converted: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    stats: dict[str, ClassStats] = field(default_factory=dict)
    seconds: float = 0.0


def check_paths(src: Path, dst: Path) -> tuple[Path, Path]:
    src, dst = Path(src).resolve(), Path(dst).resolve()
    if not src.is_dir():
        raise CheckpointError(f"{src} is not a folder; SRC must be the folder of a native checkpoint")
    if dst == src:
        raise CheckpointError(
            f"destination {dst} is the source itself; choose a new folder for the dsv4_int checkpoint"
        )
    if src in dst.parents:
        raise CheckpointError(f"destination {dst} is inside the source {src}; choose a folder outside it")
    if dst in src.parents:
        raise CheckpointError(
            f"the source {src} is inside the destination {dst}; choose a destination that does not contain it"
        )
    if dst.exists() and not dst.is_dir():
        raise CheckpointError(f"destination {dst} exists and is not a folder")
    return src, dst


def _source_ids(plan: Plan, sp: ShardPlan) -> dict:
    return {s: plan.headers[s].identity() for s in sp.sources}


def _shard_is_done(dst: Path, entry: dict | None, want_sources: dict) -> bool:
    if not entry or entry.get("sources") != want_sources:
        return False
    p = dst / entry.get("name", "")
    if not p.is_file() or p.stat().st_size != entry.get("bytes"):
        return False
    return sha256_file(p) == entry.get("sha256")


# ------------------------------------------------------------------------------------------
# One shard (runs in a worker process or in-process)


def convert_shard(src: Path, dst: Path, sp: ShardPlan, options: Options, device: str = "cpu", report=None,
                  expert_kernel: str = "auto") -> dict:
    """Convert one planned shard; returns {"name", "sha256", "bytes", "stats"}."""
    import torch

    from .dense import convert_dense
    from .experts import ExpertStats, requantize

    report = report or (lambda n: None)
    files = {}

    def fh(shard):
        if shard not in files:
            files[shard] = open(src / shard, "rb")
        return files[shard]

    def tensor(info, shard, dtype):
        return read_tensor(src / shard, info, fh(shard), dtype)

    def put(writer, name, t):
        writer.write(name, t.contiguous().cpu().view(torch.uint8).numpy())

    stats: dict[str, list] = {}
    writer = ShardWriter(dst / sp.name, sp.outputs)
    try:
        for job in sp.jobs:
            w = job.weight
            if job.kind == K_COPY:
                f = fh(job.weight_shard)
                f.seek(w.begin)
                left = w.nbytes
                while left:
                    chunk = f.read(min(COPY_CHUNK, left))
                    if not chunk:
                        raise CheckpointError(
                            f"shard {job.weight_shard}: tensor {job.name}: file ended early (truncated)"
                        )
                    writer.write(job.name, chunk)
                    left -= len(chunk)
                stats.setdefault(K_COPY, [0, 0.0, 0.0, 0.0])[0] += 1
            elif job.kind == K_EXPERT:
                packed = tensor(w, job.weight_shard, torch.uint8).to(device)
                scale = tensor(job.scale, job.scale_shard, torch.uint8).to(device)
                st = ExpertStats()
                q, s = requantize(packed, scale, options.expert_mode, job.name, stats=st, kernel=expert_kernel)
                put(writer, job.outputs[0].name, q)
                put(writer, job.outputs[1].name, s)
                acc = stats.setdefault(K_EXPERT, [0, 0.0, 0.0, 0.0])
                acc[0] += 1
                acc[1] += st.signal
                acc[2] += st.noise
                acc[3] += st.noise_mse
            else:  # K_DENSE / K_KEEP
                wt = tensor(w, job.weight_shard, torch.float8_e4m3fn).to(device)
                sdt = torch_dtype(job.scale.dtype)
                sc = tensor(job.scale, job.scale_shard, sdt).to(device)
                mode = "bf16" if job.kind == K_KEEP else options.dense_mode
                sn: list = []
                for part, t in convert_dense(wt, sc, mode, job.name, stats=sn):
                    put(writer, job.outputs[0 if part == "weight" else 1].name, t)
                acc = stats.setdefault(job.kind, [0, 0.0, 0.0, 0.0])
                acc[0] += 1
                acc[1] += sn[0]
                acc[2] += sn[1]
            report(job.in_bytes)
        sha = writer.finish()
    except FormatError as e:
        writer.abort()
        # The codec names the tensor; the user also needs the shard.
        raise CheckpointError(f"shard {job.weight_shard}: {e}") from None
    except BaseException:
        writer.abort()
        raise
    finally:
        for f in files.values():
            f.close()
    return {"name": sp.name, "sha256": sha, "bytes": writer.bytes, "stats": stats}


_QUEUE = None


def _worker_init(queue, threads):
    global _QUEUE
    _QUEUE = queue
    import torch

    torch.set_num_threads(threads)


def _worker_run(src, dst, sp, options, device, expert_kernel):
    return convert_shard(src, dst, sp, options, device, report=lambda n: _QUEUE.put(n), expert_kernel=expert_kernel)


# ------------------------------------------------------------------------------------------
# The whole run


def convert(src, dst, options: Options = Options(), workers: int = 1, device: str = "cpu",
            overwrite: bool = False, progress: bool = True, log=None, expert_kernel: str = "auto") -> Summary:
    """Convert native SRC into dsv4_int DST (resuming DST if it is an unfinished conversion)."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    t0 = time.time()
    src, dst = check_paths(src, dst)
    if workers < 1:
        raise ValueError("--workers must be at least 1")
    if device != "cpu":
        _check_device(device)
    if expert_kernel == "c":
        from .native_kernel import load

        if device != "cpu" or load() is None:
            raise CheckpointError("--expert-kernel c needs --device cpu and a working C compiler (cc/gcc); "
                                  "use --expert-kernel torch")
    plan = make_plan(src, options)   # refuses bad inputs before anything is written

    manifest = None
    if dst.exists() and any(dst.iterdir()):
        try:
            manifest = load_manifest(dst)
        except ManifestError:
            if not overwrite:
                raise
            manifest = None
        if manifest is None and not overwrite:
            raise CheckpointError(f"destination {dst} is not empty and was not made by `sglang-ampere convert`; "
                                  "choose an empty or new folder, or pass --overwrite to write into it anyway")
        if manifest is not None and manifest.options != options.as_dict():
            if not overwrite:
                raise CheckpointError(
                    f"destination {dst} was converted with different options {manifest.options}, "
                    f"not {options.as_dict()}; pass the same options to resume it, or --overwrite to redo it")
            manifest = None
        if overwrite:
            manifest = None
    created = not dst.exists()
    was_empty = created or not any(dst.iterdir())
    dst.mkdir(parents=True, exist_ok=True)
    summary = Summary(dst, plan)
    try:
        for p in dst.iterdir():           # temp files of an interrupted run
            if p.name.startswith(".") and p.name.endswith(".partial"):
                p.unlink()
        old = manifest.shards if manifest else {}
        new = Manifest(options.as_dict(), {"path": str(src), "index_sha256": index_sha256(src)})
        todo = []
        planned = [sp for sp in plan.shards if sp.jobs]
        if old:
            log(f"verifying the {len(old)} shard(s) an earlier run recorded in {dst} (SHA-256) ...")
        for sp in planned:
            entry = old.get(sp.name)
            if _shard_is_done(dst, entry, _source_ids(plan, sp)):
                new.shards[sp.name] = entry
                summary.skipped.append(sp.name)
            else:
                todo.append(sp)
        keep = {sp.name for sp in planned}
        for name in old:                   # shards an earlier run wrote that the source no longer has
            if name not in keep:
                (dst / name).unlink(missing_ok=True)
        if overwrite:                      # shards of an earlier, different conversion
            for p in dst.glob("*.safetensors"):
                if p.name not in keep:
                    p.unlink()
        new.save(dst)
        if summary.skipped:
            log(f"resuming {dst}: {len(summary.skipped)} shard(s) verified and kept, {len(todo)} to convert")
        _run_shards(src, dst, plan, todo, options, workers, device, progress, new, summary, expert_kernel)
        _finish(src, dst, plan, options, new)
    except BaseException as e:
        for p in dst.glob(".*.partial"):
            p.unlink(missing_ok=True)
        # A refused input (damaged data found while converting) leaves nothing behind in a
        # destination this run created. An interruption (Ctrl-C, disk full, a crash) keeps the
        # finished, recorded shards so that re-running the command resumes.
        if isinstance(e, (FormatError, CheckpointError)):
            if created:
                shutil.rmtree(dst, ignore_errors=True)
            elif was_empty:               # the user's empty folder: empty it again, keep it
                for p in dst.iterdir():
                    shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        raise
    summary.seconds = time.time() - t0
    return summary


def _check_device(device: str) -> None:
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise CheckpointError(f"--device {device}: no CUDA device is available here; use --device cpu")


def _record(new: Manifest, dst: Path, plan: Plan, sp: ShardPlan, res: dict, summary: Summary) -> None:
    new.shards[sp.name] = {
        "name": sp.name,
        "sources": _source_ids(plan, sp),
        "sha256": res["sha256"],
        "bytes": res["bytes"],
    }
    new.save(dst)
    summary.converted.append(sp.name)
    for kind, (n, sig, noise, noise_mse) in res["stats"].items():
        summary.stats.setdefault(kind, ClassStats()).add(n, sig, noise, noise_mse)


def _run_shards(src, dst, plan, todo, options, workers, device, progress, new, summary, expert_kernel) -> None:
    from tqdm import tqdm

    total = sum(sp.in_bytes for sp in todo)
    bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="convert",
               disable=not progress or not todo, file=sys.stderr, smoothing=0.1)
    try:
        if workers == 1 or len(todo) <= 1:
            import torch

            if device == "cpu":
                torch.set_num_threads(1 if workers == 1 else min(workers, os.cpu_count() or 1))
            for sp in todo:
                res = convert_shard(src, dst, sp, options, device, report=bar.update, expert_kernel=expert_kernel)
                _record(new, dst, plan, sp, res, summary)
            return
        import multiprocessing as mp
        import queue as queue_mod
        from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

        ctx = mp.get_context("spawn")
        q = ctx.Queue()
        n = min(workers, len(todo))
        # One torch thread per worker process: the workers are the parallelism (and two OpenMP
        # threads per process on a busy machine are slower than one).
        with ProcessPoolExecutor(n, mp_context=ctx, initializer=_worker_init, initargs=(q, 1)) as ex:
            futs = {ex.submit(_worker_run, src, dst, sp, options, device, expert_kernel): sp for sp in todo}
            pending = set(futs)
            try:
                while pending:
                    done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                    _drain(q, bar, queue_mod)
                    for f in done:
                        _record(new, dst, plan, futs[f], f.result(), summary)
            except BaseException:
                for f in pending:
                    f.cancel()
                raise
            _drain(q, bar, queue_mod)
    finally:
        bar.close()


def _drain(q, bar, queue_mod) -> None:
    while True:
        try:
            bar.update(q.get_nowait())
        except queue_mod.Empty:
            return


def _finish(src: Path, dst: Path, plan: Plan, options: Options, new: Manifest) -> None:
    weight_map, total = {}, 0
    for sp in plan.shards:
        for o in sp.outputs:
            weight_map[o.name] = sp.name
            total += o.nbytes
    for p in sorted(src.iterdir()):
        if p.name in REWRITTEN or p.suffix == ".safetensors" or p.name.startswith(".") or p.name == MANIFEST_NAME:
            continue
        target = dst / p.name
        if p.is_dir():
            shutil.copytree(p, target, dirs_exist_ok=True)
        elif p.is_file():
            tmp = temp_path(target)
            shutil.copy2(p, tmp)
            os.replace(tmp, target)
    write_atomic(dst / "model.safetensors.index.json", dumps(index_json(weight_map, total)))
    write_atomic(
        dst / "config.json", dumps(dsv4_int_config(plan.config, options, provenance(src, plan.config, options)))
    )
    new.complete = True
    new.save(dst)


def describe(summary: Summary) -> str:
    """Human summary printed by the CLI."""
    plan = summary.plan
    lines = [f"wrote {summary.dst} ({len(summary.converted)} shard(s) converted, {len(summary.skipped)} kept from an "
             f"earlier run) in {summary.seconds:.1f} s; {plan.output_bytes / 1e9:.3f} GB of tensors"]
    names = {K_EXPERT: "routed experts INT4", K_DENSE: f"dense INT8 ({plan.options.dense_mode})",
             K_KEEP: "dense kept BF16", K_COPY: "preserved (copied)"}
    for kind in (K_EXPERT, K_DENSE, K_KEEP, K_COPY):
        st = summary.stats.get(kind)
        if not st or not st.tensors:
            continue
        extra = ""
        if kind in (K_EXPERT, K_DENSE, K_KEEP) and st.signal:
            extra = f", SNR {st.snr_db():.2f} dB"
            if kind == K_EXPERT and plan.options.expert_mode == "optimal":
                mse = st.snr_db(st.noise_mse)
                extra += f" (mse would give {mse:.2f} dB: gain {st.snr_db() - mse:+.3f} dB)"
        lines.append(f"  {names[kind]}: {st.tensors} tensor(s){extra}")
    return "\n".join(lines)
