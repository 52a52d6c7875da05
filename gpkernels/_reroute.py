"""The critic's ops at the penalty points, without the second-order work autograd does on zeros.

Why. A gradient penalty differentiates the critic's input gradient, so the outer backward runs through the
graph that the inner `autograd.grad(..., create_graph=True)` built. For a piecewise-linear critic that
costs two products per layer (one forward-like product for the incoming gradient, one weight-gradient
product): 2.0x the FLOPs of one critic forward. Autograd does more, on zeros:
- the backward formulas of ReLU, LeakyReLU, Hardtanh/ReLU6, PReLU, the pools and reflect/replicate padding
  give their saved input an edge with a materialised zero derivative (`zeros_like`), and the outer backward
  then pushes those zeros back through every layer of the forward graph of D(x_hat) (4.0x instead of 2.0x);
- a convolution's double backward computes the weight-gradient product as a convolution over the batch
  (`_convolution_double_backward`), 1.5x to 8.7x slower on the CPU than `convolution_backward`'s own
  weight-gradient kernel for the same FLOPs (measured on DCGAN/ResNet layer shapes, 1 thread).

What. While `PenaltyPoints` is active (gradient_penalty's critic call), these calls on tensors that require
grad run the same ATen forward kernels, with a backward that reads detached saved tensors, so the double
backward has no edge into the forward graph and nothing is computed there on zeros:
- ReLU (`torch.relu`, `Tensor.relu`, `F.relu`, `nn.ReLU`, and `relu_`), LeakyReLU (`F.leaky_relu`,
  `nn.LeakyReLU`, `leaky_relu_`) and Hardtanh/ReLU6 (`F.hardtanh`, `F.relu6`, `nn.Hardtanh`, `nn.ReLU6`,
  `hardtanh_`), out of place and **in place**: an in-place call still modifies the caller's tensor, which then
  holds exactly what it holds without gpkernels. Their backward reads the tensor autograd's own formula
  reads (the output for ReLU and the in-place forms, else the input), so later in-place changes are allowed
  or refused as without gpkernels; values and gradients are bit for bit autograd's.
- PReLU (`F.prelu`, `nn.PReLU`): the slope's second-order gradient is kept (it is real); only the
  zero edge to the input goes.
- Average and max pooling (1-3d, adaptive too) and `F.pad` in reflect/replicate/circular mode: the ATen op's
  own backward, on a detached copy of the input's graph; bit for bit autograd's.
- Convolutions (`F.conv1d/2d/3d`, `nn.Conv*d`): the same forward and first derivatives, and a double
  backward whose weight-gradient product uses `convolution_backward` (equal to autograd's to rounding:
  1e-15 relative in float64).
Everything else passes through unchanged, so a curved activation (tanh, ELU, GELU, SiLU, softplus), a
normalisation layer, or an op with real second-order terms keeps autograd's exact formulas. RReLU is left
to autograd (random slopes in training mode; rare in critics), and so are transposed convolutions,
unbatched inputs, `padding='same'` with uneven padding, and in-place calls on leaves or views (autograd's
own errors and view semantics then apply unchanged).

A parameter whose penalty gradient is exactly zero gets no gradient (None) instead of a tensor of zeros.
"""

from typing import Callable, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch.autograd import Function
from torch.overrides import TorchFunctionMode

aten = torch.ops.aten


def _executes(ctx, i):
    """Whether the running backward pass needs the gradient of input i: `needs_input_grad` is fixed at the
    forward, but the inner autograd.grad w.r.t. the points alone never uses a weight's gradient, and a
    weight-gradient product computed there would be thrown away."""
    if not ctx.needs_input_grad[i]:
        return False
    node = ctx.next_functions[i][0]
    if node is None:
        return False
    try:
        return torch._C._will_engine_execute_node(node)
    except RuntimeError:
        # Raised only for a leaf that the running autograd.grad() captures: one of its inputs, so needed.
        return True


# ------------------------------------------------------------------------ piecewise-linear activations

class _Mask(NamedTuple):
    """How an activation's backward masks the incoming gradient: kind in {"relu", "leaky", "hardtanh"}."""
    kind: str
    a: float = 0.0        # leaky: the negative slope; hardtanh: the lower bound
    b: float = 0.0        # hardtanh: the upper bound
    inplace: bool = False


class _PiecewiseLinear(Function):
    """y = the original call (in place where it was); backward = ATen's backward kernel against a detached
    saved tensor, so its own derivative (w.r.t. the gradient only) never reaches the forward graph."""

    @staticmethod
    def forward(ctx, x, run, mask):
        # An undefined incoming gradient stays undefined: zeros would run the forward graph's backward.
        ctx.set_materialize_grads(False)
        y = run()
        if mask.inplace:
            ctx.mark_dirty(x)
        # Save what autograd's own formula saves (the output for ReLU and the in-place forms, else the input),
        # so that a later in-place change of the other tensor is as legal, or as illegal, as without us.
        from_output = mask.inplace or mask.kind == "relu"
        ctx.mask, ctx.from_output = mask, from_output
        ctx.save_for_backward(y.detach() if from_output else x.detach())
        return y

    @staticmethod
    def backward(ctx, grad):
        if grad is None:
            return None, None, None
        (saved,) = ctx.saved_tensors
        m = ctx.mask
        if m.kind == "relu":
            out = aten.threshold_backward(grad, saved, 0)
        elif m.kind == "leaky":
            out = aten.leaky_relu_backward(grad, saved, m.a, ctx.from_output)
        else:
            out = aten.hardtanh_backward(grad, saved, m.a, m.b)
        return out, None, None


def _relu(input, inplace=False):
    return _Mask("relu", inplace=bool(inplace))


def _leaky(input, negative_slope=0.01, inplace=False):
    if isinstance(negative_slope, torch.Tensor):
        return None
    # autograd itself refuses an in-place LeakyReLU with a negative slope at the backward: keep its error.
    if inplace and negative_slope < 0:
        return None
    return _Mask("leaky", float(negative_slope), inplace=bool(inplace))


def _hardtanh(input, min_val=-1.0, max_val=1.0, inplace=False):
    if isinstance(min_val, torch.Tensor) or isinstance(max_val, torch.Tensor) or not min_val < max_val:
        return None
    return _Mask("hardtanh", float(min_val), float(max_val), bool(inplace))


def _relu6(input, inplace=False):
    return _Mask("hardtanh", 0.0, 6.0, bool(inplace))


# func -> a function with its signature returning the _Mask (None: pass the call through).
_ACTIVATIONS = {
    torch.relu: _relu, torch.Tensor.relu: _relu, F.relu: _relu,
    torch.relu_: lambda input: _relu(input, True), torch.Tensor.relu_: lambda input: _relu(input, True),
    F.leaky_relu: _leaky,
    F.leaky_relu_: lambda input, negative_slope=0.01: _leaky(input, negative_slope, True),
    F.hardtanh: _hardtanh,
    F.hardtanh_: lambda input, min_val=-1.0, max_val=1.0: _hardtanh(input, min_val, max_val, True),
    F.relu6: _relu6,
}


class _PReLU(Function):
    """y = prelu(x, w) with w of 1 or C (= x.shape[1]) slopes.
    dL/dx = g where x > 0 else w g (ATen's formula), masked by a detached x: its x-edge would carry autograd's
    zero. dL/dw = sum over all but the channel dim of x g where x <= 0, from the attached x."""

    @staticmethod
    def forward(ctx, x, w, run):
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(x, w)
        return run()

    @staticmethod
    def backward(ctx, grad):
        if grad is None:
            return None, None, None
        x, w = ctx.saved_tensors
        shaped = w if w.numel() == 1 else w.view(-1, *([1] * (x.dim() - 2)))
        positive = x.detach() > 0
        gx = torch.where(positive, grad, shaped * grad) if ctx.needs_input_grad[0] else None
        gw = None
        # Needed in the inner pass only where the slope depends on the input; then x's edge is real.
        if _executes(ctx, 1):
            per = torch.where(positive, torch.zeros_like(grad), x * grad)
            gw = per.sum() if w.numel() == 1 else per.transpose(0, 1).reshape(w.numel(), -1).sum(1)
            gw = gw.reshape(w.shape)
        return gx, gw, None


def _prelu(input, weight):
    ok = (isinstance(weight, torch.Tensor) and input.dim() >= 1
          and (weight.numel() == 1 or (input.dim() >= 2 and weight.numel() == input.shape[1])))
    return ok or None


# ------------------------------------------------------------------------ linear ops with a zero edge

class _OwnGraph(Function):
    """y = run(x) for an op that is linear in x (pooling, padding): its backward is the ATen op's own,
    taken on a private graph rooted at a detached copy of x, so the zero that autograd's double backward
    sends to the op's input stops at that private leaf."""

    @staticmethod
    def forward(ctx, x, run):
        ctx.set_materialize_grads(False)
        with torch.enable_grad():
            leaf = x.detach().requires_grad_(True)
            y = run(leaf)
        ctx.leaf, ctx.out = leaf, y
        return y.detach()

    @staticmethod
    def backward(ctx, grad):
        if grad is None:
            return None, None
        (gx,) = torch.autograd.grad(ctx.out, ctx.leaf, grad, create_graph=torch.is_grad_enabled(),
                                    retain_graph=True)
        return gx, None


def _max_pool(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    return not return_indices or None


def _adaptive_max(input, output_size, return_indices=False):
    return not return_indices or None


def _pad(input, pad, mode="constant", value=None):
    return mode in ("reflect", "replicate", "circular") or None


def _avg_pool(input, *args, **kwargs):
    return True


_LINEAR = {
    F.avg_pool1d: _avg_pool, F.avg_pool2d: _avg_pool, F.avg_pool3d: _avg_pool,
    F.adaptive_avg_pool1d: lambda input, output_size: True,
    F.adaptive_avg_pool2d: lambda input, output_size: True,
    F.adaptive_avg_pool3d: lambda input, output_size: True,
    F.max_pool1d: _max_pool, F.max_pool2d: _max_pool, F.max_pool3d: _max_pool,
    F.adaptive_max_pool1d: _adaptive_max, F.adaptive_max_pool2d: _adaptive_max,
    F.adaptive_max_pool3d: _adaptive_max,
    F.pad: _pad,
}


# ---------------------------------------------------------------------------------------- convolution

class _Geometry(NamedTuple):
    stride: list
    padding: list
    dilation: list
    groups: int

    def convolve(self, x, w, b=None):
        """What F.conv1d/2d/3d compute for a batched input (they call this op with these arguments)."""
        return aten.convolution(x, w, b, self.stride, self.padding, self.dilation, False,
                                [0] * len(self.stride), self.groups)

    def backward(self, grad, x, w, bias, mask):
        """aten.convolution_backward(grad, x, w) -> (dx, dw, db), each only where mask says."""
        return aten.convolution_backward(grad, x, w, [w.shape[0]] if bias else None, self.stride,
                                         self.padding, self.dilation, False, [0] * len(self.stride),
                                         self.groups, mask)


class _Conv(Function):
    """y = conv(x, w, b). dx = _ConvInputGrad(grad, w), an op with its own efficient backward; dw, db from
    convolution_backward, computed only where this backward pass uses them."""

    @staticmethod
    def forward(ctx, x, w, b, geometry):
        ctx.set_materialize_grads(False)
        ctx.geometry, ctx.bias = geometry, b is not None
        ctx.save_for_backward(x, w)
        return geometry.convolve(x, w, b)

    @staticmethod
    def backward(ctx, grad):
        if grad is None:
            return None, None, None, None
        x, w = ctx.saved_tensors
        gx = _ConvInputGrad.apply(grad, w, x.detach(), ctx.geometry) if _executes(ctx, 0) else None
        want_w, want_b = _executes(ctx, 1), ctx.bias and _executes(ctx, 2)
        gw = gb = None
        if want_w or want_b:
            _, gw, gb = ctx.geometry.backward(grad, x, w, ctx.bias, [False, want_w, want_b])
        return gx, gw, gb, None


class _ConvInputGrad(Function):
    """dx = conv_input_grad(g, w) (x: only its shape and layout are read).
    Its derivative for an incoming V (shape of x):
        w.r.t. g: conv(V, w)                       the forward convolution of V
        w.r.t. w: the weight gradient of conv(V, w) for the output gradient g, i.e. convolution_backward
                  with V as the input: what autograd computes as a convolution over the batch, slower."""

    @staticmethod
    def forward(ctx, grad, w, x, geometry):
        ctx.set_materialize_grads(False)
        ctx.geometry = geometry
        ctx.save_for_backward(grad, w)
        return geometry.backward(grad, x, w, False, [True, False, False])[0]

    @staticmethod
    def backward(ctx, v):
        if v is None:
            return None, None, None, None
        grad, w = ctx.saved_tensors
        g_grad = ctx.geometry.convolve(v, w) if _executes(ctx, 0) else None
        g_w = ctx.geometry.backward(grad, v, w, False, [False, True, False])[1] if _executes(ctx, 1) else None
        return g_grad, g_w, None, None


def _conv_geometry(dims):
    def parse(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
        if not isinstance(weight, torch.Tensor) or input.dim() != dims + 2 or weight.dim() != dims + 2:
            return None

        def each(v):
            v = [v] * dims if isinstance(v, int) else list(v)
            return v if len(v) == dims and all(isinstance(e, int) for e in v) else None

        stride, dilation = each(stride), each(dilation)
        if stride is None or dilation is None or not isinstance(groups, int):
            return None
        if padding == "valid":
            padding = 0
        elif padding == "same":
            total = [d * (k - 1) for d, k in zip(dilation, weight.shape[2:])]
            if any(t % 2 for t in total) or any(s != 1 for s in stride):
                return None
            padding = [t // 2 for t in total]
        padding = each(padding) if not isinstance(padding, str) else None
        return None if padding is None else _Geometry(stride, padding, dilation, groups)
    return parse


_CONVS = {F.conv1d: _conv_geometry(1), F.conv2d: _conv_geometry(2), F.conv3d: _conv_geometry(3)}


# ------------------------------------------------------------------------------------------ the mode

def _reroute(func, args, kwargs) -> Optional[Callable[[], torch.Tensor]]:
    """A zero-argument callable that runs func's rerouted form, or None to pass the call through."""
    if not args or not isinstance(args[0], torch.Tensor):
        return None
    x = args[0]
    if not x.is_floating_point():
        return None

    def call():
        return func(*args, **kwargs)

    try:
        if func in _ACTIVATIONS:
            mask = _ACTIVATIONS[func](*args, **kwargs)
            if mask is None or not x.requires_grad or (mask.inplace and (x.is_leaf or x._is_view())):
                return None
            return lambda: _PiecewiseLinear.apply(x, call, mask)
        if func in _CONVS:
            geometry = _CONVS[func](*args, **kwargs)
            w = args[1] if len(args) > 1 else kwargs.get("weight")
            b = args[2] if len(args) > 2 else kwargs.get("bias")
            if geometry is None or not (x.requires_grad or w.requires_grad):
                return None
            if torch.is_autocast_enabled(x.device.type):
                # Autocast runs a convolution in its lower precision: cast as it would, before the op, so
                # that the saved tensors (and so the backward) have the dtype autograd's own would have.
                # Autocast leaves float64 alone.
                low = torch.get_autocast_dtype(x.device.type)
                x, w, b = (t.to(low) if t is not None and t.is_floating_point() and t.dtype != torch.float64
                           else t for t in (x, w, b))
            return lambda: _Conv.apply(x, w, b, geometry)
        if func is torch.prelu:
            # Under autocast, prelu's dtype policy is the dispatcher's: leave the call to it.
            if _prelu(*args, **kwargs) is None or not x.requires_grad or torch.is_autocast_enabled(x.device.type):
                return None
            w = args[1] if len(args) > 1 else kwargs["weight"]
            return lambda: _PReLU.apply(x, w, call)
        if func in _LINEAR:
            if _LINEAR[func](*args, **kwargs) is None or not x.requires_grad:
                return None
            return lambda: _OwnGraph.apply(x, lambda leaf: func(leaf, *args[1:], **kwargs))
    except TypeError:  # arguments that do not bind: let the original call raise its own error
        return None
    return None


# Calls that compute statistics over the batch: batch norm with batch statistics (training mode, or no
# running statistics), and SyncBatchNorm's statistics across processes.
_BATCH_NORMS = {F.batch_norm: (5, "training"), torch.batch_norm: (5, "training")}
_BATCH_STATS = (torch.batch_norm_stats, torch.batch_norm_gather_stats_with_counts)


class Coupling(NamedTuple):
    """One call of the critic that mixes the samples of its batch."""
    op: str                           # e.g. "batch_norm (batch statistics)"
    shape: tuple                      # the input's shape
    weight: Optional[torch.Tensor]    # the affine weight, if any (to name the module that owns it)


def _coupling(func, args, kwargs):
    """A Coupling when func(*args, **kwargs) mixes the samples of its batch, else None."""
    if func in _BATCH_NORMS:
        index, name = _BATCH_NORMS[func]
        training = args[index] if len(args) > index else kwargs.get(name, False)
        if not training:
            return None
        x = args[0]
        weight = args[3] if func is F.batch_norm and len(args) > 3 else (
            args[1] if func is torch.batch_norm and len(args) > 1 else kwargs.get("weight"))
        return Coupling("batch_norm with batch statistics", tuple(x.shape), weight)
    if func in _BATCH_STATS:
        return Coupling(f"{func.__name__} (SyncBatchNorm)", tuple(args[0].shape), None)
    return None


class PenaltyPoints(TorchFunctionMode):
    """The critic's calls at the penalty points. It records every call that mixes the samples of a batch
    (`couplings`: batch norm with batch statistics, whatever object makes the call), and with reroute=True
    runs the calls listed in this module's docstring in their rerouted forms."""

    def __init__(self, reroute=True):
        super().__init__()
        self.reroute = reroute
        self.couplings = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _BATCH_NORMS or func in _BATCH_STATS:
            seen = _coupling(func, args, kwargs)
            if seen is not None:
                self.couplings.append(seen)
        rerouted = _reroute(func, args, kwargs) if self.reroute else None
        if rerouted is None:
            return func(*args, **kwargs)
        return rerouted()

