"""Topology: pp x tp (x dp replicas) against GPUs x nodes, on SGLang's merged argument values,
and the per-node commands of a multi-node dry run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from sglang_ampere.notes import Note, note

from .argv import ServerArgv
from .errors import LaunchError


@dataclass(frozen=True)
class Topology:
    tp: int
    pp: int
    dp: int
    nnodes: int
    node_rank: int | None          # None: not given (CLI or YAML)
    dist_init_addr: str | None
    dp_attention: bool = False     # deprecated --enable-dp-attention: dp inside the TP group

    @property
    def replicas(self) -> int:
        return 1 if self.dp_attention else self.dp

    @property
    def total(self) -> int:
        return self.tp * self.pp * self.replicas


def _size(server: ServerArgv, dest: str, flag: str, minimum: int) -> int:
    n = server.value(dest, 1 if minimum else 0)
    if not isinstance(n, int) or n < minimum:
        raise LaunchError(f"{flag} must be >= {minimum}, got {n}")
    return n


def topology_of(server: ServerArgv) -> Topology:
    return Topology(
        tp=_size(server, "tp_size", "--tp-size", 1),
        pp=_size(server, "pp_size", "--pp-size", 1),
        dp=_size(server, "dp_size", "--dp-size", 1),
        nnodes=_size(server, "nnodes", "--nnodes", 1),
        node_rank=_size(server, "node_rank", "--node-rank", 0) if server.is_given("node_rank") else None,
        dist_init_addr=server.value("dist_init_addr"),
        dp_attention=bool(server.value("enable_dp_attention", False)),
    )


def check_topology(topo: Topology, local_gpus: int | None) -> list[Note]:
    """Notes about the topology; a :class:`LaunchError` with the arithmetic if it cannot work."""
    # `--dp-size N --enable-dp-attention` is the deprecated spelling of --attn-dp-size N
    # (attention DP inside the TP group, no extra GPUs); plain --dp-size N is N replicas.
    replicas, total = topo.replicas, topo.total
    arith = f"--pp-size {topo.pp} x --tp-size {topo.tp}" + (f" x --dp-size {replicas}" if replicas > 1 else "")
    notes = []
    if topo.nnodes > 1 and replicas > 1:
        raise LaunchError(f"--dp-size {replicas} with --nnodes {topo.nnodes}: SGLang 0.5.23 runs data-parallel "
                          "replicas on one node only; use --attn-dp-size across nodes, or one launch per node")
    if total % topo.nnodes:
        raise LaunchError(f"{arith} = {total} GPUs cannot be split over --nnodes {topo.nnodes} "
                          f"({total} / {topo.nnodes} is not whole); make pp x tp a multiple of the node count")
    per_node = total // topo.nnodes
    node_txt = f" / --nnodes {topo.nnodes} = {per_node} per node" if topo.nnodes > 1 else ""
    if local_gpus is not None:
        if per_node > local_gpus:
            raise LaunchError(f"{arith} = {total} GPUs{node_txt}, but this node has {local_gpus} "
                              f"GPU(s). Lower the sizes, add nodes with --nnodes, or set --num-gpus if "
                              "the other nodes differ")
        if per_node < local_gpus:
            notes.append(note("launch.gpus-unused",
                              f"{arith} = {total}{node_txt} uses {per_node} of the {local_gpus} GPUs on this node"))
    if topo.nnodes > 1:
        if not topo.dist_init_addr:
            raise LaunchError(f"--nnodes {topo.nnodes} needs --dist-init-addr HOST:PORT "
                              "(the address of node 0, reachable from every node)")
        if topo.node_rank is not None and topo.node_rank >= topo.nnodes:
            raise LaunchError(f"--node-rank {topo.node_rank} is out of range for --nnodes {topo.nnodes} "
                              f"(0..{topo.nnodes - 1})")
    elif topo.node_rank not in (None, 0):
        raise LaunchError(f"--node-rank {topo.node_rank} without --nnodes: a single node is rank 0")
    return notes


def with_node_rank(args: Sequence[str], rank: int) -> list[str]:
    """``args`` with every ``--node-rank`` on the command line set to ``rank``, or one appended
    (a rank from the ``--config`` YAML is then overridden: CLI > config)."""
    out, i, found = [], 0, False
    args = list(args)
    while i < len(args):
        a = args[i]
        if a == "--node-rank":
            out += ["--node-rank", str(rank)]
            i += 2
            found = True
        elif a.startswith("--node-rank="):
            out.append(f"--node-rank={rank}")
            i += 1
            found = True
        else:
            out.append(a)
            i += 1
    return out if found else out + ["--node-rank", str(rank)]
