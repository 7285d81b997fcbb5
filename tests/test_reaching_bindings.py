"""Reaching bindings (rules/_bindings.py) and the rules built on them: TR152 follows the assignment that
reaches an in-place op, TR306 infers how many values a bare name/subscript return holds, TR607 sees a
model whose forward returns probabilities, TR154 finds evaluation loops with neither eval() nor no_grad,
and TR605 only counts .eval() on the network the loop trains."""
import libcst as cst
import pytest
from libcst.metadata import MetadataWrapper

from torchreview_lab.engine import review_source
from torchreview_lab.rules._bindings import reaching_values
from torchreview_lab.rules._torch import enclosing_function
from torchreview_lab.rules.base import Rule, RuleContext

H = "import torch\nimport torch.nn as nn\nimport torch.nn.functional as F\n"


def _lines(code, rule):
    return [f.line for f in review_source(code, "t.py", "research", select=[rule]).findings]


def _reaching(code, name="h"):
    """Values reaching the first `use(<name>)` call, as code (None: unknown)."""
    out = []

    class Probe(cst.BatchableCSTVisitor):  # not a Rule subclass: the registry would pick it up
        METADATA_DEPENDENCIES = Rule.METADATA_DEPENDENCIES
        parent, ancestors, code_for, line_of, qnames = Rule.parent, Rule.ancestors, Rule.code_for, Rule.line_of, Rule.qnames

        def __init__(self, ctx):
            super().__init__()
            self.ctx = ctx

        def visit_Call(self, node):
            if isinstance(node.func, cst.Name) and node.func.value == "use" and not out:
                vals = reaching_values(self, enclosing_function(self, node), name, node)
                out.append(None if vals is None else sorted(self.code_for(v) for v in vals))

    module = cst.parse_module(code)
    MetadataWrapper(module, unsafe_skip_copy=True).visit_batched([Probe(RuleContext(module=module, source=code))])
    return out[0]


@pytest.mark.parametrize("body, expected", [
    ("h = a\n    h = b\n    use(h)\n", ["b"]),
    ("h = a\n    if c:\n        h = b\n    use(h)\n", ["a", "b"]),
    ("if c:\n        h = a\n    else:\n        h = b\n    use(h)\n", ["a", "b"]),
    ("h = a\n    if c:\n        h = b\n        return h\n    use(h)\n", ["a"]),
    ("h = a\n    with ctx():\n        h = b\n    use(h)\n", ["b"]),
    ("h = a\n    for i in r:\n        use(h)\n", ["a"]),
    ("h = a\n    for i in r:\n        use(h)\n        h = b\n", None),       # the loop brings b round
    ("h = a\n    for h in r:\n        pass\n    use(h)\n", None),            # a loop target
    ("h, g = a\n    use(h)\n", None),                                       # unpacking
    ("h = a\n    h += 1\n    use(h)\n", None),
    ("use(h)\n", []),
    ("h = a\n    try:\n        h = b\n    except E:\n        use(h)\n", None),
    ("h = a\n    def g():\n        h = b\n    use(h)\n", ["a"]),               # another scope
    ("h = a; h = b; use(h)\n", ["b"]),
])
def test_reaching_values(body, expected):
    assert _reaching(f"def f(a, b, c, r):\n    {body}") == expected


def test_a_parameter_reaches_unless_rebound():
    assert _reaching("def f(h, c):\n    if c:\n        h = 1\n    use(h)\n") is None
    assert _reaching("def f(h, c):\n    h = 1\n    use(h)\n") == ["1"]


def test_module_level():
    assert _reaching("h = a\nfor x in y:\n    use(h)\n") == ["a"]


# -- TR152 -------------------------------------------------------------------------------------
@pytest.mark.parametrize("code, lines", [
    ("class B(nn.Module):\n    def forward(self, x, t, s):\n        h = self.conv(x)\n        h = h + t\n"
     "        h = torch.sigmoid(h)\n        h.mul_(s)\n", [9]),
    ("def f(model, x, s):\n    h = model(x)\n    h = torch.sigmoid(h)\n    h.mul_(s)\n", [7]),
    # a rebound name with no sign of autograd (statistics of observers, say): silent
    ("def scale(a, b):\n    s = torch.sqrt(a / b)\n    s[s == 0] = 1\n    s = torch.nan_to_num(s)\n    return s\n", []),
    ("def f(x, s):\n    h = torch.sigmoid(x)\n    h = h * 2\n    h.mul_(s)\n", []),
    ("def f(x, s, c):\n    if c:\n        h = torch.sigmoid(x)\n    else:\n        h = x * 2\n    h.mul_(s)\n", []),
    ("def f(x, s, c):\n    h = x * 3\n    if c:\n        h = torch.sigmoid(x)\n    h.mul_(s)\n", []),
    ("def f(x, s, c):\n    if c:\n        h = torch.sigmoid(x)\n    h.mul_(s)\n", [7]),  # only one can reach
    ("def f(x, s):\n    h = torch.sigmoid(x)\n    for i in range(3):\n        h.mul_(s)\n        h = h * 2\n", []),
    ("def f(x, s):\n    h = torch.sigmoid(x)\n    for i in range(3):\n        h.mul_(s)\n", [7]),
    ("def f(x, s, c):\n    h = x * 2\n    if c:\n        h = torch.sigmoid(x)\n        return h\n    h.mul_(s)\n", []),
    ("def f(x):\n    h = torch.exp(x)\n    h = h.clone()\n    h[:, 0] = 0\n", []),
])
def test_tr152_uses_the_reaching_assignment(code, lines):
    assert _lines(H + code, "TR152") == lines


@pytest.mark.parametrize("code", [
    # Python numbers and repeated strings/tuples are never saved for backward
    "def f(blocks, rate):\n    idx = 0\n    for b in blocks:\n        p = rate * idx\n        idx += 1\n",
    "def f(items):\n    indent = 4\n    s = ' ' * indent\n    indent -= 2\n",
    "def f(x, period):\n    cur = float(period)\n    r = x / cur\n    cur *= 2\n",
    "def f(world, w):\n    factor: int = 1\n    r = world / factor\n    factor *= 2\n",
    # the op saved an earlier binding, or cannot run before the in-place op
    "class M(nn.Module):\n    def forward(self, x, y):\n        x = x * y\n        x *= y\n        return x\n",
    "def f(x, m, c, i, v):\n    if c:\n        return x * m\n    x.index_copy_(0, i, v)\n    return x\n",
    "def f(x, m, c, i, v):\n    if c:\n        y = x * m\n    else:\n        x.index_copy_(0, i, v)\n",
    # grad mode is off in an autograd.Function backward
    "class F(torch.autograd.Function):\n    @staticmethod\n    def backward(ctx, g):\n        e = torch.exp(g)\n"
    "        e.mul_(2)\n        return e\n",
    # optimizer-update code
    "def step(p, exp_avg_sq, lr):\n    denom = exp_avg_sq.sqrt()\n    denom += 1e-8\n    p.data.addcdiv_(p.grad, denom, value=-lr)\n",
    "from torch.optim import Optimizer\nclass Opt(Optimizer):\n    pass\n\ndef _update(p, m):\n    u = torch.sign(m)\n"
    "    r = u * p\n    u.mul_(0.5)\n",
])
def test_tr152_quiet_without_autograd_or_tensors(code):
    assert _lines(H + code, "TR152") == []


def test_tr152_saved_input_across_a_branch_that_falls_through():
    code = "def f(x, m, c, i, v):\n    if c:\n        y = x * m\n    x.index_copy_(0, i, v)\n    return y\n"
    assert _lines(H + code, "TR152") == [7]


def test_tr152_still_fires_next_to_a_number():
    code = "def f(x, n):\n    k = 0\n    y = torch.sigmoid(x)\n    y.mul_(n)\n    return y\n"
    assert _lines(H + code, "TR152") == [7]


# -- TR306 -------------------------------------------------------------------------------------
F2 = H + ("class G(torch.autograd.Function):\n    @staticmethod\n    def forward(ctx, x, group):\n        return x\n"
          "    @staticmethod\n")


@pytest.mark.parametrize("backward, flagged", [
    ("    def backward(ctx, *grads):\n        all_grads = torch.stack(grads)\n"
     "        dist.all_reduce(all_grads)\n        return all_grads[dist.get_rank()]\n", True),
    ("    def backward(ctx, g):\n        gx = g.clone()\n        return gx\n", True),
    ("    def backward(ctx, *grads):\n        return grads[0]\n", True),
    ("    def backward(ctx, g):\n        a, b = ctx.saved_tensors\n        return g * b + a\n", True),
    ("    def backward(ctx, g):\n        out = (g, g, g)\n        return out\n", True),
    ("    def backward(ctx, g):\n        out = (g, None)\n        return out\n", False),
    ("    def backward(ctx, g):\n        out = (g, None, None)\n        return out\n", False),  # extra Nones
    ("    def backward(ctx, *grads):\n        return grads\n", False),
    ("    def backward(ctx, *grads):\n        return grads[:2]\n", False),
    ("    def backward(ctx, g):\n        out = helper(g)\n        return out\n", False),
    ("    def backward(ctx, g):\n        return torch.autograd.grad(ctx.y, ctx.x, g)\n", False),
    ("    def backward(ctx, g):\n        return g.chunk(2)\n", False),
    ("    def backward(ctx, g):\n        return ctx.grads + (None,)\n", False),
    ("    def backward(ctx, g):\n        g = (g, None)\n        return g\n", False),
    ("    def backward(ctx, g):\n        if ctx.flag:\n            r = g * 2\n        else:\n"
     "            r = (g, None)\n        return r\n", False),
])
def test_tr306_infers_the_arity_of_names_and_subscripts(backward, flagged):
    assert bool(_lines(F2 + backward, "TR306")) == flagged


# -- TR607 -------------------------------------------------------------------------------------
NET = "class Net(nn.Module):\n    def forward(self, x):\n        z = self.fc(x)\n        return {}\n\n"


@pytest.mark.parametrize("ret, use, flagged", [
    ("F.softmax(z, dim=-1)", "model = Net().to(dev)\ncrit = nn.CrossEntropyLoss()\nloss = crit(model(x), y)\n", True),
    ("F.softmax(z, dim=-1)", "model = Net()\nmodel = model.cuda()\nout = model(x)\nloss = F.nll_loss(out, y)\n", True),
    ("torch.sigmoid(z)", "model = Net()\np = model(x)\nloss = F.binary_cross_entropy_with_logits(p.squeeze(-1), y)\n",
     True),
    ("torch.sigmoid(z)", "model = Net()\nloss = F.binary_cross_entropy(model(x), y)\n", False),
    ("z", "model = Net()\nloss = F.cross_entropy(model(x), y)\n", False),
    ("F.log_softmax(z, -1)", "model = Net()\nloss = F.nll_loss(model(x), y)\n", False),
    ("F.softmax(z, dim=-1)", "def step(model, x, y):\n    return F.cross_entropy(model(x), y)\n", False),  # unknown
    ("F.softmax(z, dim=-1)", "model = Net()\nif c:\n    model = Other()\nloss = F.cross_entropy(model(x), y)\n",
     False),
])
def test_tr607_model_forward_returns_probabilities(ret, use, flagged):
    assert bool(_lines(H + NET.format(ret) + use, "TR607")) == flagged


def test_tr607_self_attribute_model():
    code = H + NET.format("torch.softmax(z, -1)") + (
        "class Trainer:\n    def __init__(self):\n        self.model = Net()\n        self.crit = nn.CrossEntropyLoss()\n"
        "    def step(self, x, y):\n        return self.crit(self.model(x), y)\n")
    assert _lines(code, "TR607") == [14]


def test_tr607_forward_with_a_logits_path_is_quiet():
    code = H + ("class Net(nn.Module):\n    def forward(self, x):\n        z = self.fc(x)\n        if self.training:\n"
                "            return z\n        return z.softmax(-1)\n\nloss = F.cross_entropy(Net()(x), y)\n")
    assert _lines(code, "TR607") == []


# -- TR154 -------------------------------------------------------------------------------------
EVAL = ("def evaluate(model, loader):\n    correct = 0\n    for x, y in loader:\n"
        "        correct += (model(x).argmax(-1) == y).sum().item()\n    return correct\n\n")


@pytest.mark.parametrize("code, lines", [
    (EVAL, [6]),
    (EVAL + "def main(model, loader):\n    model.eval()\n    with torch.no_grad():\n        print(evaluate(model, loader))\n",
     []),
    (EVAL + "with torch.no_grad():\n    acc = evaluate(model, loader)\n", []),
    ("torch.set_grad_enabled(False)\n" + EVAL, []),
    ("@torch.no_grad()\n" + EVAL, []),
    ("def predict(model, loader):\n    preds = []\n    for x in loader:\n        preds.append(model(x))\n    return preds\n",
     [6]),
    # not an evaluation: features kept for a loss computed by the caller
    ("def collect(model, loader):\n    feats = []\n    for x in loader:\n        feats.append(model(x))\n    return feats\n", []),
    # training loops, directly or through a helper
    ("def fit(model, loader, opt):\n    total = 0\n    for x, y in loader:\n        loss = model(x).sum()\n"
     "        loss.backward()\n        opt.step()\n        total += loss.item()\n    return total\n", []),
    ("def run_epoch(model, loader, opt):\n    total = 0\n    for x, y in loader:\n        total += step(model, x, y, opt)\n"
     "    return total\n\ndef step(model, x, y, opt):\n    loss = model(x).sum()\n    loss.backward()\n"
     "    opt.step()\n    return loss.item()\n", []),
    # metrics computed two assignments after the model call
    ("def test(net, loader):\n    hits = 0\n    for x, y in loader:\n        out = net(x)\n        pred = out.argmax(1)\n"
     "        hits += int((pred == y).sum())\n    return hits\n", [6]),
    # an imported function is not a model
    ("from sklearn.metrics import f1_score\ndef score(loader):\n    s = []\n    for y, p in loader:\n"
     "        s.append(f1_score(y, p).item())\n    return s\n", []),
    # a loop over layers, not batches
    ("def score(blocks, x):\n    outs = []\n    for b in blocks:\n        x = b(x)\n        outs.append(x.item())\n"
     "    return outs\n", []),
    ("class T:\n    def validate(self):\n        losses = []\n        for batch in self.val_loader:\n"
     "            out = self.model(batch['x'])\n            losses.append(self.criterion(out, batch['y']).item())\n"
     "        return losses\n", [7]),
])
def test_tr154_evaluation_with_neither_eval_nor_no_grad(code, lines):
    assert _lines(H + code, "TR154") == lines


def test_tr154_eval_then_a_few_repeats_is_not_an_evaluation_loop():
    code = "def check(model, x, ref):\n    model.eval()\n    for _ in range(6):\n        assert model(x).equal(ref)\n"
    assert _lines(H + code, "TR154") == []
    loop = "def run(model, loader):\n    model.eval()\n    for x in loader:\n        print(model(x))\n"
    assert _lines(H + loop, "TR154") == [5]


def test_tr154_names_what_is_missing():
    (f,) = review_source(H + EVAL, "t.py", "research", select=["TR154"]).findings
    assert "model.eval()" in f.problem and "no_grad" in f.problem and f.severity == "high"
    callers_eval = H + EVAL + "def main(model, loader):\n    model.eval()\n    print(evaluate(model, loader))\n"
    (g,) = review_source(callers_eval, "t.py", "research", select=["TR154"]).findings
    assert "BatchNorm" not in g.problem and g.severity == "medium"


# -- TR605 -------------------------------------------------------------------------------------
FIT = ("def fit(model, data, opt):\n{pre}    for epoch in range(3):\n        for x in data:\n"
       "            model(x).sum().backward()\n            opt.step()\n{post}")


@pytest.mark.parametrize("pre, post, flagged", [
    ("", "        model.eval()\n", True),
    ("", "        model.module.eval()\n", True),              # DDP: the wrapped network
    ("", "        evaluate(net=model)\n", True),
    ("    ema = copy.deepcopy(model).eval()\n", "        update(ema, model)\n", False),
    ("    ema_model.eval()\n", "", False),
    ("", "        teacher.eval()\n", False),
    ("", "        evaluate(net=ema)\n", False),
    ("", "        model.eval()\n        model.train()\n", False),
])
def test_tr605_tracks_the_trained_network(pre, post, flagged):
    code = ("import copy\ndef evaluate(net):\n    net.eval()\n\n" + FIT.format(pre=pre, post=post))
    assert bool(_lines(code, "TR605")) == flagged


def test_tr605_optimizer_owner_is_the_trained_network():
    code = ("import copy, torch\ndef train(model, loader, val):\n    ema = copy.deepcopy(model)\n"
            "    opt = torch.optim.AdamW(model.parameters())\n    for epoch in range(3):\n        for x in loader:\n"
            "            loss = compute(model, ema, x)\n            loss.backward()\n            opt.step()\n"
            "        {}.eval()\n")
    assert _lines(code.format("ema"), "TR605") == []
    assert _lines(code.format("model"), "TR605") == [10]


VAE = H + """
class VAE(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = nn.Linear(784, 64)
        self.dec = nn.Sequential(nn.Linear(32, 784), {LAST})

    def decode(self, z):
        return self.dec(z)

    def forward(self, x):
        mu, logvar = self.enc(x).chunk(2, dim=-1)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return self.decode(z), mu, logvar


def vae_loss(recon, x, mu, logvar):
    rec = F.binary_cross_entropy_with_logits(recon, x, reduction="sum")
    kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return rec + kl


def train(loader, opt):
    model = VAE()
    for x in loader:
        recon, mu, logvar = model(x)
        loss = vae_loss(recon, x, mu, logvar)
        opt.zero_grad()
        loss.backward()
        opt.step()
"""


def test_tr607_decoder_sigmoid_reaches_bce_with_logits_through_a_tuple_and_a_loss_helper():
    """forward returns (self.decode(z), mu, logvar); decode ends in nn.Sigmoid; the loss helper gets the
    first element as a parameter: the sigmoid is applied twice."""
    assert _lines(VAE.replace("{LAST}", "nn.Sigmoid()"), "TR607") == [21]
    assert _lines(VAE.replace("{LAST}", "nn.Identity()"), "TR607") == []
    # the element that is not the reconstruction, or a helper also called with logits elsewhere: quiet
    assert _lines(VAE.replace("{LAST}", "nn.Sigmoid()").replace("recon, mu, logvar = model(x)",
                                                                 "mu, recon, logvar = model(x)"), "TR607") == []
    mixed = VAE.replace("{LAST}", "nn.Sigmoid()") + "\ndef check(x, logits):\n    return vae_loss(logits, x, x, x)\n"
    assert _lines(mixed, "TR607") == []
