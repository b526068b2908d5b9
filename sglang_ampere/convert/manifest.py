"""The destination's manifest: what made it, from what, and the SHA-256 of every finished shard.

``convert`` writes it after every finished shard (atomically), and reads it on the next run to
skip shards whose source identity (size + header SHA-256) is unchanged and whose output still
has the recorded SHA-256, to redo missing or damaged ones, and to refuse a destination made
with different options (unless ``--overwrite``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .. import __version__
from .safetensors_out import write_atomic

MANIFEST_NAME = "sglang-ampere-convert.json"
MANIFEST_FORMAT = 1


@dataclass
class Manifest:
    options: dict
    source: dict                                   # {"path", "index_sha256"}
    shards: dict[str, dict] = field(default_factory=dict)   # out name -> {"sources", "sha256", "bytes"}
    complete: bool = False
    converter: str = f"sglang-ampere {__version__}"

    def to_json(self) -> bytes:
        obj = {"format": MANIFEST_FORMAT, "converter": self.converter, "options": self.options,
               "source": self.source, "complete": self.complete, "shards": dict(sorted(self.shards.items()))}
        return (json.dumps(obj, indent=1, sort_keys=False) + "\n").encode()

    def save(self, dst: Path) -> None:
        write_atomic(Path(dst) / MANIFEST_NAME, self.to_json())


class ManifestError(ValueError):
    pass


def load_manifest(dst: Path) -> Manifest | None:
    path = Path(dst) / MANIFEST_NAME
    if not path.exists():
        return None
    try:
        obj = json.loads(path.read_text())
        if obj.get("format") != MANIFEST_FORMAT:
            raise ManifestError(f"{path}: manifest format {obj.get('format')!r} is not {MANIFEST_FORMAT}")
        return Manifest(
            obj["options"], obj["source"], obj.get("shards", {}), bool(obj.get("complete")), obj.get("converter", "")
        )
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise ManifestError(f"{path} is damaged ({e}); pass --overwrite to start this destination over") from e
