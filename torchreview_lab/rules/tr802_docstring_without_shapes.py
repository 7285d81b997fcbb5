from __future__ import annotations

import re

import libcst as cst

from ..findings import Fix
from ._context import docstring_of, public_defs
from ._torch import is_tensor_annotation
from .base import Invalid, Rule

# A docstring that names a layout: "(batch, T, C)", "[B, T]", "shape", "N x D", "0-dim", "scalar".
_SHAPE_TEXT = re.compile(
    r"[\(\[]\s*[\w\*\.\+\-]+\s*,\s*[\w\*\.\+\-]+|\bshape|\bdims?\b|\bdimension|\bscalar\b|\b0-d|\w+\s*[x×]\s*\w+|"
    r"same size|same as|broadcast|\bsize\b", re.I)


class DocstringWithoutShapes(Rule):
    """A public function takes or returns tensors but its docstring gives no shapes.

    What it does:
        Under the production standard, flags documented public functions and methods whose
        parameters or return value are annotated as ``Tensor`` while the docstring mentions no
        shape (no ``(batch, T, C)``, ``shape``, ``dim``...). Once per function.

    Why is this bad:
        For tensor code the shape *is* the interface: ``(batch, T, C)`` versus ``(T, batch, C)``
        cannot be told apart by type, and a wrong guess often runs without error and returns
        wrong numbers.

    Example:
        def score(emissions: Tensor) -> Tensor:
            \"\"\"Score the emissions.\"\"\"

    Use instead:
        def score(emissions: Tensor) -> Tensor:
            \"\"\"Score the emissions: (batch, T, C) -> (batch,) log-likelihoods.\"\"\"
    """

    code = "TR802"
    title = "Tensor API docstring without shapes"
    category = "documentation"
    severity = {"research": None, "production": "low"}
    VALID = [
        "from torch import Tensor\ndef f(x: Tensor) -> Tensor:\n    \"\"\"Double x: (batch, T) -> (batch, T).\"\"\"\n    return 2 * x\n",
        "def f(x):\n    \"\"\"Doubles x.\"\"\"\n    return 2 * x\n",
        "from torch import Tensor\ndef f(x: Tensor) -> Tensor:\n    \"\"\"Elementwise square; output has the same shape as x.\"\"\"\n    return x * x\n",
        "from torch import Tensor, nn\nclass L(nn.Module):\n    \"\"\"Linear.\n\n    Shape:\n        - Input: (N, H)\n    \"\"\"\n    def forward(self, x: Tensor) -> Tensor:\n        \"\"\"Runs the forward pass.\"\"\"\n        return x\n",
    ]
    INVALID = [
        Invalid("from torch import Tensor\ndef score(e: Tensor) -> Tensor:\n    \"\"\"Score the emissions.\"\"\"\n    return e.sum(-1)\n", line=2),
        Invalid("import torch\nclass H:\n    \"\"\"Head.\"\"\"\n    def decode(self, x: torch.Tensor):\n        \"\"\"Viterbi decode.\"\"\"\n        return x\n", line=4),
    ]

    def visit_Module(self, node: cst.Module) -> None:
        for fn, cls in public_defs(node):
            doc = docstring_of(fn)
            if not doc or _SHAPE_TEXT.search(doc):
                continue
            if cls is not None and _SHAPE_TEXT.search(docstring_of(cls) or ""):
                continue  # shapes documented on the class (the torch.nn "Shape:" section)
            p = fn.params
            params = [x for x in list(p.posonly_params) + list(p.params) + list(p.kwonly_params)
                      if is_tensor_annotation(x.annotation)]
            returns = is_tensor_annotation(fn.returns)
            if not params and not returns:
                continue
            what = ", ".join(f"`{x.name.value}`" for x in params) + (" and the result" if returns and params else
                                                                     "the result" if returns else "")
            self.report(
                fn.name,
                problem=f"The docstring of `{fn.name.value}` does not give the shapes of {what}.",
                impact=("Layouts such as (batch, T, C) vs (T, batch, C) are invisible to the type system; a wrong "
                        "guess by a caller often runs and returns wrong numbers."),
                fix=Fix(before=f'"""{doc.splitlines()[0]}"""',
                        after=f'"""{doc.splitlines()[0]}\n\n    Args:\n        x: (batch, T, C) ...\n'
                              f'    Returns:\n        (batch, T) ...\n    """'),
            )
