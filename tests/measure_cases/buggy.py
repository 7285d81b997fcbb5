"""Planted bugs for the runtime checks, each with its fixed twin. Line numbers matter: the tests
look up lines by the marker comments (``# BUG:...``)."""
import torch
from torch import nn

_HISTORY = []


# ---- TR010 device
def device_bug(T, device="cpu"):
    x = torch.randn(T, 8, device=device)
    mask = torch.ones(T, 8)  # BUG:device
    return (x * mask).sum()


def device_ok(T, device="cpu"):
    x = torch.randn(T, 8, device=device)
    mask = torch.ones(T, 8, device=x.device)
    scale = torch.tensor(2.0)
    return (x * mask * scale).sum()


# ---- TR011 syncs
def sync_bug(T):
    x = torch.randn(T, 4)
    total = 0.0
    for i in range(5):
        total += x[i].sum().item()  # BUG:sync-item
    if x.sum() > 0:  # BUG:sync-bool
        total += 1.0
    return x.sum() + total


def sync_ok(T):
    x = torch.randn(T, 4)
    total = x[:5].sum()
    return x.sum() + total + torch.where(x.sum() > 0, 1.0, 0.0)


# ---- TR012 gradient flow
class TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.used = nn.Linear(4, 1)
        self.unused = nn.Linear(4, 1)

    def forward(self, x):
        return self.used(x)


def grad_detach_bug(T):
    w = torch.randn(4, requires_grad=True)
    h = (torch.randn(T, 4) * w).detach()  # BUG:detach
    return (h ** 2).sum()


def grad_unused_bug(T):
    model = TwoHeads()  # BUG:unused
    return model(torch.randn(T, 4)).pow(2).mean()


def grad_ok(T):
    w = torch.randn(4, requires_grad=True)
    h = torch.randn(T, 4) * w
    return (h ** 2).sum()


# ---- TR013 NaN/Inf
def nan_bug(T):
    p = torch.softmax(torch.randn(T, 5), dim=-1)
    p = p * (torch.arange(5) > 0)
    return torch.log(p).sum()  # BUG:nan


def nan_ok(T):
    logits = torch.randn(T, 5).masked_fill(torch.arange(5) == 0, -1e4)
    return torch.log_softmax(logits, dim=-1).sum()


# ---- TR014 graph breaks
def graph_break_bug(T):
    x = torch.randn(T, 4)
    y = x * 2
    print("step")  # BUG:graph-break
    return (y + 1).sum()


def graph_ok(T):
    x = torch.randn(T, 4)
    return (x * 2 + 1).sum()


# ---- TR015 leaks
def leak_bug(T):
    x = torch.randn(T, 16, requires_grad=True)
    loss = (x * 3).sum()  # BUG:leak
    _HISTORY.append(loss)
    return loss


def leak_ok(T):
    x = torch.randn(T, 16, requires_grad=True)
    loss = (x * 3).sum()
    return loss


# ---- TR016 gradcheck
class BadSquare(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, g):  # BUG:gradcheck
        (x,) = ctx.saved_tensors
        return g * x  # should be 2 * x




def gradcheck_bug(T):
    x = torch.randn(T, requires_grad=True)
    return BadSquare.apply(x).sum()


def line_of(marker: str) -> int:
    """1-based line of the ``# BUG:<marker>`` comment in this file."""
    with open(__file__) as fh:
        for i, line in enumerate(fh, 1):
            if f"# BUG:{marker}" in line:
                return i
    raise KeyError(marker)
