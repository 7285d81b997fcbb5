"""Train/eval mode of networks along the document's flow (TR633, TR154): which mode a network is in where
an evaluation runs it, following ``.eval()`` / ``.train()`` calls, the document's functions that switch it
(``train_epoch(model)`` calls ``model.train()``), the call sites of the evaluating function, and where the
network was built or loaded (a freshly constructed module is in training mode; ``from_pretrained`` or a
pickled model is not known). Also whether a network has layers whose behaviour depends on the mode."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional, Tuple

import libcst as cst

from ._context import (_classes_by_name, is_evaluation_name, is_module_class, local_module_class, module_kind,
                       self_attribute_values)
from ._flow import in_no_grad, runs_forward
from ._loader_flow import EVAL_NAME
from ._loops import local_callee
from ._torch import (dotted_name, enclosing_class, enclosing_function, enclosing_loops, function_facts, kwarg, method_call,
                     module_functions, torch_function, walk, walk_own)
from ._training import writes_grads

# Methods that return the module they are called on (``Net().to(device).apply(init)``).
_SELF_RETURNING = frozenset({"to", "cuda", "cpu", "float", "double", "half", "bfloat16", "apply", "requires_grad_",
                             "share_memory", "train", "eval", "to_empty"})
_GENERATION_NAME = re.compile(r"(^|_)(generate|generation|sample|sampling|render|synthesi[sz]e|translate|greedy|beam)(_|$)")
# torch.nn classes whose forward depends on the mode (RNNs and attention only with a dropout argument).
_MODAL = re.compile(r"(\w*Dropout\w*|\w*BatchNorm\w*|Transformer\w*)")
_MODAL_WITH_DROPOUT = re.compile(r"(RNN|LSTM|GRU|MultiheadAttention)")
_LIBRARY_BUILDERS = ("torchvision.models.", "timm.")
_NOT_LAYERS = frozenset({"torch", "builtins", "collections", "typing", "dataclasses", "functools", "itertools", "enum",
                         "numpy", "math", "pathlib", "logging", "warnings", "re", "os", "sys", "copy", "abc"})
_TRAINING_METHODS = frozenset({"backward", "step"})
# Methods that run a network (``model.generate(...)``), besides calling it.
_NETWORK_METHODS = frozenset({"forward", "generate", "sample", "encode", "decode", "predict", "infer"})


@dataclass
class Mode:
    kind: str  # "eval" or "train"
    origin: Optional[cst.Call] = None  # the construction of the network, when known
    loader: Optional[cst.CSTNode] = None  # the return of a function that loads it and hands it out in train mode
    why: str = ""  # what put it in that mode, for messages


def _strip(expr):
    """``(base, mode)``: ``Net().to(device).eval()`` -> ``(Net(), "eval")``, the mode its last switch sets."""
    mode = None
    while isinstance(expr, cst.Call) and (mc := method_call(expr)) and mc[1] in _SELF_RETURNING:
        if mode is None and mc[1] in ("train", "eval"):
            mode = _switch(expr)
        expr = mc[0]
    return expr, mode


def _switch(call: cst.Call) -> Optional[str]:
    """``"eval"`` for ``m.eval()`` / ``m.train(False)``, ``"train"`` for ``m.train()`` / ``m.train(True)``."""
    name, arg = method_call(call)[1], call.args[0].value if call.args else None
    if name == "eval":
        return None if arg is not None else "eval"
    return "train" if arg is None or dotted_name(arg) == "True" else "eval" if dotted_name(arg) == "False" else None


def _covers(switched: str, code: str) -> bool:
    """``model.eval()`` switches ``model`` and ``model.encoder``; ``ddp.module.eval()`` the wrapped network."""
    return switched == code or code.startswith(switched + ".") or switched in (code + ".module", code + "._orig_mod")


def _mapped(rule, call: cst.Call, callee: cst.FunctionDef, code: str) -> Optional[str]:
    """What ``code`` of the caller is called inside ``callee`` (a parameter, or ``self.x`` for a method)."""
    params = function_facts(rule, callee).params
    if code.startswith("self.") and params[:1] == ["self"] and dotted_name(call.func).startswith("self."):
        return code
    params = params[1:] if params[:1] == ["self"] else params
    args = [*zip(params, (a.value for a in call.args if not a.keyword and not a.star)),
            *((a.keyword.value, a.value) for a in call.args if a.keyword)]
    for p, a in args:
        d = dotted_name(_strip(a)[0])
        if d and (code == d or code.startswith(d + ".")):
            return p + code[len(d):]
    return None


def _events(rule, scope, code: str, before: int, depth: int):
    """``(line, kind, node)`` of what sets ``code``'s mode in ``scope`` before line ``before``: its switches,
    calls of the document's functions that switch it, and (re)bindings of the name (kind ``"bind"``)."""
    for n in walk_own(scope, (cst.Call, cst.Assign)):
        line = rule.line_of(n)
        if line >= before:
            continue
        if isinstance(n, cst.Assign):
            if any(dotted_name(t.target) == code for t in n.targets):
                base, mode = _strip(n.value)
                if dotted_name(base) != code or mode is not None:
                    yield (line, mode, n) if dotted_name(base) == code else (line, "bind", n)
            continue
        mc = method_call(n)
        if mc and mc[1] in ("train", "eval") and (d := dotted_name(_strip(mc[0])[0])) and _covers(d, code):
            yield line, _switch(n) or "unknown", n
        elif depth < 3 and (isinstance(n.func, cst.Name) and n.func.value in module_functions(rule) or mc and dotted_name(
                mc[0]) == "self") and (callee := local_callee(rule, n)) is not None and (
                inner := _mapped(rule, n, callee, code)):
            kinds = [k for _, k, _ in _events(rule, callee.body, inner, 10 ** 9, depth + 1) if k in ("eval", "train")]
            if kinds:
                yield line, kinds[-1], n


def mode_at(rule, fn, code: str, node: cst.CSTNode, depth: int = 0) -> Optional[Mode]:
    """The mode of the network ``code`` where ``node`` (in ``fn``, None for module level) runs; None when
    it cannot be told (a parameter without callers in the document, a pickled or ``from_pretrained`` model)."""
    key = ("mode-at", id(node), code)
    if key in rule.ctx.cache:
        return rule.ctx.cache[key]
    rule.ctx.cache[key] = None  # guards recursion
    scope = fn.body if fn is not None else rule.ctx.module
    events = sorted(_events(rule, scope, code, rule.line_of(node), depth), key=lambda e: e[0])
    out = None
    if events and events[-1][1] == "train" and depth == 0 and method_call(events[-1][2]) and not any(
            events[-1][0] < rule.line_of(c) < rule.line_of(node) and _trains(rule, c) for c in walk_own(scope, cst.Call)):
        pass  # switched to training mode right here, with no training since: on purpose (a test of train mode)
    elif events and events[-1][1] in ("eval", "train"):
        call = events[-1][2]
        via = isinstance(call, cst.Call) and (method_call(call) or (None, ""))[1] not in ("train", "eval")
        text = rule.code_for(call.func if via else call).strip()
        out = Mode(events[-1][1], _construction(rule, fn, code, events),
                   why=f"`{text}(...)`, called {_place(rule, call)} before it, switches it to training mode" if via
                   else f"its last mode switch before this is `{text}` ({_place(rule, call)})")
    elif events and events[-1][1] == "bind":
        out = _origin(rule, fn, events[-1][2].value, scope, code, depth)
    elif not events and fn is not None and depth < 3:
        root = code.split(".")[0]
        bound = any(dotted_name(_strip(v)[0]) != root for v in function_facts(rule, fn).assignments.get(root, ()))
        sites = _call_sites(rule).get(id(fn), []) if not bound else []
        modes = [_at_call(rule, c, fn, code, depth) for c in sites]
        if modes and all(m is not None and m.kind == "train" for m in modes):
            out = modes[0]
    rule.ctx.cache[key] = out
    return out


def _place(rule, node: cst.CSTNode) -> str:
    fn = enclosing_function(rule, node)
    return f"in `{fn.name.value}`" if fn is not None else "at top level"


def _call_sites(rule):
    """``{id(function): [calls]}`` for the document's functions and methods called by name or on ``self``."""
    key = ("mode-call-sites",)
    if key not in rule.ctx.cache:
        out: dict = {}
        for c in walk(rule.ctx.module, cst.Call):
            if isinstance(c.func, cst.Name) and c.func.value in module_functions(rule) or isinstance(
                    c.func, cst.Attribute) and dotted_name(c.func.value) == "self":
                callee = local_callee(rule, c)
                if callee is not None:
                    out.setdefault(id(callee), []).append(c)
        rule.ctx.cache[key] = out
    return rule.ctx.cache[key]


def _at_call(rule, call: cst.Call, fn: cst.FunctionDef, code: str, depth: int) -> Optional[Mode]:
    """The mode of ``code`` (a parameter of ``fn`` and what follows it, or a global or ``self.x``) where the
    caller calls ``fn`` at ``call``: what the caller passes, followed in the caller's flow."""
    caller = enclosing_function(rule, call)
    params = function_facts(rule, fn).params
    head, _, rest = code.partition(".")
    if head == "self" or head not in params:
        return mode_at(rule, caller, code, call, depth + 1)
    params = params[1:] if params[:1] == ["self"] else params
    pos = [a.value for a in call.args if not a.keyword and not a.star]
    arg = next((a.value for a in call.args if a.keyword and a.keyword.value == head), None)
    if arg is None and head in params and params.index(head) < len(pos):
        arg = pos[params.index(head)]
    d = dotted_name(arg) if arg is not None else None
    if d:
        return mode_at(rule, caller, d + ("." + rest if rest else ""), call, depth + 1)
    return _origin(rule, caller, arg, caller.body if caller else rule.ctx.module, "", depth + 1) if (
        isinstance(arg, cst.Call) and not rest) else None


def _construction(rule, fn, code: str, events) -> Optional[cst.Call]:
    binds = [e for e in events if e[1] == "bind"]
    base = _strip(binds[-1][2].value)[0] if binds else None
    return base if isinstance(base, cst.Call) else None


def _origin(rule, fn, value, scope, code: str, depth: int) -> Optional[Mode]:
    """The mode of a network bound to ``value``: built here (train, when it then learns weights), returned by a
    document function (followed into its returns) or another name; None for anything else."""
    base, mode = _strip(value)
    if mode is not None:
        return Mode(mode, base if isinstance(base, cst.Call) else None)
    if isinstance(base, cst.Name) and depth < 3:
        return mode_at(rule, fn, base.value, value, depth + 1)
    if not isinstance(base, cst.Call):
        return None
    callee = module_functions(rule).get(base.func.value) if isinstance(base.func, cst.Name) else None
    if callee is not None and depth < 3:
        rets = [r for r in walk_own(callee.body, cst.Return) if r.value is not None]
        modes = [_origin(rule, callee, r.value, callee.body, dotted_name(_strip(r.value)[0]) or "", depth + 1) for r in rets]
        if not modes or not all(m is not None and m.kind == "train" for m in modes):
            return None
        loads = any((mc := method_call(c)) and mc[1] == "load_state_dict" or torch_function(rule, c) == "load"
                    for c in walk_own(callee.body, cst.Call))
        return Mode("train", modes[0].origin, modes[0].loader or (rets[0] if loads else None), modes[0].why)
    if not _constructs(rule, base) or not _learns(rule, scope, code, base):
        return None
    return Mode("train", base, why=f"it is built by `{rule.code_for(base.func)}(...)` ({_place(rule, base)}) and a new "
                                   "module starts in training mode")


def _constructs(rule, call: cst.Call) -> bool:
    """``call`` builds a network: a torch.nn module, a module class of the document, an imported class, or a
    torchvision/timm model builder (``models.resnet50(weights=...)``, ``timm.create_model``)."""
    if torch_function(rule, call) is not None:
        return module_kind(rule, None, call) == "module"
    name = dotted_name(call.func) or ""
    q = rule.qnames(call.func)
    if any(x.startswith(_LIBRARY_BUILDERS) for x in q):
        return True
    last = name.rsplit(".", 1)[-1]
    return last[:1].isupper() and not any(x.startswith("builtins.") for x in q) and (
        local_module_class(rule, last) or not _classes_by_name(rule).get(last))


def _learns(rule, scope, code: str, built: cst.Call) -> bool:
    """The network built by ``built`` gets weights: pretrained ones, a ``load_state_dict``, an optimizer over its
    parameters, or a document function it is passed to trains it."""
    if any(a.keyword and a.keyword.value in ("weights", "pretrained") and dotted_name(a.value) not in ("None", "False")
           for a in built.args):
        return True
    for c in walk_own(scope, cst.Call):
        mc = method_call(c)
        if mc and dotted_name(mc[0]) == code and mc[1] == "load_state_dict":
            return True
        if any(method_call(a.value) and method_call(a.value)[1] == "parameters"
               and dotted_name(method_call(a.value)[0]) == code for a in c.args) and "optim" in rule.code_for(c.func):
            return True
        callee = local_callee(rule, c)
        if callee is not None and any(dotted_name(a.value) == code for a in c.args) and writes_grads(rule, callee.body, True):
            return True
    return False


def modal(rule, built: Optional[cst.Call], depth: int = 0) -> bool:
    """The network built by ``built`` may behave differently in train and eval mode (dropout, batch norm);
    False only when it provably does not (its class is in the document and holds no such layer)."""
    if built is None or depth > 4:
        return True
    tf = torch_function(rule, built)
    if tf is not None:
        last = tf.rsplit(".", 1)[-1]
        if last in ("Sequential", "ModuleList", "ModuleDict"):
            return any(isinstance(a.value, cst.Call) and modal(rule, a.value, depth + 1) for a in built.args)
        drop = kwarg(built, "dropout")
        return bool(_MODAL.fullmatch(last)) or bool(_MODAL_WITH_DROPOUT.fullmatch(last)) and drop is not None and (
            rule.code_for(drop.value) not in ("0", "0.0"))
    name = (dotted_name(built.func) or "").rsplit(".", 1)[-1]
    if not local_module_class(rule, name):
        return True
    cls = _classes_by_name(rule)[name][-1]
    if any(not local_module_class(rule, (dotted_name(b.value) or "").rsplit(".", 1)[-1]) and not any(
            q.startswith("torch.nn.") for q in rule.qnames(b.value)) and dotted_name(b.value) not in ("nn.Module", "Module")
           for b in cls.bases):
        return True  # built on a library class
    if any(isinstance(n, cst.Attribute) and n.attr.value == "training" for n in walk(cls)):
        return True
    for c in walk(cls, cst.Call):
        tf = torch_function(rule, c)
        if tf is not None and ("dropout" in tf or "batch_norm" in tf or tf.startswith("nn.") and modal(rule, c, depth + 1)):
            return True
        if tf is None and isinstance(c.func, cst.Name) and local_module_class(rule, c.func.value) and (
                c.func.value != name) and modal(rule, c, depth + 1):
            return True
    return any(_foreign_layer(rule, c) for c in walk(cls, cst.Call))


def _foreign_layer(rule, call: cst.Call) -> bool:
    """``call`` builds a network this document does not define: a torchvision/timm builder or an imported class
    (``torchvision.models.resnet18(...)``, ``timm.create_model``, ``from .layers import Block; Block(...)``)."""
    q = rule.qnames(call.func)
    last = (dotted_name(call.func) or "_").rsplit(".", 1)[-1]
    return any(x.startswith(_LIBRARY_BUILDERS) for x in q) or bool(q) and last[:1].isupper() and not any(
        x.split(".")[0] in _NOT_LAYERS for x in q) and not _classes_by_name(rule).get(last)


def _trains(rule, node) -> bool:
    """``node`` runs training: backward, an optimizer step, a document function that writes gradients."""
    return writes_grads(rule, node, False) or any((mc := method_call(c)) and mc[1] in _TRAINING_METHODS
                                                  for c in walk(node, cst.Call))


def _steps(rule, region, depth: int = 0) -> bool:
    """``region`` itself runs a training step, not only in a nested loop (an epoch loop around a batch loop
    does not): backward or an optimizer step, or a document function that runs one outside its own loops."""
    for c in walk_own(region, cst.Call):
        if any(isinstance(a, (cst.For, cst.While)) for a in _between(rule, c, region)):
            continue
        mc, callee = method_call(c), local_callee(rule, c) if depth < 2 else None
        if mc and mc[1] in ("backward", "step") or torch_function(rule, c) in ("autograd.backward", "autograd.grad") \
                or callee is not None and _steps(rule, callee.body, depth + 1):
            return True
    return False


def _between(rule, node, region):
    for a in rule.ancestors(node):
        if a is region:
            return
        yield a


def _network(rule, call: cst.Call) -> Optional[str]:
    """The network ``call`` runs: ``model`` for ``model(x)`` / ``model.generate(...)``, ``self.net`` for
    ``self.net(x)`` (an attribute the class assigns); None for functions, imports and other methods."""
    f = call.func
    if isinstance(f, cst.Name):
        code = f.value
    elif isinstance(f, cst.Attribute) and f.attr.value in _NETWORK_METHODS and dotted_name(f.value):
        code = dotted_name(f.value)
    elif isinstance(f, cst.Attribute) and dotted_name(f.value) == "self" and (cls := enclosing_class(rule, call)) \
            is not None and f.attr.value in self_attribute_values(rule, cls):
        code = f"self.{f.attr.value}"
    else:
        return None
    root = code.split(".")[0]
    if root in rule.ctx.names.aliases or root in module_functions(rule) or root in _classes_by_name(rule) or (
            root in rule.ctx.names.builtins):
        return None
    return code if runs_forward(rule, call) else None


def evaluation_forward(rule, call: cst.Call) -> Optional[str]:
    """The network code when ``call`` runs a network for evaluation or inference: under ``no_grad`` /
    ``inference_mode``, in a function named for evaluation or generation, or over a validation/test loader;
    not in an nn.Module's own methods, and not where a training step runs: the innermost loop around it (or
    the function, or the top-level block) has none of its own (a GAN or distillation step runs a network under
    no_grad in training mode on purpose; an epoch loop whose batch loop trains may still evaluate)."""
    code = _network(rule, call)
    if code is None:
        return None
    fn, cls = enclosing_function(rule, call), enclosing_class(rule, call)
    if cls is not None and is_module_class(rule, cls):
        return None
    name = fn.name.value.lower() if fn is not None else ""
    loops = [lp for lp in enclosing_loops(rule, call) if lp is not call]
    if not (in_no_grad(rule, call) or is_evaluation_name(name) or _GENERATION_NAME.search(name) or any(
            isinstance(lp, cst.For) and EVAL_NAME.search((dotted_name(lp.iter) or "").lower()) for lp in loops)):
        return None
    region = loops[0] if loops else fn.body if fn is not None else next(
        (a for a in reversed(list(rule.ancestors(call))[:-1]) if isinstance(a, cst.BaseCompoundStatement)), None)
    return None if region is None or _steps(rule, region) else code


def train_mode_evaluation(rule, call: cst.Call) -> Optional[Tuple[str, Mode]]:
    """``(network code, mode)`` when ``call`` evaluates a network left in training mode (see
    :func:`evaluation_forward`) and the flow shows it: its last switch was ``.train()`` (not one made right
    there with no training since: a test of training mode), or it was built (and trained or loaded) with none
    since; and it has mode-dependent layers. None otherwise."""
    key = ("train-mode-evaluation", id(call))
    if key not in rule.ctx.cache:
        rule.ctx.cache[key] = None
        code = evaluation_forward(rule, call)
        mode = mode_at(rule, enclosing_function(rule, call), code, call) if code else None
        if mode is not None and mode.kind == "train" and modal(rule, mode.origin):
            rule.ctx.cache[key] = (code, mode)
    return rule.ctx.cache[key]
