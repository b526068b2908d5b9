"""``sglang-ampere eval MODEL [--against REF]``: what a conversion costs, in next-token terms.

Runs the reference forward (:mod:`.model`) over a token sequence: one prefill over all but the
last ``--decode N`` tokens, then N single-token decode steps (so the decode caches are
exercised too), all in one pass over the weights (each layer runs the prefill and the decode
steps before the next layer is read: the tokens are known). Row ``t`` of the logits is the
distribution after token ``t``. Reported:

* perplexity ``exp(mean_t -log p(ids[t+1] | ids[..t]))`` over ``t = 0 .. T-2``, for MODEL and REF;
* with ``--against REF`` (typically the native checkpoint MODEL was converted from):
  ``KL(REF || MODEL)_t = sum_v p_ref(v) (log p_ref(v) - log p_model(v))`` per position (float64),
  its mean, 95th percentile and maximum; top-1 agreement (share of positions where both argmax
  agree); and per layer the hidden-state SNR ``10 log10(sum R_ref^2 / sum (R_ref - R_model)^2)``
  over all positions and hc streams of the layer's output.

``--dump-logits FILE`` writes MODEL's logits as safetensors ``logits`` float32 ``[T, vocab]``.
REF's per-layer hidden states are kept (float32, on the CPU) while MODEL runs: about
``T * hc * hidden * 4`` bytes per layer.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import torch

from ..inventory import has_dspark_drafter, native_inventory
from .model import ReferenceModel, new_caches
from .weights import Checkpoint, ReferenceError

DEFAULT_MAX_TOKENS = 4096
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def check_complete(ckpt: Checkpoint, mtp: bool = False) -> None:
    """Every tensor the main model (and the MTP block) needs is present (a BF16-kept dense
    tensor has no .scale)."""
    inv = native_inventory(ckpt.config)
    missing = [n for n in inv if (mtp or not n.startswith("mtp.")) and not n.endswith(".scale") and n not in ckpt.where]
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise ReferenceError(f"{ckpt.path}: missing tensors {missing[:5]}{more}")


def load_tokens(text: Path | None, tokens: Path | None, model_path: Path) -> list[int]:
    if tokens is not None:
        try:
            ids = json.loads(Path(tokens).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise ReferenceError(f"--tokens {tokens}: cannot read a JSON list of token ids ({e})") from e
        if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise ReferenceError(f"--tokens {tokens}: must be a JSON list of integers")
        return ids
    try:
        from tokenizers import Tokenizer
    except ImportError as e:
        raise ReferenceError("--text needs the 'tokenizers' package (pip install tokenizers), or pass --tokens") from e
    tok_file = Path(model_path) / "tokenizer.json"
    if not tok_file.is_file():
        raise ReferenceError(f"{model_path}: no tokenizer.json; pass --tokens FILE.json instead of --text")
    try:
        body = Path(text).read_text(encoding="utf-8")
    except OSError as e:
        raise ReferenceError(f"--text {text}: {e}") from e
    ids = Tokenizer.from_file(str(tok_file)).encode(body, add_special_tokens=False).ids
    tc = Path(model_path) / "tokenizer_config.json"
    cfg = json.loads((Path(model_path) / "config.json").read_text())
    if (
        tc.is_file()
        and json.loads(tc.read_text(encoding="utf-8")).get("add_bos_token")
        and cfg.get("bos_token_id") is not None
    ):
        ids = [int(cfg["bos_token_id"])] + ids
    return ids


class _Run:
    """One model over the sequence: logits [T, V] f32 and (optionally) per-layer hidden states."""

    def __init__(
        self,
        model: ReferenceModel,
        ids: torch.Tensor,
        decode: int,
        keep_hidden: bool = False,
        on_hidden=None,
        bar=None,
        mtp: bool = False,
    ):
        T = ids.numel()
        P = T - decode
        hidden: dict[int, list[torch.Tensor]] = {}

        def hook(i, R):
            if keep_hidden:
                hidden.setdefault(i, []).append(R.float().cpu())
            if on_hidden is not None:
                on_hidden(i, R)

        if bar is not None:
            model.progress = lambda i: bar.update(1)
        caches = new_caches(model.cfg)
        t0 = time.perf_counter()
        chunks = [(0, P)] + [(p, p + 1) for p in range(P, T)]
        self.logits, R = model.forward_chunks(ids, chunks, caches, hidden=hook, return_streams=True)
        self.logits = self.logits.cpu()
        # MTP: from the streams at t and the token t+1, the distribution of token t+2 (one prefill)
        self.mtp_logits = model.mtp(R[:-1], ids[1:], 0, new_caches(model.cfg)).cpu() if mtp else None
        self.seconds = time.perf_counter() - t0
        self.hidden = hidden


def _nll(logits: torch.Tensor, ids: torch.Tensor) -> float:
    lp = torch.log_softmax(logits[:-1].double(), -1)
    return float(-lp.gather(1, ids[1:].view(-1, 1)).mean())


def _kl_top1(ref: torch.Tensor, got: torch.Tensor) -> tuple[torch.Tensor, float]:
    kls = []
    for a in range(0, ref.shape[0], 256):
        p = torch.log_softmax(ref[a : a + 256].double(), -1)
        q = torch.log_softmax(got[a : a + 256].double(), -1)
        kls.append((p.exp() * (p - q)).sum(-1).clamp(min=0))
    agree = float((ref.argmax(-1) == got.argmax(-1)).double().mean())
    return torch.cat(kls), agree


def _snr_db(sig: float, noise: float) -> float:
    if noise == 0:
        return math.inf
    return 10 * math.log10(sig / noise) if sig > 0 else -math.inf


def evaluate(
    model_path,
    ids,
    against=None,
    decode: int = 0,
    dtype: str = "bfloat16",
    device: str = "cpu",
    max_tokens: int = DEFAULT_MAX_TOKENS,
    stream: bool = True,
    progress: bool = False,
    mtp: bool = False,
) -> dict:
    """Run MODEL (and REF) over ``ids``; returns the report (see the module docstring) and logits."""
    if dtype not in DTYPES:
        raise ReferenceError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    ids = torch.as_tensor(list(ids), dtype=torch.long)
    T = ids.numel()
    if T < 2:
        raise ReferenceError(f"need at least 2 tokens to measure anything, got {T}")
    if T > max_tokens:
        raise ReferenceError(f"{T} tokens is over the cap of {max_tokens} (--max-tokens)")
    if not 0 <= decode < T:
        raise ReferenceError(f"--decode {decode} must be between 0 and the number of tokens - 1 ({T - 1})")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ReferenceError(f"--device {device!r}: {e}") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ReferenceError(f"--device {device}: no CUDA device is available here (use --device cpu)")
    cks = [Checkpoint(model_path)] + ([Checkpoint(against)] if against is not None else [])
    for ck in cks:
        if mtp and has_dspark_drafter(ck.config):
            raise ReferenceError(
                f"--mtp: {ck.path} is a DeepSeek-V4-Flash-0731 checkpoint: mtp.* holds a DSpark drafter "
                "(blocks fed by target hidden states, with a Markov head), which the reference does not "
                "model. Drop --mtp to evaluate the main model (the drafter is ignored)."
            )
        check_complete(ck, mtp)
        if mtp and int(ck.config.get("num_nextn_predict_layers", 0)) < 1:
            raise ReferenceError(f"--mtp: {ck.path} has no MTP layer (num_nextn_predict_layers is 0)")
    if mtp and T < 3:
        raise ReferenceError("--mtp needs at least 3 tokens")
    if against is not None and cks[0].config["num_hidden_layers"] != cks[1].config["num_hidden_layers"]:
        raise ReferenceError(
            f"MODEL has {cks[0].config['num_hidden_layers']} layers, REF {cks[1].config['num_hidden_layers']}: "
            "not the same model"
        )
    if against is not None and cks[0].config["vocab_size"] != cks[1].config["vocab_size"]:
        raise ReferenceError(
            f"MODEL vocab_size {cks[0].config['vocab_size']} differs from REF's {cks[1].config['vocab_size']}"
        )
    models = [ReferenceModel(ck, DTYPES[dtype], device, stream=stream) for ck in cks]
    for m in models:
        m.check_ids(ids)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=sum(m.cfg.layers for m in models), unit="layer", desc="eval", file=sys.stderr)
    report: dict = {"tokens": T, "prefill": T - decode, "decode": decode, "dtype": dtype, "device": device}
    try:
        ref_run = None
        if against is not None:
            ref_run = _Run(models[1], ids, decode, keep_hidden=True, bar=bar, mtp=mtp)
        sums: dict[int, list[float]] = {}
        counters: dict[int, int] = {}

        def compare(i, R):
            if ref_run is None:
                return
            k = counters.get(i, 0)
            counters[i] = k + 1
            r = ref_run.hidden[i][k].double()
            s = sums.setdefault(i, [0.0, 0.0])
            s[0] += float((r**2).sum())
            s[1] += float(((r - R.double().cpu()) ** 2).sum())

        run = _Run(models[0], ids, decode, on_hidden=compare, bar=bar, mtp=mtp)
    finally:
        if bar is not None:
            bar.close()
    ck = cks[0]
    report["model"] = {
        "path": str(ck.path),
        "kind": ck.kind,
        "ppl": math.exp(_nll(run.logits, ids)),
        "seconds": run.seconds,
        "bytes_read": ck.bytes_read,
    }
    if ref_run is not None:
        kl, top1 = _kl_top1(ref_run.logits, run.logits)
        report["against"] = {
            "path": str(cks[1].path),
            "kind": cks[1].kind,
            "ppl": math.exp(_nll(ref_run.logits, ids)),
            "seconds": ref_run.seconds,
            "bytes_read": cks[1].bytes_read,
        }
        report["kl"] = {"mean": float(kl.mean()), "p95": float(torch.quantile(kl, 0.95)), "max": float(kl.max())}
        report["top1_agreement"] = top1
        report["layer_snr_db"] = [_snr_db(*sums[i]) for i in sorted(sums)]
    if mtp:
        report["mtp"] = {"ppl": math.exp(_nll(run.mtp_logits, ids[1:]))}
        if ref_run is not None:
            kl, top1 = _kl_top1(ref_run.mtp_logits, run.mtp_logits)
            report["mtp"].update(
                {
                    "ref_ppl": math.exp(_nll(ref_run.mtp_logits, ids[1:])),
                    "kl_mean": float(kl.mean()),
                    "kl_max": float(kl.max()),
                    "top1_agreement": top1,
                }
            )
    report["_logits"] = run.logits
    return report


def format_report(r: dict) -> str:
    m = r["model"]
    lines = [
        f"tokens {r['tokens']} (prefill {r['prefill']} + decode {r['decode']}), "
        f"dtype {r['dtype']}, device {r['device']}",
        f"MODEL {m['path']} ({m['kind']}): perplexity {m['ppl']:.4f}  "
        f"[{m['seconds']:.1f} s, {m['bytes_read'] / 1e9:.2f} GB read]",
    ]
    if "against" in r:
        a = r["against"]
        lines.append(f"REF   {a['path']} ({a['kind']}): perplexity {a['ppl']:.4f}  [{a['seconds']:.1f} s]")
        k = r["kl"]
        lines.append(f"KL(REF || MODEL) nats/token: mean {k['mean']:.3e}  p95 {k['p95']:.3e}  max {k['max']:.3e}")
        lines.append(f"top-1 agreement: {r['top1_agreement']:.4f}")
        lines.append("hidden-state SNR dB per layer: " + " ".join(f"{s:.1f}" for s in r["layer_snr_db"]))
    if "mtp" in r:
        m = r["mtp"]
        line = f"MTP block (token t+2): perplexity {m['ppl']:.4f}"
        if "kl_mean" in m:
            line += f", KL mean {m['kl_mean']:.3e} max {m['kl_max']:.3e}, top-1 agreement {m['top1_agreement']:.4f}"
        lines.append(line)
    return "\n".join(lines)
