#!/usr/bin/env python3
"""Cross-checks opnorm's APGD against torchattacks 3.5.1.

Usage: apgd_crosscheck.py <directory written by apgd_crosscheck_dump>

Rebuilds the dump's small CNN as a torch.nn.Sequential with the same module
indices (0 Standardize with buffers "mean" and "std", 1 Conv2d, 2 ReLU,
3 MaxPool2d, ...), loads opnorm's checkpoint with
load_state_dict(strict=True), checks that torch computes opnorm's clean
logits on the 200 test points (so both attack the same function), then for
every setting in settings.json runs torchattacks' attack on the same points:

  loss "ce"            torchattacks.APGD(model, norm, eps, steps, n_restarts,
                                         seed, loss="ce", rho=0.75)
  loss "targeted_dlr"  torchattacks.APGDT(model, norm, eps, steps, n_restarts,
                                          seed, rho=0.75,
                                          n_classes=target_classes + 1)

(APGDT attacks n_classes - 1 target classes and uses n_classes for nothing
else, so n_classes = target_classes + 1 runs opnorm's number of targets.)
A point is robust on torch's side when the model classifies the returned
point correctly. The two implementations draw different random starts
(opnorm keys them by each example's content, torch draws from its global
generator), so robust accuracies are compared, not per-example flags:
the check fails when |opnorm - torchattacks| exceeds 2 points (0.02) for
any setting. The per-example disagreements are printed for information.
It also fails a setting whose eps does not discriminate, where opnorm's
attack breaks fewer than 10% of the points or leaves fewer than 10% robust:
agreement there would say nothing about the attacks.

Exits 0 on agreement, 1 on a failed check, 77 (ctest SKIP_RETURN_CODE) when
torch or torchattacks cannot be imported (scripts/test.sh installs
torchattacks into a virtual environment with pip; without network it
cannot) or when the writer skipped for lack of Fashion-MNIST.
"""
import json
import os
import sys
import time

# torch_models (beside this file) imports torch, or exits 77 (ctest: skipped).
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_models import Standardize, load_checkpoint, read_safetensors, require, run, torch  # noqa: E402

torchattacks = require("torchattacks", "scripts/test.sh installs torchattacks 3.5.1 into a virtual environment with "
                       "`pip install --no-deps` (which needs PyPI) and configures the test with its interpreter")

TORCHATTACKS_VERSION = "3.5.1"
TOLERANCE = 0.02       # robust accuracy, as a fraction of the points
DISCRIMINATES = 0.10   # the least share of points broken, and of points robust, for a setting to count
LOGIT_TOLERANCE = 1e-4  # max |opnorm - torch| / max |torch|, float32 on both sides


def small_cnn():
    """small_cnn of tests/tools/apgd_crosscheck_dump.cpp, module for module."""
    nn = torch.nn
    return nn.Sequential(
        Standardize([0.2860], [0.3530]),                                 # 0
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),       # 1-3
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),      # 4-6
        nn.Flatten(), nn.Linear(16 * 7 * 7, 32), nn.ReLU(), nn.Linear(32, 10))  # 7-10


def torch_norm(norm):
    return {"l2": "L2", "linf": "Linf"}[norm]


def make_attack(model, s):
    common = dict(norm=torch_norm(s["norm"]), eps=s["eps"], steps=s["iterations"],
                  n_restarts=s["restarts"], seed=s["seed"], rho=0.75)
    if s["loss"] == "ce":
        return f"APGD(loss='ce')", torchattacks.APGD(model, loss="ce", **common)
    if s["loss"] == "targeted_dlr":
        n_classes = s["target_classes"] + 1
        return f"APGDT(n_classes={n_classes})", torchattacks.APGDT(model, n_classes=n_classes, **common)
    raise ValueError(f"unknown loss {s['loss']!r} in settings.json")


def main(directory):
    if not os.path.exists(os.path.join(directory, "settings.json")):
        print(f"skipping: {directory} holds no settings.json: the writer apgd_crosscheck_dump skipped "
              "(Fashion-MNIST not found) or has not run")
        return 77
    if torchattacks.__version__ != TORCHATTACKS_VERSION:
        print(f"torchattacks {torchattacks.__version__} found, the check is written for {TORCHATTACKS_VERSION} "
              f"(opnorm's kernel/attacks/apgd.hpp lists its differences from that version)")
        return 1
    torch.set_num_threads(1)  # ctest runs tests side by side on every core

    with open(os.path.join(directory, "settings.json")) as f:
        config = json.load(f)
    _, points = read_safetensors(os.path.join(directory, "points.safetensors"))

    model = load_checkpoint(small_cnn(), os.path.join(directory, "model.safetensors"))
    model.eval()
    x = points["images"]
    y = points["labels"].long()
    n = x.shape[0]

    failures = []
    with torch.no_grad():
        logits = model(x)
    reference = points["clean_logits"]
    logit_error = ((logits - reference).abs().max() / logits.abs().max()).item()
    predicted = logits.argmax(1)
    opnorm_predicted = reference.argmax(1)
    prediction_mismatches = int((predicted != opnorm_predicted).sum())
    correct = predicted == y
    print(f"torchattacks {torchattacks.__version__}, torch {torch.__version__}; {config['model']} trained on "
          f"{config['train_examples']} images; {n} points")
    print(f"clean logits: max rel. error {logit_error:.2e}; predictions differing: {prediction_mismatches}; "
          f"clean accuracy torch {correct.float().mean().item():.3f}, opnorm {config['clean_accuracy']:.3f}")
    if not logit_error <= LOGIT_TOLERANCE:
        failures.append(f"clean logits differ by {logit_error:.2e} > {LOGIT_TOLERANCE:g}")
    if prediction_mismatches:
        failures.append(f"{prediction_mismatches} clean predictions differ")

    rows = []
    for s in config["settings"]:
        name, attack = make_attack(model, s)
        start = time.time()
        adversarial = attack(x, y)
        seconds = time.time() - start
        with torch.no_grad():
            robust_torch = correct & (model(adversarial).argmax(1) == y)
        if s["norm"] == "l2":
            distance = (adversarial - x).flatten(1).norm(dim=1).max().item()
        else:
            distance = (adversarial - x).abs().flatten(1).max().item()
        # float32 rounding of x + delta, then the clip, may overshoot eps by a few ulps.
        if distance > s["eps"] * (1 + 1e-5) + 1e-6:
            failures.append(f"{s['name']}: torchattacks returned a point at distance {distance} > eps {s['eps']}")
        robust_opnorm = points["robust." + s["name"]].bool()
        acc_opnorm = robust_opnorm.float().mean().item()
        acc_torch = robust_torch.float().mean().item()
        only_opnorm = int((robust_opnorm & ~robust_torch).sum())  # torch broke it, opnorm did not
        only_torch = int((robust_torch & ~robust_opnorm).sum())
        difference = acc_opnorm - acc_torch
        ok = abs(difference) <= TOLERANCE + 1e-9  # 1e-9: k / 200 in floating point
        rows.append((s["name"], s["norm"], s["eps"], name, acc_opnorm, acc_torch, difference, only_opnorm,
                     only_torch, s["seconds"], seconds, ok))
        broken = correct.float().mean().item() - acc_opnorm
        if broken < DISCRIMINATES or acc_opnorm < DISCRIMINATES:
            failures.append(f"{s['name']}: eps {s['eps']} does not discriminate (opnorm breaks {broken:.3f} of the "
                            f"points, leaves {acc_opnorm:.3f} robust); choose another in apgd_crosscheck_dump.cpp")
        if not ok:
            failures.append(f"{s['name']}: robust accuracy opnorm {acc_opnorm:.3f}, torchattacks {acc_torch:.3f}, "
                            f"difference {difference:+.3f} exceeds {TOLERANCE}")

    print(f"{'setting':<14} {'norm':<5} {'eps':>6}  {'torchattacks':<22} {'opnorm':>6} {'torch':>6} "
          f"{'diff':>6}  {'only opnorm robust':>18} {'only torch robust':>17}  {'s opnorm':>8} {'s torch':>7}")
    for (setting, norm, eps, name, a, b, d, oo, ot, so, st, ok) in rows:
        print(f"{setting:<14} {norm:<5} {eps:>6.3f}  {name:<22} {a:>6.3f} {b:>6.3f} {d:>+6.3f}  {oo:>18} {ot:>17}  "
              f"{so:>8.1f} {st:>7.1f}{'' if ok else '  > 0.02'}")
    for failure in failures:
        print(f"FAILED: {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    run(main, __doc__)
