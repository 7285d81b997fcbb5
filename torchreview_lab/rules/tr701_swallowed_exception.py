from __future__ import annotations

from typing import Optional

import libcst as cst

from ..findings import Fix
from ._context import only_statement_kinds
from .base import Invalid, Rule

_BROAD = frozenset({"Exception", "BaseException", "builtins.Exception", "builtins.BaseException"})


class SwallowedException(Rule):
    """A bare or broad ``except`` that silently discards the error.

    What it does:
        Flags ``except:``, ``except Exception:`` and ``except BaseException:`` whose body only
        does ``pass``, ``return``/``return None``, ``continue``, ``break`` or ``...``.

    Why is this bad:
        Every failure (a missing file, a corrupt checkpoint, a shape bug, an out-of-memory error,
        even ``KeyboardInterrupt`` for a bare ``except``) is turned into silence or a ``None``
        that fails much later, far from the cause, with no message saying what went wrong.

    Example:
        try:
            return torch.load(path)
        except Exception:
            return None

    Use instead:
        try:
            return torch.load(path, weights_only=True)
        except FileNotFoundError:
            logger.warning("no checkpoint at %s; starting fresh", path)
            return None
    """

    code = "TR701"
    title = "Broad except silently swallows errors"
    category = "error-handling"
    severity = {"research": "medium", "production": "medium"}
    VALID = [
        "def f(p):\n    try:\n        return open(p).read()\n    except FileNotFoundError:\n        return None\n",
        "import logging\ndef f(p):\n    try:\n        return open(p).read()\n    except Exception:\n        logging.exception('failed')\n        raise\n",
        "def f(p):\n    try:\n        return int(p)\n    except Exception as e:\n        raise ValueError(p) from e\n",
    ]
    INVALID = [
        Invalid("import torch\ndef safe_load(path):\n    try:\n        return torch.load(path)\n    except Exception:\n        return None\n", line=5),
        Invalid("def f(xs):\n    for x in xs:\n        try:\n            x.run()\n        except:\n            continue\n", line=5),
        Invalid("try:\n    import foo\nexcept (ValueError, BaseException):\n    pass\n", line=3),
    ]

    def visit_ExceptHandler(self, node: cst.ExceptHandler) -> None:
        kind = self._broad(node.type)
        if kind is None:
            return
        silent = self._silent(node.body)
        if silent is None:
            return
        self.report(
            node,
            problem=f"`{kind}` catches every error and the handler only does `{silent}`.",
            impact=("Failures (missing or corrupt files, shape bugs, out-of-memory) vanish silently or turn into a "
                    "None that fails later, far from the cause, with nothing in the logs."),
            fix=Fix(before=f"{kind}\n    {silent}",
                    after="except (FileNotFoundError, KeyError) as exc:   # the errors you expect\n"
                          "    logger.warning(\"...: %s\", exc)\n    return None"),
        )

    def _broad(self, t: Optional[cst.BaseExpression]) -> Optional[str]:
        if t is None:
            return "except:"
        elems = [e.value for e in t.elements] if isinstance(t, cst.Tuple) else [t]
        for e in elems:
            if isinstance(e, cst.Name) and (e.value in _BROAD or self.qnames(e) & _BROAD):
                return f"except {self.code_for(t)}:"
        return None

    def _silent(self, body: cst.BaseSuite) -> Optional[str]:
        stmts = only_statement_kinds(body)
        if len(stmts) != 1:
            return None
        s = stmts[0]
        if isinstance(s, cst.Pass):
            return "pass"
        if isinstance(s, cst.Continue):
            return "continue"
        if isinstance(s, cst.Break):
            return "break"
        if isinstance(s, cst.Return) and (s.value is None or (isinstance(s.value, cst.Name) and s.value.value == "None")):
            return self.code_for(s).strip() or "return None"
        if isinstance(s, cst.Expr) and isinstance(s.value, cst.Ellipsis):
            return "..."
        return None
