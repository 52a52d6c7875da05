"""Input validation shared by the public functions and the Triton ops. Every message names the function,
the argument and what was expected."""

import math
import numbers

import torch

FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
REDUCTIONS = ("mean", "sum", "none")


def samples(where, name, t):
    """t is a tensor of samples: floating, at least 1-d, non-empty batch."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{where}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.layout != torch.strided:
        raise TypeError(f"{where}: {name} must be a dense (strided) tensor, got layout {t.layout}; call "
                        f".to_dense() first")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{where}: {name} must be float32, float64, float16 or bfloat16, got {t.dtype}")
    if t.dim() < 1:
        raise ValueError(f"{where}: {name} must have a batch dimension, got a 0-d tensor")
    if t.shape[0] == 0:
        raise ValueError(f"{where}: {name} has an empty batch (shape {tuple(t.shape)})")


def same_as(where, name, t, ref_name, ref):
    """t matches ref in shape, dtype and device."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{where}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.device != ref.device:
        raise ValueError(f"{where}: {name} is on {t.device} but {ref_name} is on {ref.device}")
    if t.shape != ref.shape:
        raise ValueError(
            f"{where}: {name} must have the shape of {ref_name} {tuple(ref.shape)}, got {tuple(t.shape)}")
    if t.dtype != ref.dtype:
        raise TypeError(f"{where}: {name} must have the dtype of {ref_name} ({ref.dtype}), got {t.dtype}")


def per_sample(where, name, t, ref, dtype=None):
    """t is a (B,) vector on ref's device (of the given dtype, if any)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{where}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 1 or t.shape[0] != ref.shape[0]:
        raise ValueError(
            f"{where}: {name} must have shape ({ref.shape[0]},) (one value per sample), got {tuple(t.shape)}")
    if t.device != ref.device:
        raise ValueError(f"{where}: {name} is on {t.device} but the samples are on {ref.device}")
    if dtype is not None and t.dtype != dtype:
        raise TypeError(f"{where}: {name} must be {dtype}, got {t.dtype}")


def finite_number(where, name, value, *, minimum=0.0, strict=False):
    """A real number >= minimum (> minimum when strict); returns it as a float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{where}: {name} must be a number, got {type(value).__name__}")
    value = float(value)
    ok = math.isfinite(value) and (value > minimum if strict else value >= minimum)
    if not ok:
        relation = ">" if strict else ">="
        raise ValueError(f"{where}: {name} must be finite and {relation} {minimum:g}, got {value}")
    return value


def reduction(where, value):
    if value not in REDUCTIONS:
        raise ValueError(f"{where}: reduction must be one of {', '.join(REDUCTIONS)}; got {value!r}")
    return value


def generator(where, gen, device):
    """gen is None or a torch.Generator for tensors on `device`."""
    if gen is None:
        return
    if not isinstance(gen, torch.Generator):
        raise TypeError(f"{where}: generator must be a torch.Generator or None, got {type(gen).__name__}")
    if gen.device.type != device.type or (device.index is not None and gen.device.index is not None
                                          and gen.device.index != device.index):
        raise ValueError(f"{where}: generator is on {gen.device} but the samples are on {device}; make it with "
                         f"torch.Generator(device={str(device)!r})")


def representable(where, dtype, **scalars):
    """The penalty's scalars survive the conversion to the kernels' accumulation dtype (float32 for
    float32/float16/bfloat16 input): finite, and a positive one stays positive."""
    if dtype == torch.float64:
        return
    info = torch.finfo(torch.float32)
    for name, value in scalars.items():
        if abs(value) > info.max:
            raise ValueError(f"{where}: {name}={value:g} is beyond float32's range ({info.max:.3g}), in which "
                             f"{dtype} gradients are accumulated; use float64 gradients for such values")
        if value != 0 and abs(value) < info.tiny:
            raise ValueError(f"{where}: {name}={value:g} is below float32's smallest normal number "
                             f"({info.tiny:.3g}), in which {dtype} gradients are accumulated")
