"""``[tool.torchreview]`` configuration, found by walking up from the reviewed file.

Keys: ``standard`` ("research"|"production"), ``select`` and ``ignore`` (lists of code prefixes),
``severity`` (a table code -> severity override), ``per-file-ignores`` (a table glob -> list of
code prefixes), ``target-size`` (int, for scaling verdicts), ``duration-convention`` ("k-1" or
"clamp": how duration tables are indexed, for TR902).
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from .findings import check_severity, check_standard

try:  # Python 3.11+
    import tomllib as _toml
except ImportError:  # pragma: no cover
    try:
        import tomli as _toml  # type: ignore
    except ImportError:
        _toml = None


class ConfigError(ValueError):
    pass


@dataclass
class Config:
    standard: Optional[str] = None
    select: List[str] = field(default_factory=list)
    ignore: List[str] = field(default_factory=list)
    severity: Dict[str, str] = field(default_factory=dict)
    per_file_ignores: Dict[str, List[str]] = field(default_factory=dict)
    target_size: int = 400_000
    duration_convention: Optional[str] = None  # TR902: "k-1" or "clamp"
    source: Optional[str] = None  # the pyproject.toml it came from
    root: Optional[Path] = None

    def ignores_for(self, path: str) -> List[str]:
        out = list(self.ignore)
        rel = path
        if self.root is not None:
            try:
                rel = str(Path(path).resolve().relative_to(self.root))
            except (ValueError, OSError):
                rel = path
        for pattern, codes in self.per_file_ignores.items():
            if fnmatch.fnmatch(rel, pattern) or fnmatch.fnmatch(Path(path).name, pattern):
                out.extend(codes)
        return out


def _codes(value: Any, where: str) -> List[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where} must be a list of rule codes or prefixes")
    return [v.upper() for v in value]


def parse_config(data: Dict[str, Any], source: str = "<config>") -> Config:
    cfg = Config(source=source)
    unknown = set(data) - {"standard", "select", "ignore", "severity", "per-file-ignores", "target-size",
                           "duration-convention"}
    if unknown:
        raise ConfigError(f"{source}: unknown [tool.torchreview] keys: {', '.join(sorted(unknown))}")
    try:
        if "standard" in data:
            cfg.standard = check_standard(data["standard"], f"{source}: standard")
        if "select" in data:
            cfg.select = _codes(data["select"], f"{source}: select")
        if "ignore" in data:
            cfg.ignore = _codes(data["ignore"], f"{source}: ignore")
        for code, sev in (data.get("severity") or {}).items():
            cfg.severity[code.upper()] = check_severity(sev, f"{source}: severity.{code}")
        for pattern, codes in (data.get("per-file-ignores") or {}).items():
            cfg.per_file_ignores[pattern] = _codes(codes, f"{source}: per-file-ignores.{pattern}")
        if "duration-convention" in data:
            dc = data["duration-convention"]
            if dc not in ("k-1", "clamp"):
                raise ConfigError(f"{source}: duration-convention must be \"k-1\" or \"clamp\"; got {dc!r}")
            cfg.duration_convention = dc
        if "target-size" in data:
            ts = data["target-size"]
            if not isinstance(ts, int) or ts <= 0:
                raise ConfigError(f"{source}: target-size must be a positive integer")
            cfg.target_size = ts
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    return cfg


def find_config(start: Path) -> Config:
    """The nearest pyproject.toml with a [tool.torchreview] table, walking up from ``start``."""
    if _toml is None:
        return Config()
    here = start.resolve()
    if here.is_file():
        here = here.parent
    for d in [here, *here.parents]:
        pp = d / "pyproject.toml"
        if pp.is_file():
            try:
                data = _toml.loads(pp.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise ConfigError(f"{pp}: cannot read: {exc}") from exc
            table = (data.get("tool") or {}).get("torchreview")
            if table is not None:
                cfg = parse_config(table, str(pp))
                cfg.root = d
                return cfg
    return Config()
