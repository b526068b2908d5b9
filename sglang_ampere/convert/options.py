"""The conversion options that decide the output bytes (recorded in the manifest)."""

from __future__ import annotations

import fnmatch
from dataclasses import asdict, dataclass, field

from .experts import MODES as EXPERT_MODES

DENSE_MODES = ("block", "channel")


@dataclass(frozen=True)
class Options:
    expert_mode: str = "mse"          # absmax | mse | optimal
    dense_mode: str = "block"         # block | channel
    keep_bf16: tuple[str, ...] = field(default_factory=tuple)   # fnmatch patterns on dense module names

    def validate(self) -> None:
        if self.expert_mode not in EXPERT_MODES:
            raise ValueError(f"--expert-scale must be one of {', '.join(EXPERT_MODES)}, got {self.expert_mode!r}")
        if self.dense_mode not in DENSE_MODES:
            raise ValueError(f"--dense-int8 must be one of {', '.join(DENSE_MODES)}, got {self.dense_mode!r}")

    def keeps_bf16(self, module: str) -> bool:
        """Whether a dense module (``layers.3.attn.wo_a``) is written as BF16 instead of INT8."""
        return any(fnmatch.fnmatchcase(module, p) for p in self.keep_bf16)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["keep_bf16"] = list(self.keep_bf16)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Options":
        return cls(d["expert_mode"], d["dense_mode"], tuple(d.get("keep_bf16", ())))
