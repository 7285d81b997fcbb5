"""Rule registry: discovers every Rule subclass in this package (no hand-kept list).

Codes group by family in the hundreds digit, so users select by prefix:

- TR0xx engine and runtime (syntax errors; dynamic checks)
- TR1xx memory: complexity, scaling, correctness
- TR2xx numerical stability
- TR3xx gradient flow
- TR4xx device handling
- TR5xx performance patterns and ``torch.compile`` graph breaks
- TR6xx algorithm correctness
- TR7xx error handling, robustness, observability
- TR8xx API design, documentation, type safety, readability, testing
- TR9xx semi-Markov CRF pack
"""
from __future__ import annotations

import importlib
import pkgutil
from functools import lru_cache
from typing import Dict, List, Type

from .base import Invalid, Rule, RuleContext

__all__ = ["Rule", "RuleContext", "Invalid", "all_rules", "get_rule", "select_rules", "broken_modules", "FAMILIES"]

FAMILIES = {
    "TR0": "engine and runtime checks",
    "TR1": "memory (complexity, scaling, correctness)",
    "TR2": "numerical stability",
    "TR3": "gradient flow",
    "TR4": "device handling",
    "TR5": "performance patterns and torch.compile graph breaks",
    "TR6": "algorithm correctness",
    "TR7": "error handling, robustness, observability",
    "TR8": "API design, documentation, type safety, readability, testing",
    "TR9": "semi-Markov CRF pack",
}


def _subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


_BROKEN: Dict[str, str] = {}


def broken_modules() -> Dict[str, str]:
    """Rule modules that failed to import (module -> error): the other rules still run, and the
    engine warns about these in every review."""
    _registry()
    return dict(_BROKEN)


@lru_cache(maxsize=1)
def _registry() -> Dict[str, Type[Rule]]:
    for mod in pkgutil.iter_modules(__path__):
        if not mod.name.startswith("_") and mod.name != "base":
            try:
                importlib.import_module(f"{__name__}.{mod.name}")
            except Exception as exc:  # noqa: BLE001 - one broken rule must not silence all the others
                _BROKEN[mod.name] = f"{type(exc).__name__}: {exc}"
    out: Dict[str, Type[Rule]] = {}
    for cls in _subclasses(Rule):
        if not cls.code:  # abstract helpers
            continue
        cls.validate_class()
        if cls.code in out:
            raise TypeError(f"duplicate rule code {cls.code}: {out[cls.code].__name__} and {cls.__name__}")
        out[cls.code] = cls
    return dict(sorted(out.items()))


def all_rules() -> List[Type[Rule]]:
    return list(_registry().values())


def get_rule(code: str) -> Type[Rule]:
    reg = _registry()
    key = code.upper()
    if key not in reg:
        raise KeyError(f"unknown rule code {code!r}")
    return reg[key]


def _matches(code: str, selectors) -> bool:
    return any(code.startswith(s.upper()) for s in selectors)


def select_rules(standard: str, select=None, ignore=None) -> List[Type[Rule]]:
    """Rules that run under ``standard``, narrowed by code prefixes in ``select``/``ignore``."""
    out = []
    for cls in all_rules():
        if cls.severity_for(standard) is None:
            continue
        if select and not _matches(cls.code, select):
            continue
        if ignore and _matches(cls.code, ignore):
            continue
        out.append(cls)
    return out
