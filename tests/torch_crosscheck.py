#!/usr/bin/env python3
"""Cross-checks opnorm's reference network fmnist_cnn against PyTorch.

Usage: torch_crosscheck.py <directory written by torch_crosscheck_dump>

Rebuilds fmnist_cnn as a torch.nn.Sequential with the same module indices
(0 Standardize with buffers "mean" and "std", 1 Conv2d, 2 BatchNorm2d,
3 ReLU, ...), loads opnorm's checkpoint with load_state_dict(strict=True)
and recomputes, on the same probe batch:
  * eval-mode logits, input and parameter gradients of the mean
    cross-entropy;
  * the top singular value and right singular vector of the input Jacobian
    of two examples (torch.autograd.functional.jacobian, then an SVD in
    double), against opnorm's power-iteration kernel (exact JVP);
  * one l2 FGM step x + eps g / ||g||, clipped to [0, 1], with g the
    per-example cross-entropy gradient, against opnorm's make_fgm<l2>;
  * train-mode logits, input gradient and every parameter gradient (by
    state_dict name) of the mean cross-entropy;
  * the state after that train-mode pass (BatchNorm's running statistics
    and counters), against the checkpoint opnorm saved after its own pass.
Eval-mode quantities come first because a train-mode pass moves the running
statistics, in PyTorch as in opnorm.

Prints a table of max relative errors, max |opnorm - torch| / max |torch|
per tensor, and exits 1 if any exceeds 1e-4 (float32 on both sides, summed
in different orders), 0 otherwise, 77 (ctest SKIP_RETURN_CODE) when torch
cannot be imported. One exception to that scale: in train mode the gradient
of a convolution bias that BatchNorm follows is exactly zero (BatchNorm
subtracts every per-channel constant), so both sides hold rounding noise and
max |torch| is no scale at all; there the error is measured against the
per-channel sum of |dL/d(conv output)|, the terms whose cancellation leaves
that noise.
"""
import os
import sys

# torch_models (beside this file) imports torch, or exits 77 (ctest: skipped).
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_models import Standardize, load_checkpoint, read_safetensors, run, torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

TOLERANCE = 1e-4


def fmnist_cnn():
    """opnorm::fmnist_cnn, module for module (include/opnorm/nn/networks.hpp)."""
    nn = torch.nn

    def conv_block(cin, cout):
        return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]

    return nn.Sequential(
        Standardize([0.2860], [0.3530]),                                    # 0
        *conv_block(1, 32), *conv_block(32, 32), nn.MaxPool2d(2),           # 1-7
        *conv_block(32, 64), *conv_block(64, 64), nn.MaxPool2d(2),          # 8-14
        nn.Flatten(), nn.Linear(64 * 7 * 7, 256), nn.ReLU(), nn.Linear(256, 10))  # 15-18


class Table:
    """Collects (quantity, error) rows; an error above TOLERANCE fails."""

    def __init__(self):
        self.rows = []

    def add(self, name, error):
        self.rows.append((name, float(error)))

    def compare(self, name, ours, theirs, scale=None):
        """max |ours - theirs| / scale, by default scale = max |theirs|."""
        if ours.shape != theirs.shape:
            raise AssertionError(f"{name}: opnorm has shape {tuple(ours.shape)}, torch {tuple(theirs.shape)}")
        ours, theirs = ours.double(), theirs.detach().double()
        if scale is None:
            scale = theirs.abs().max().item()
        difference = (ours - theirs).abs().max().item()
        self.add(name, difference / scale if scale > 0 else difference)

    def report(self):
        width = max(len(name) for name, _ in self.rows)
        print(f"{'quantity'.ljust(width)}  max rel. error")
        failed = []
        for name, error in self.rows:
            bad = not error <= TOLERANCE  # NaN fails too
            print(f"{name.ljust(width)}  {error:.2e}{'  > tolerance' if bad else ''}")
            if bad:
                failed.append(name)
        return failed


def compare_gradients(table, model, probe, prefix, label, vanishing=None):
    """Compares probe[prefix + name] with p.grad for every parameter.
    vanishing maps names of gradients that are exactly zero to the scale of
    their rounding noise (see the module docstring)."""
    vanishing = vanishing or {}
    parameters = dict(model.named_parameters())
    dumped = {name[len(prefix):] for name in probe if name.startswith(prefix)}
    if dumped != set(parameters):
        raise AssertionError(f"{prefix}*: gradients dumped for {sorted(dumped)}, "
                             f"torch has parameters {sorted(parameters)}")
    for name, p in parameters.items():
        if name in vanishing:
            table.compare(f"{label} {name} (exactly 0; / sum|dL/dz|)", probe[prefix + name], p.grad,
                          scale=vanishing[name])
        else:
            table.compare(f"{label} {name}", probe[prefix + name], p.grad)


def main(directory):
    _, after_train = read_safetensors(os.path.join(directory, "after_train.safetensors"))
    metadata, probe = read_safetensors(os.path.join(directory, "probe.safetensors"))
    eps = float(metadata["fgm_eps"])

    model = load_checkpoint(fmnist_cnn(), os.path.join(directory, "fmnist_cnn.safetensors"))
    x = probe["input"]
    y = probe["labels"].long()
    table = Table()

    # ---- Eval mode: nothing in the model changes. -------------------------
    model.eval()
    model.zero_grad(set_to_none=True)
    x_eval = x.clone().requires_grad_(True)
    logits = model(x_eval)
    table.compare("eval logits", probe["eval_logits"], logits)
    F.cross_entropy(logits, y).backward()
    table.compare("eval input grad (mean CE)", probe["eval_input_grad"], x_eval.grad)
    compare_gradients(table, model, probe, "eval_grad.", "eval grad")

    # Power iteration: sigma_1 and v_1 of J_f(x_i) from an SVD of the exact
    # Jacobian. v is defined up to sign, so the sign is aligned first.
    gaps = []
    for i in range(probe["power_input"].shape[0]):
        xi = probe["power_input"][i].reshape(-1)
        jacobian = torch.autograd.functional.jacobian(lambda z: model(z.view(1, 1, 28, 28)).view(-1), xi)
        _, s, vh = torch.linalg.svd(jacobian.double(), full_matrices=False)
        v_ours = probe["power_v"][i].reshape(-1).double()
        cosine = torch.dot(v_ours, vh[0]).item() / v_ours.norm().item()
        sign = 1.0 if cosine >= 0 else -1.0
        table.add(f"power sigma_1 [{i}]", abs(probe["power_sigma"][i].item() - s[0].item()) / s[0].item())
        table.add(f"power 1 - |cos(v, v_1)| [{i}]", 1.0 - abs(cosine))
        table.compare(f"power v [{i}]", v_ours, sign * vh[0])
        gaps.append(f"sigma_2 / sigma_1 = {s[1].item() / s[0].item():.3f}")

    # One l2 FGM step from x: per-example gradient of the summed loss.
    x_fgm = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(model(x_fgm), y, reduction="sum"), x_fgm)
    norms = g.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    table.compare("fgm l2 iterate (eps 1.0)", probe["fgm_adversarial"], (x + eps * g / norms).clamp(0.0, 1.0))

    # ---- Train mode: batch statistics; running statistics move. -----------
    model.train()
    model.zero_grad(set_to_none=True)
    # The bias gradient of a convolution that BatchNorm follows is the
    # per-channel sum of dL/d(conv output), which cancels to zero; the sum
    # of the magnitudes of its terms is the scale of what is left.
    cancellation_scales = {}
    handles = []
    for index, (module, after) in enumerate(zip(model, list(model)[1:])):
        if isinstance(module, torch.nn.Conv2d) and isinstance(after, torch.nn.BatchNorm2d):
            def keep_scale(_, __, output, name=f"{index}.bias"):
                output.register_hook(
                    lambda g: cancellation_scales.__setitem__(name, g.abs().sum(dim=(0, 2, 3)).max().item()))
            handles.append(module.register_forward_hook(keep_scale))
    x_train = x.clone().requires_grad_(True)
    logits = model(x_train)
    table.compare("train logits", probe["train_logits"], logits)
    F.cross_entropy(logits, y).backward()
    for handle in handles:
        handle.remove()
    table.compare("train input grad (mean CE)", probe["train_input_grad"], x_train.grad)
    compare_gradients(table, model, probe, "grad.", "train grad", vanishing=cancellation_scales)

    state = model.state_dict()
    if set(after_train) != set(state):
        raise AssertionError(f"after_train has {sorted(after_train)}, torch's state_dict {sorted(state)}")
    for name, value in state.items():
        if name.endswith("num_batches_tracked"):
            if after_train[name].item() != value.item():
                raise AssertionError(f"{name}: opnorm {after_train[name].item()}, torch {value.item()}")
        elif name.endswith("running_mean") or name.endswith("running_var"):
            table.compare(f"after train {name}", after_train[name], value)

    failed = table.report()
    print("power iteration spectral gaps: " + ", ".join(gaps))
    if failed:
        print(f"FAILED: {len(failed)} quantities differ from torch by more than {TOLERANCE:g}: {', '.join(failed)}")
        return 1
    print(f"all {len(table.rows)} quantities agree with torch within {TOLERANCE:g}")
    return 0


if __name__ == "__main__":
    run(main, __doc__)
