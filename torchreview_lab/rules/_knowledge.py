"""PyTorch knowledge as data: what allocates, what syncs, what breaks a graph.

Rules consult these tables instead of hard-coding if-chains, so adding a factory or a syncing method
is a one-line change.
"""
from __future__ import annotations

# Factories that allocate a new tensor on the *default* device unless ``device=`` is given.
TENSOR_FACTORIES = frozenset({
    "zeros", "ones", "empty", "full", "arange", "range", "linspace", "logspace", "eye",
    "rand", "randn", "randint", "randperm", "normal", "tensor", "empty_strided", "tril_indices",
    "triu_indices", "bartlett_window", "hann_window", "hamming_window", "blackman_window",
    "kaiser_window", "sparse_coo_tensor",
})
# Factories whose first arguments are the shape (positional sizes or one sequence).
SHAPE_FACTORIES = frozenset({"zeros", "ones", "empty", "rand", "randn"})
# ``full(size, fill)``, ``randint(low, high, size)``: where the size sequence sits.
SIZE_ARG_POSITION = {"full": 0, "randint": -1, "normal": -1, "empty_strided": 0}
# ``*_like`` factories inherit the device of their argument: never a device bug.
LIKE_FACTORIES = frozenset({"zeros_like", "ones_like", "empty_like", "full_like", "rand_like",
                            "randn_like", "randint_like"})
# Tensor methods that copy to the host or read a value: a host-device sync on CUDA.
SYNC_METHODS = frozenset({"item", "tolist", "numpy", "cpu", "nonzero", "any", "all"})
STRICT_SYNC_METHODS = frozenset({"item", "tolist", "numpy", "cpu", "nonzero"})
# Calls that break a torch.compile graph when reached inside forward / a compiled function.
GRAPH_BREAK_METHODS = frozenset({"item", "tolist", "numpy", "nonzero"})
GRAPH_BREAK_BUILTINS = frozenset({"print", "input", "breakpoint", "open"})
# Reductions/ops whose result is a tensor that still carries the graph.
REDUCTIONS = frozenset({"sum", "mean", "max", "min", "prod", "logsumexp", "norm", "std", "var", "amax", "amin"})
# Methods whose presence on a name makes it look like a tensor.
TENSOR_METHODS = frozenset({
    "shape", "size", "dim", "ndim", "device", "dtype", "view", "reshape", "permute", "transpose",
    "unsqueeze", "squeeze", "contiguous", "sum", "mean", "max", "min", "exp", "log", "cumsum",
    "gather", "scatter", "index_select", "masked_fill", "detach", "clone", "to", "float", "double",
    "half", "long", "int", "bool", "expand", "repeat", "softmax", "log_softmax", "logsumexp",
    "matmul", "bmm", "norm", "abs", "clamp", "numel", "requires_grad", "grad", "backward",
    "new_zeros", "new_ones", "new_full", "new_empty", "new_tensor", "flatten", "split", "chunk",
    "narrow", "roll", "flip", "cumprod", "argmax", "argmin", "topk", "sort", "type_as",
})
# Methods that make a value integer/boolean (exact cumulative sums, no precision problem).
INTEGER_METHODS = frozenset({"long", "int", "bool", "short", "byte", "char"})
INTEGER_DTYPES = frozenset({"torch.long", "torch.int64", "torch.int32", "torch.int", "torch.int16",
                            "torch.int8", "torch.uint8", "torch.bool", "torch.float64", "torch.double"})
# torch calls whose positional arguments are sizes, seeds, dtypes or devices, not tensors.
NON_TENSOR_TORCH_CALLS = TENSOR_FACTORIES | frozenset({
    "device", "Size", "manual_seed", "set_grad_enabled", "set_default_dtype", "set_num_threads",
    "get_default_dtype", "finfo", "iinfo", "empty_cache", "set_printoptions", "load", "save",
    "compile", "no_grad", "enable_grad", "inference_mode", "Generator", "from_numpy", "as_tensor",
    "promote_types", "result_type", "is_tensor", "numel", "jit.script", "jit.trace",
})
# Tensor methods / torch functions whose result depends on tensor *values* (not shapes): a Python
# ``if``/``while`` on them needs the value on the host (a sync) and breaks a torch.compile graph.
DATA_DEPENDENT_METHODS = frozenset({
    "sum", "mean", "max", "min", "prod", "norm", "std", "var", "amax", "amin", "any", "all", "item",
    "equal", "allclose", "isnan", "isinf", "isfinite", "count_nonzero", "argmax", "argmin", "median",
    "logsumexp", "abs", "nonzero",
})
DATA_DEPENDENT_FUNCTIONS = frozenset({
    "any", "all", "equal", "allclose", "isnan", "isinf", "isfinite", "count_nonzero", "sum", "mean",
    "max", "min", "norm", "linalg.norm", "argmax", "argmin", "median", "amax", "amin",
})

# -- autograd: what saves which tensors for backward (used by in-place rules, TR152) ----------
# Ops whose backward reads their *output*: modifying the output in place breaks backward.
SAVES_OUTPUT = frozenset({"exp", "sigmoid", "tanh", "softmax", "log_softmax", "sqrt", "rsqrt", "relu",
                          "nn.functional.relu", "nn.functional.softmax", "nn.functional.log_softmax",
                          "nn.functional.sigmoid", "nn.functional.tanh", "special.expit", "exp2", "pow"})
SAVES_OUTPUT_METHODS = frozenset({"exp", "sigmoid", "tanh", "softmax", "log_softmax", "sqrt", "rsqrt", "relu"})
# Ops whose backward reads their *inputs* (both operands for products, the base for log/pow/trig).
SAVES_INPUT = frozenset({"mul", "matmul", "mm", "bmm", "div", "log", "pow", "sin", "cos", "einsum", "prod",
                         "nn.functional.linear", "log1p", "reciprocal", "atan2", "outer"})
# In-place tensor methods (a trailing underscore, listed so data such as ``requires_grad_`` is excluded).
INPLACE_METHODS = frozenset({"add_", "sub_", "mul_", "div_", "pow_", "exp_", "log_", "clamp_", "clamp_min_",
                             "clamp_max_", "zero_", "fill_", "copy_", "masked_fill_", "masked_scatter_",
                             "scatter_", "scatter_add_", "index_add_", "index_fill_", "index_copy_", "neg_",
                             "abs_", "sqrt_", "sigmoid_", "tanh_", "relu_", "addcmul_", "addcdiv_", "lerp_",
                             "uniform_", "normal_", "fill_diagonal_", "tril_", "triu_", "clip_", "floor_",
                             "round_", "sign_", "t_", "transpose_", "squeeze_", "unsqueeze_", "resize_"})
