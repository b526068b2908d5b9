"""Launch presets: per-GPU-architecture environment variables and default SGLang arguments.

The presets are data (``env/<arch>.toml``, shipped as package ``sglang_ampere.env``)::

    [preset]
    arch = "sm86"
    description = "..."

    [[env]]                       # one table per variable, in the order they are applied
    name = "SGLANG_OPT_USE_TOPK_V2"
    value = "0"
    reason = "one line: why this GPU needs it"

    [[arg]]                       # default SGLang server argument; the user's own wins
    flag = "--context-length"
    value = "65536"               # omit for a flag without a value
    reason = "one line"

A preset may start from a built-in one with ``extends = "sm86"`` in ``[preset]``: it then lists
only what differs. An entry with the same variable name or flag replaces the base's entry in
place (value and reason); new entries come after the base's.

What the native FP8/FP4 checkpoint needs on top (``quant_method fp8``, MXFP4 routed experts) is
a table of its own, applied only when ``--model-path`` holds that checkpoint::

    [[native.env]]                # same keys as [[env]]
    name = "SGLANG_FORCE_FP8_MARLIN"
    value = "1"
    reason = "one line"

    [[native.arg]]                # same keys as [[arg]], plus:
    flag = "--moe-runner-backend"
    value = "marlin"
    required = true               # the native path cannot work otherwise: a different value
    reason = "one line"           # of the user's is an error naming the flag, not a note

``required`` is allowed on both. A preset without ``[native]`` entries (sm90, sm120: SGLang's
own kernels serve the release there) adds nothing for it; ``extends`` merges them like the rest.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from sglang_ampere.gpus import KNOWN_ARCHES, PRESET_TARGETS

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

__all__ = ["KNOWN_ARCHES", "ArgEntry", "EnvEntry", "Preset", "PresetError", "load_builtin", "load_file",
           "parse_preset"]

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class PresetError(ValueError):
    pass


@dataclass(frozen=True)
class EnvEntry:
    name: str
    value: str
    reason: str
    required: bool = False


@dataclass(frozen=True)
class ArgEntry:
    flag: str
    value: str | None
    reason: str
    required: bool = False

    def argv(self) -> list[str]:
        return [self.flag] if self.value is None else [self.flag, self.value]


@dataclass(frozen=True)
class Preset:
    arch: str | None
    description: str
    source: str                      # "sm86" or the --preset file path
    env: tuple[EnvEntry, ...] = field(default_factory=tuple)
    args: tuple[ArgEntry, ...] = field(default_factory=tuple)
    min_memory_gib: float | None = None
    native_env: tuple[EnvEntry, ...] = field(default_factory=tuple)     # [[native.env]]
    native_args: tuple[ArgEntry, ...] = field(default_factory=tuple)    # [[native.arg]]


def _str(entry: dict, key: str, where: str, required: bool = True) -> str | None:
    value = entry.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or (required and not value.strip()):
        raise PresetError(f"{where}: '{key}' must be a non-empty string (quote numbers: value = \"0\")")
    return value


def parse_preset(data: dict, source: str, _chain: tuple[str, ...] = ()) -> Preset:
    """Validate a parsed TOML document and build a :class:`Preset` (resolving ``extends``)."""
    meta = data.get("preset", {})
    unknown_meta = set(meta) - {"arch", "description", "min_memory_gib", "extends"}
    if unknown_meta:
        raise PresetError(
            f"{source}: unknown [preset] key(s) {sorted(unknown_meta)}; allowed: arch, description, min_memory_gib, "
            "extends"
        )
    unknown = set(data) - {"preset", "env", "arg", "native"}
    if unknown:
        raise PresetError(f"{source}: unknown section(s) {sorted(unknown)}; allowed: preset, env, arg, native")
    native = data.get("native", {})
    if not isinstance(native, dict) or set(native) - {"env", "arg"}:
        raise PresetError(f"{source}: [native] holds only [[native.env]] and [[native.arg]] tables")
    env = _parse_env(data.get("env", []), f"{source} [[env]]")
    args = _parse_args(data.get("arg", []), f"{source} [[arg]]")
    native_env = _parse_env(native.get("env", []), f"{source} [[native.env]]")
    native_args = _parse_args(native.get("arg", []), f"{source} [[native.arg]]")
    arch = meta.get("arch")
    preset = Preset(
        arch=arch if isinstance(arch, str) else None,
        description=str(meta.get("description", "")),
        source=source,
        env=env,
        args=args,
        min_memory_gib=meta.get("min_memory_gib"),
        native_env=native_env,
        native_args=native_args,
    )
    base = meta.get("extends")
    if base is None:
        return preset
    if base in _chain or base == source:
        raise PresetError(f"{source}: 'extends' loops back to {base}")
    return _extend(_load_builtin(base, _chain + (source,)), preset)


def _required(entry: dict, where: str) -> bool:
    value = entry.get("required", False)
    if not isinstance(value, bool):
        raise PresetError(f"{where}: 'required' must be true or false")
    return value


def _parse_env(entries: list, where_base: str) -> tuple[EnvEntry, ...]:
    env, seen = [], set()
    for i, e in enumerate(entries):
        where = f"{where_base} #{i + 1}"
        unknown = set(e) - {"name", "value", "reason", "required"}
        if unknown:
            raise PresetError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: name, value, reason, required")
        name = _str(e, "name", where)
        if not _ENV_NAME.match(name):
            raise PresetError(f"{where}: {name!r} is not a valid environment variable name")
        if name in seen:
            raise PresetError(f"{where}: {name} is set twice")
        seen.add(name)
        if not isinstance(e.get("value"), str):
            raise PresetError(f"{where}: 'value' must be a string (quote numbers: value = \"0\")")
        env.append(EnvEntry(name, e["value"], _str(e, "reason", where), _required(e, where)))
    return tuple(env)


def _parse_args(entries: list, where_base: str) -> tuple[ArgEntry, ...]:
    args, flags = [], set()
    for i, a in enumerate(entries):
        where = f"{where_base} #{i + 1}"
        unknown = set(a) - {"flag", "value", "reason", "required"}
        if unknown:
            raise PresetError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: flag, value, reason, required")
        flag = _str(a, "flag", where)
        if not flag.startswith("--") or "=" in flag:
            raise PresetError(f"{where}: flag {flag!r} must look like --name (value goes in 'value')")
        if flag in flags:
            raise PresetError(f"{where}: {flag} is given twice")
        flags.add(flag)
        args.append(ArgEntry(flag, _str(a, "value", where, required=False), _str(a, "reason", where),
                             _required(a, where)))
    return tuple(args)


def _extend(base: Preset, child: Preset) -> Preset:
    """``child`` on top of ``base``: same-named entries replaced in place, new ones appended."""
    def merge(old, new, key):
        mine = {key(e): e for e in new}
        merged = [mine.pop(key(e), e) for e in old]
        return tuple(merged + [e for e in new if key(e) in mine])

    return Preset(
        arch=child.arch or base.arch,
        description=child.description or base.description,
        source=child.source,
        env=merge(base.env, child.env, lambda e: e.name),
        args=merge(base.args, child.args, lambda a: a.flag),
        min_memory_gib=child.min_memory_gib if child.min_memory_gib is not None else base.min_memory_gib,
        native_env=merge(base.native_env, child.native_env, lambda e: e.name),
        native_args=merge(base.native_args, child.native_args, lambda a: a.flag),
    )


def load_builtin(arch: str) -> Preset:
    return _load_builtin(arch, ())


def _load_builtin(arch: str, chain: tuple[str, ...]) -> Preset:
    if arch not in PRESET_TARGETS:
        raise PresetError(f"no preset for {arch!r}; known: {', '.join(PRESET_TARGETS)}")
    text = resources.files("sglang_ampere.env").joinpath(f"{arch}.toml").read_text(encoding="utf-8")
    return parse_preset(tomllib.loads(text), arch, chain)


def load_file(path: str | Path) -> Preset:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise PresetError(f"cannot read preset file {p}: {exc.strerror or exc}") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PresetError(f"preset file {p} is not valid TOML: {exc}") from exc
    return parse_preset(data, str(p))
