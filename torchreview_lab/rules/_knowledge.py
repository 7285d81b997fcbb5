"""PyTorch knowledge as data: what allocates, what syncs, what breaks a graph.

Rules consult these tables instead of hard-coding if-chains, so adding a factory or a syncing method
is a one-line change.
"""
from __future__ import annotations

import re

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
# torch functions that combine their tensor arguments (which must all live on one device).
COMBINING_FUNCTIONS = frozenset({"cat", "stack", "where", "matmul", "bmm", "einsum"})
# Methods that move a freshly built tensor to a device (``torch.zeros(n).to(x.device)``).
DEVICE_MOVES = frozenset({"to", "cuda", "type_as", "to_dense"})
# Joins that copy every input into a new buffer (torch, and numpy as ``numpy.<name>``).
JOIN_FUNCTIONS = frozenset({"cat", "concat", "concatenate", "stack", "vstack", "hstack", "dstack", "row_stack",
                            "column_stack", "append"})
# Tensor methods that copy to the host or read a value: a host-device sync on CUDA.
SYNC_METHODS = frozenset({"item", "tolist", "numpy", "cpu", "nonzero", "any", "all"})
STRICT_SYNC_METHODS = frozenset({"item", "tolist", "numpy", "cpu", "nonzero"})
# Calls that break a torch.compile graph when reached inside forward / a compiled function.
GRAPH_BREAK_METHODS = frozenset({"item", "tolist", "numpy", "nonzero"})
GRAPH_BREAK_BUILTINS = frozenset({"print", "input", "breakpoint", "open"})
# Reductions that add up their elements (a mean is a scaled sum).
SUM_REDUCTIONS = frozenset({"sum", "mean", "nansum", "nanmean"})
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
# Reductions whose result, subtracted, zero-centres a tensor (``x - x.mean(dim, keepdim=True)``).
CENTRING_REDUCTIONS = frozenset({"mean", "median", "nanmean"})
# Producers of small integer values (counts, ranges, 0/1 masks): their prefix sums are exact in float32.
EXACT_SOURCES = frozenset({"ones", "ones_like", "arange", "zeros", "zeros_like", "full", "randint", "bincount"})
EXACT_METHODS = frozenset({"new_ones", "new_zeros", "new_full"})
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

# -- losses and the activations before them (TR210, TR607) ----------------------------------
# What each loss expects as its input (first argument), by the last part of its torch name.
LOSS_INPUTS = {"cross_entropy": "logits", "CrossEntropyLoss": "logits",
               "binary_cross_entropy_with_logits": "binary logits", "BCEWithLogitsLoss": "binary logits",
               "nll_loss": "log-probabilities", "NLLLoss": "log-probabilities", "kl_div": "log-probabilities",
               "KLDivLoss": "log-probabilities", "ctc_loss": "log-probabilities", "CTCLoss": "log-probabilities"}
# What an activation function or module outputs, by the last part of its torch name.
ACTIVATION_OUTPUTS = {"softmax": "softmax", "sigmoid": "sigmoid", "expit": "sigmoid", "log_softmax": "log_softmax",
                      "Softmax": "softmax", "Sigmoid": "sigmoid", "LogSoftmax": "log_softmax"}
# Activations whose output is the wrong input for each kind of loss input. log_softmax is right for the
# log-prob losses and harmless for cross_entropy (log_softmax is idempotent).
WRONG_LOSS_INPUTS = {"logits": ("softmax", "sigmoid"), "log-probabilities": ("softmax", "sigmoid"),
                     "binary logits": ("softmax", "sigmoid", "log_softmax")}
# Tensor methods that keep probabilities probabilities (shape changes, copies, dtype, clamping).
PROBABILITY_PRESERVING = frozenset({"view", "reshape", "flatten", "contiguous", "squeeze", "unsqueeze", "permute",
                                    "transpose", "float", "double", "to", "clone", "cpu", "cuda", "view_as",
                                    "reshape_as", "t", "clamp", "clamp_min", "clip"})

# Sigmoid functions and modules, binary cross-entropy on probabilities, nn.Sequential (full torch names).
SIGMOID_FUNCTIONS = frozenset({"sigmoid", "nn.functional.sigmoid", "special.expit"})
SIGMOID_MODULES = frozenset({"nn.Sigmoid", "nn.modules.activation.Sigmoid", "nn.modules.Sigmoid"})
BCE_FUNCTIONS = frozenset({"nn.functional.binary_cross_entropy"})
BCE_MODULES = frozenset({"nn.BCELoss", "nn.modules.loss.BCELoss", "nn.modules.BCELoss"})
SEQUENTIAL_CLASSES = frozenset({"nn.Sequential", "nn.modules.container.Sequential"})
# Module methods that return the module itself (moved, cast or switched mode): ``Net().to(device)``.
MODULE_MOVES = frozenset({"to", "cuda", "cpu", "train", "eval", "float", "double", "half"})
# Shape and dtype ops between an activation and the loss: they do not change what the values are.
SHAPE_AND_DTYPE_METHODS = frozenset({"squeeze", "view", "reshape", "flatten", "unsqueeze", "float", "double", "to",
                                     "view_as", "reshape_as", "contiguous", "ravel"})

# -- nn.Module registration (TR608) ----------------------------------------------------------
# torch.nn namespaces and classes that are not nn.Module subclasses.
NN_NON_MODULE_PREFIXES = ("nn.functional.", "nn.init.", "nn.utils.", "nn.attention.", "nn.grad.", "nn.common_types.")
NN_NON_MODULE_CLASSES = frozenset({"Buffer", "UninitializedBuffer", "UninitializedParameter"})
# Modules without parameters, buffers or a train/eval difference: losing them from registration changes nothing.
STATELESS_MODULES = re.compile(
    r"(ReLU6?|LeakyReLU|R?ReLU|GELU|SiLU|Mish|C?ELU|SELU|GLU|Tanh|Sigmoid|LogSigmoid|Softmax2?d?|LogSoftmax"
    r"|Softmin|Softplus|Softsign|Hardtanh|Hardswish|Hardsigmoid|Tanhshrink|Softshrink|Hardshrink|Threshold"
    r"|Identity|Flatten|Unflatten|(Adaptive)?(Max|Avg)Pool[123]d|Upsample\w*|Pixel(Un)?Shuffle"
    r"|(Zero|Constant|Reflection|Replication|Circular)Pad[123]d)")
# The registering container for a plain list/dict of modules or parameters.
REGISTERING_CONTAINERS = {("list", "module"): "ModuleList", ("dict", "module"): "ModuleDict",
                          ("list", "param"): "ParameterList", ("dict", "param"): "ParameterDict"}
# Calls that register a submodule or parameter on a module.
REGISTERING_CALLS = frozenset({"add_module", "register_module", "register_parameter", "setattr"})
# Builtins that read their argument without keeping it (handing a container to them registers nothing).
NON_RETAINING_BUILTINS = frozenset(f"builtins.{h}" for h in (
    "len", "enumerate", "zip", "reversed", "iter", "isinstance", "print", "range", "str", "repr", "min", "max"))

# Out-of-place tensor ops (TR613): they return a new tensor and leave the input as it was, so one
# called as a statement does nothing. These names mean "out of place" on any object that has them
# (numpy and pandas included); their in-place twins end in "_".
OUT_OF_PLACE_TENSOR_ONLY = frozenset({
    "masked_fill", "masked_scatter", "index_fill", "index_add", "index_copy", "index_put", "scatter_add", "scatter_reduce", "clamp", "clamp_min", "clamp_max", "clip", "unsqueeze", "squeeze",
    "permute", "contiguous", "view", "view_as", "reshape", "reshape_as", "expand", "expand_as", "repeat",
    "transpose", "flatten", "unflatten", "movedim", "type_as", "nan_to_num", "addcmul", "addcdiv", "lerp",
    "sigmoid", "relu", "softmax", "log_softmax", "tril", "triu", "masked_select",
})
# Out of place on tensors, but in place on an nn.Module (``to``/``cuda``/``cpu``/``float``/...) or
# common on other objects (``set.add``, ``socket.detach``, matplotlib's ``ax.scatter``): TR613 flags them
# only on a known tensor.
OUT_OF_PLACE_WHEN_TENSOR = frozenset({
    "to", "cuda", "cpu", "float", "half", "double", "bfloat16", "long", "int", "bool", "type", "detach",
    "clone", "add", "sub", "mul", "div", "pow", "exp", "log", "abs", "sqrt", "neg", "t", "round", "floor",
    "ceil", "sign", "tanh", "where", "scatter",
})

# -- training-loop protocol (TR614-TR618) ----------------------------------------------------
# Gradient clipping functions of torch.nn.utils (they modify ``.grad`` in place).
CLIP_GRAD_FUNCTIONS = frozenset({"clip_grad_norm_", "clip_grad_value_", "clip_grad_norm", "clip_grads_with_norm_"})
# Loss scalers whose ``scale(loss).backward()`` leaves gradients multiplied by the scale until ``unscale_``.
GRAD_SCALER_CLASSES = frozenset({"GradScaler", "ShardedGradScaler"})
# Samplers that shuffle by a seed plus the epoch set with ``set_epoch`` (the same order every epoch without it).
EPOCH_SEEDED_SAMPLERS = frozenset({"DistributedSampler", "ElasticDistributedSampler"})
# Module methods iterating its tensors: "tensor" yields them, "named" yields (name, tensor) pairs.
PARAMETER_ITERATORS = {"parameters": "tensor", "buffers": "tensor", "named_parameters": "named",
                       "named_buffers": "named"}
# Tensor methods that keep a loss's scale (so a division of the result is a division of the loss).
SCALE_KEEPING_METHODS = frozenset({"mean", "sum", "nanmean", "nansum", "float", "double", "half", "bfloat16", "to",
                                   "squeeze", "view", "reshape", "flatten", "contiguous", "clone", "cuda", "cpu",
                                   "type_as", "add", "sub", "add_", "sub_"})
# Methods and torch functions that divide or multiply a tensor: a loss passed through one counts as scaled.
SCALING_OPS = frozenset({"div", "div_", "divide", "true_divide", "true_divide_", "__truediv__", "mul", "mul_",
                         "multiply", "__mul__"})
