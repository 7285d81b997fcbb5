"""Harnesses of known memory scaling for the probe's tests."""
import torch

K, C = 4, 6


def const(T):                     # O(1): ignores T
    x = torch.randn(4096)
    return (x * 2).sum()


def linear(T):                    # O(T)
    x = torch.randn(T, 64)
    return (x * 2).sum()


def quadratic(T):                 # O(T^2)
    x = torch.randn(T, 8)
    return (x @ x.T).sum()


def edges(T, device="cpu"):       # O(T*K*C^2): a (T, K, C, C) edge tensor and logsumexp over it
    e = torch.randn(T, K, C, C, device=device)
    return torch.logsumexp(e, dim=(-1, -2)).sum()


def edges_bytes(T):
    """Analytic peak of ``edges`` (float32): the edge tensor, the logsumexp kernel's temporary of the
    same size (``(e - maxes).exp_()``), plus the two (T, K) tensors alive with it (maxes, the sum)."""
    return 4 * (2 * T * K * C * C + 2 * T * K)


def data_dependent(T):            # .item(), bool masks and nonzero: the meta run answers with assumptions
    x = torch.randn(T, 16)
    n = int((x > 0).sum().item())
    kept = x[x > 0]
    if (kept > 0).any():
        return kept.sum() + n
    return x.sum()


def python_loop(T):               # a Python loop over T: slow on meta
    x = torch.zeros(T)
    for i in range(1, T):
        x[i] = x[i - 1] + 1.0
    return x.sum()


def raises_oom(T):
    if T >= 128:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
    return torch.randn(T, 16).sum()


def raises_memoryerror(T):
    if T >= 128:
        raise MemoryError("simulated")
    return torch.randn(T, 16).sum()


def broken(T):
    raise ValueError("broken harness")
