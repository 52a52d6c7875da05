"""Where a convolutional critic's GP step loses time beyond its FLOP floor: the weight-gradient product of a
convolution's double backward, autograd's kernel against the one gpkernels uses.

In the outer backward of a gradient penalty, each convolution y = conv(x, W) needs, for the incoming V (the
gradient w.r.t. its input gradient), the weight gradient of conv(V, W) for the output gradient g. Autograd's
`_convolution_double_backward` computes it as a convolution over the batch (batch and channels swapped, the
output's spatial extent as the kernel); gpkernels (`gpkernels/_reroute.py`) calls `convolution_backward` with
V as the input, the kernel a plain backward uses for its weight gradient. Same FLOPs, other kernels.

Timed per layer shape of the benchmark critics (DCGAN 32/64, the ResNet's stem and blocks), fp32, CPU:
    forward       conv(x, W): the unit
    autograd      aten._convolution_double_backward(V, None, None, g, W, x, ..., mask [F, F, T]) -> dW
    gpkernels     aten.convolution_backward(g, V, W, ..., mask [F, T, F]) -> dW
Both results are checked against each other (max |a - b| / max |b| <= 1e-4) before timing; medians of --repeats
round-robin samples (each >= --min-sample-ms).

Usage (from the repository root):
    PYTHONPATH=. python benchmarks/bench_conv_weight_grad.py --threads 1
"""

import argparse
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)
from _common import (Timer, environment_lines, maxabs_rel_err, measure, output_dir, quartiles,  # noqa: E402
                     write_csv)

# (critic, layer, B, C_in, C_out, H (square input), kernel, stride, padding)
LAYERS = [
    ("dcgan32", "conv1", 64, 3, 64, 32, 4, 2, 1),
    ("dcgan32", "conv2", 64, 64, 128, 16, 4, 2, 1),
    ("dcgan32", "conv3", 64, 128, 256, 8, 4, 2, 1),
    ("dcgan64", "conv3", 64, 128, 256, 16, 4, 2, 1),
    ("dcgan64", "conv4", 64, 256, 512, 8, 4, 2, 1),
    ("resnet32", "stem", 64, 3, 64, 32, 3, 2, 1),
    ("resnet32", "block 16x16", 64, 64, 64, 16, 3, 1, 1),
    ("resnet32", "down", 64, 64, 64, 16, 4, 2, 1),
]
PROVIDERS = ("forward", "autograd", "gpkernels")


def calls(B, cin, cout, H, k, s, p):
    x, w = torch.randn(B, cin, H, H), torch.randn(cout, cin, k, k)
    g = torch.randn_like(torch.nn.functional.conv2d(x, w, None, s, p))
    v = torch.randn_like(x)
    geo = ([s, s], [p, p], [1, 1], False, [0, 0], 1)
    return {
        "forward": lambda: torch.nn.functional.conv2d(x, w, None, s, p),
        "autograd": lambda: torch.ops.aten._convolution_double_backward(v, None, None, g, w, x, *geo,
                                                                         [False, False, True])[2],
        "gpkernels": lambda: torch.ops.aten.convolution_backward(g, v, w, None, *geo, [False, True, False])[1],
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--min-sample-ms", type=float, default=20.0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device("cpu")
    timer = Timer(device)
    rows = []
    for critic, layer, *shape in LAYERS:
        fns = calls(*shape)
        err = maxabs_rel_err(fns["gpkernels"](), fns["autograd"]())
        if not err <= 1e-4:
            sys.exit(f"bench_conv_weight_grad: {critic} {layer}: the two weight gradients differ by {err:.3g}")
        samples = measure(fns, timer, args.repeats, args.min_sample_ms / 1e3, 2)
        med = {p: quartiles(samples[p])[1] * 1e3 for p in PROVIDERS}
        B, cin, cout, H, k, s, p = shape
        rows.append({"critic": critic, "layer": layer, "shape": f"B{B} {cin}->{cout} {H}x{H} k{k} s{s} p{p}",
                     "forward_ms": med["forward"], "autograd_ms": med["autograd"],
                     "gpkernels_ms": med["gpkernels"], "autograd_x_forward": med["autograd"] / med["forward"],
                     "gpkernels_x_forward": med["gpkernels"] / med["forward"],
                     "speedup": med["autograd"] / med["gpkernels"], "rel_err": err})
        print(f"{critic} {layer}: forward {med['forward']:.3g} ms, autograd dW {med['autograd']:.3g} ms, "
              f"gpkernels dW {med['gpkernels']:.3g} ms (x{rows[-1]['speedup']:.2f})", file=sys.stderr)
    out = output_dir(args.out, device, [args.threads])
    write_csv(os.path.join(out, "bench_conv_weight_grad.csv"), rows)
    head = "| critic | layer | shape | forward ms | autograd dW ms | gpkernels dW ms | autograd / gpkernels |"
    lines = ["# The weight gradient of a convolution's double backward (bench_conv_weight_grad.py)", "",
             *environment_lines(device), f"- {args.repeats} round-robin samples, medians", "",
             head, "|:---|:---|:---|---:|---:|---:|---:|"]
    lines += [f"| {r['critic']} | {r['layer']} | {r['shape']} | {r['forward_ms']:.3g} | {r['autograd_ms']:.3g} "
              f"| {r['gpkernels_ms']:.3g} | {r['speedup']:.2f} |" for r in rows]
    with open(os.path.join(out, "bench_conv_weight_grad.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
