"""A custom autograd.Function with a correct backward (its own file: gradcheck looks at the
harness's file)."""
import torch


class GoodSquare(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return 2 * g * x


def gradcheck_ok(T):
    x = torch.randn(T, requires_grad=True)
    return GoodSquare.apply(x).sum()
