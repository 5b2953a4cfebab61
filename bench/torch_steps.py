#!/usr/bin/python3
"""PyTorch counterparts of bench/bench_steps.cpp: the same steps on the same
network (fmnist_cnn, float, batch 128 unless --batch says otherwise), written
the way a PyTorch user writes them.

  standard   train-mode forward, cross-entropy, backward, SGD-momentum update
  pga10      10 l2-PGA iterations (eps 1.75, alpha = 2 eps / 10) in eval mode
             with torch.autograd.grad w.r.t. the input, per-example l2
             normalize and project, clamp to [0, 1]; then a training step on x_adv
  ddsnr10    10 power iterations: forward at x + eps v with gradients w.r.t.
             the input only, u = f(x + eps v) - f(x), v = normalize(grad <u, f>);
             then the step on CE + lambda/2 ||f(x + eps v) - f(x)||^2
  gsnr1      standard step + one power iteration per weight matrix (conv
             kernels reshaped to (out, in*kh*kw)), grad += lambda sigma u v^T
  infer1000  eval-mode forward of 1000 images under torch.no_grad()
  jac_svd    torch.autograd.functional.jacobian (10 x 784, one image) +
             torch.linalg.svd (thin: the full spectrum, U 10x10, V^T 10x784)

--batch sets the batch of the training steps (standard, pga10, ddsnr10,
gsnr1); bench_steps' pga10_b1024 and ddsnr10_b1024 are pga10 and ddsnr10
with --batch 1024. infer1000 and jac_svd have fixed sizes.

--device cuda runs everything on the GPU (model, data and the attack's
tensors created there). GPU work is asynchronous, so every step ends with
torch.cuda.synchronize() inside the timed region, as every step of the
opnorm side ends with a stream synchronization: both sides time finished
work, per step. PyTorch's defaults are kept (cuDNN may use TF32 for
convolutions on Ampere and later GPUs; matmuls stay fp32); --strict-fp32
turns TF32 off everywhere, which is what opnorm's cuBLAS SGEMM computes.

Timing mirrors Google Benchmark's: warm up for --warmup-time seconds, pick
an iteration count whose block lasts at least --min-time seconds, run
--repetitions blocks and report the median of the block means, in wall-clock
time and in CPU time of the whole process (all threads), as bench_steps does.

Run with /usr/bin/python3 (the interpreter that has torch). Usually started by
bench/compare.py; alone:

  OMP_NUM_THREADS=2 /usr/bin/python3 bench/torch_steps.py --steps standard pga10
  python3 bench/torch_steps.py --device cuda --batch 1024 --steps pga10 ddsnr10
"""
import argparse
import json
import os
import subprocess
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

BATCH = 128  # training steps; --batch changes it
DEVICE = torch.device("cpu")  # --device changes it
EPS = 1.75  # pixel units ([0, 1] inputs)
DDSNR_LAMBDA = 0.03
GSNR_LAMBDA = 3e-4
FASHION_MNIST_MEAN, FASHION_MNIST_STD = 0.2860, 0.3530
STEPS = ["standard", "pga10", "ddsnr10", "gsnr1", "infer1000", "jac_svd"]
TRAINING_STEPS = {"standard", "pga10", "ddsnr10", "gsnr1"}  # the steps --batch applies to


class Standardize(nn.Module):
    """(x - mean) / std inside the model, so attacks work in pixel space."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor([mean]).view(1, 1, 1, 1))
        self.register_buffer("std", torch.tensor([std]).view(1, 1, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


def fmnist_cnn():
    """The same nn.Sequential layout as opnorm::fmnist_cnn (module indices match)."""
    return nn.Sequential(
        Standardize(FASHION_MNIST_MEAN, FASHION_MNIST_STD),
        nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
        nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 7 * 7, 256), nn.ReLU(), nn.Linear(256, 10))


def per_example_norms(t):
    """l2 norm of each example, shaped to broadcast against t."""
    return t.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (t.dim() - 1)))


def normalize(t):
    return t / per_example_norms(t)


class Setup:
    """Model, optimizer and one batch, reused by every step (steady state)."""

    def __init__(self):
        torch.manual_seed(0)
        self.model = fmnist_cnn().to(DEVICE)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9)
        self.x = torch.rand(BATCH, 1, 28, 28, device=DEVICE)
        self.y = torch.randint(0, 10, (BATCH,), device=DEVICE)

    def train_on(self, loss_of_model):
        self.model.train()
        self.optimizer.zero_grad()
        loss = loss_of_model(self.model)
        loss.backward()
        return loss


def make_standard():
    s = Setup()

    def step():
        s.train_on(lambda m: F.cross_entropy(m(s.x), s.y))
        s.optimizer.step()
    return step


def make_pga10():
    s = Setup()
    iterations = 10
    alpha = 2 * EPS / iterations

    def attack(x, y):
        s.model.eval()
        # Random start, uniform in the l2 ball: Gaussian direction, radius eps U^(1/d).
        d = x[0].numel()
        radius = EPS * torch.rand(x.shape[0], device=x.device).pow(1.0 / d).view(-1, 1, 1, 1)
        x_adv = (x + radius * normalize(torch.randn_like(x))).clamp(0, 1)
        for _ in range(iterations):
            x_adv.requires_grad_(True)
            loss = F.cross_entropy(s.model(x_adv), y, reduction="sum")
            grad, = torch.autograd.grad(loss, x_adv)
            delta = x_adv.detach() + alpha * normalize(grad) - x
            delta = delta * (EPS / per_example_norms(delta)).clamp(max=1.0)
            x_adv = (x + delta).clamp(0, 1)
        return x_adv.detach()

    def step():
        x_adv = attack(s.x, s.y)
        s.train_on(lambda m: F.cross_entropy(m(x_adv), s.y))
        s.optimizer.step()
    return step


def make_ddsnr10():
    s = Setup()
    iterations = 10

    def top_direction(x):
        s.model.eval()
        with torch.no_grad():
            fx = s.model(x)
        v = normalize(torch.randn_like(x))
        for _ in range(iterations):
            probe = (x + EPS * v).requires_grad_(True)
            f_probe = s.model(probe)
            u = (f_probe - fx).detach()
            grad, = torch.autograd.grad(f_probe, probe, grad_outputs=u)  # J^T u
            v = normalize(grad)
        return v

    def loss_of(v):
        def loss(m):
            clean = m(s.x)
            perturbed = m(s.x + EPS * v)
            residual = perturbed - clean
            return F.cross_entropy(clean, s.y) + DDSNR_LAMBDA / 2 * residual.pow(2).sum(dim=1).mean()
        return loss

    def step():
        v = top_direction(s.x)
        s.train_on(loss_of(v))
        s.optimizer.step()
    return step


def make_gsnr1():
    s = Setup()
    weights = [p for name, p in s.model.named_parameters() if name.endswith("weight") and p.dim() >= 2]
    left = [F.normalize(torch.randn(w.shape[0], device=DEVICE), dim=0) for w in weights]

    def step():
        s.train_on(lambda m: F.cross_entropy(m(s.x), s.y))
        with torch.no_grad():
            for w, u in zip(weights, left):
                matrix = w.view(w.shape[0], -1)
                v = F.normalize(matrix.t() @ u, dim=0)
                u.copy_(F.normalize(matrix @ v, dim=0))
                sigma = torch.dot(u, matrix @ v)
                w.grad.add_((GSNR_LAMBDA * sigma * torch.outer(u, v)).view_as(w))
        s.optimizer.step()
    return step


def make_infer1000():
    torch.manual_seed(0)
    model = fmnist_cnn().to(DEVICE).eval()
    x = torch.rand(1000, 1, 28, 28, device=DEVICE)

    def step():
        with torch.no_grad():
            model(x)
    return step


def make_jac_svd():
    torch.manual_seed(0)
    model = fmnist_cnn().to(DEVICE).eval()
    x = torch.rand(1, 1, 28, 28, device=DEVICE)

    def step():
        jacobian = torch.autograd.functional.jacobian(lambda z: model(z).squeeze(0), x)
        torch.linalg.svd(jacobian.reshape(10, 28 * 28), full_matrices=False)
    return step


MAKERS = {"standard": make_standard, "pga10": make_pga10, "ddsnr10": make_ddsnr10,
          "gsnr1": make_gsnr1, "infer1000": make_infer1000, "jac_svd": make_jac_svd}


def synchronized(step):
    """step followed by a wait for the GPU, so that a timed step is finished
    work (on the CPU, step itself)."""
    if DEVICE.type != "cuda":
        return step

    def step_and_wait():
        step()
        torch.cuda.synchronize()
    return step_and_wait


def timed_block(step, iterations):
    """Wall-clock and process CPU seconds of `iterations` steps."""
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(iterations):
        step()
    return time.perf_counter() - wall, time.process_time() - cpu


def measure(step, repetitions, min_time, warmup_time):
    """Median over repetitions of the mean time per step of a block, in ms."""
    start = time.perf_counter()
    warmup_steps = 0
    while warmup_steps == 0 or time.perf_counter() - start < warmup_time:
        step()
        warmup_steps += 1
    # Grow the block until it lasts min_time, as Google Benchmark does; the
    # block that does is the first repetition.
    iterations = 1
    while True:
        wall, cpu = timed_block(step, iterations)
        if wall >= min_time:
            break
        iterations = max(iterations + 1, int(iterations * min(10.0, 1.4 * min_time / max(wall, 1e-9))))
    blocks = [(wall, cpu)] + [timed_block(step, iterations) for _ in range(repetitions - 1)]
    wall_ms = [w / iterations * 1e3 for w, _ in blocks]
    cpu_ms = [c / iterations * 1e3 for _, c in blocks]
    return {"median_ms": statistics.median(wall_ms), "median_cpu_ms": statistics.median(cpu_ms),
            "repetition_ms": wall_ms, "repetition_cpu_ms": cpu_ms, "iterations": iterations}


def loaded_library(fragment):
    """Path of the first mapped shared library whose name contains fragment."""
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.split()[-1]
                if fragment in os.path.basename(path):
                    return os.path.realpath(path)
    except OSError:
        pass
    return None


def blas_name():
    """The BLAS torch calls: a shared libblas where it links one (Debian's
    torch), else what its build configuration names (PyPI's links MKL
    statically)."""
    library = loaded_library("libblas")
    if library:
        return library
    for line in torch.__config__.show().splitlines():
        if "BLAS_INFO=" in line:
            return line.split("BLAS_INFO=", 1)[1].split(",")[0].strip()
    return "unknown"


def onednn_isa():
    """The instruction set oneDNN's JIT picks on this CPU, from its verbose
    line on one small convolution run in a child process (so this process's
    output stays clean)."""
    # fmnist_cnn's second convolution: PyTorch hands tiny ones to other kernels.
    code = ("import torch; torch.nn.functional.conv2d(torch.zeros(16, 32, 28, 28), torch.zeros(32, 32, 3, 3), "
            "padding=1)")
    env = dict(os.environ, ONEDNN_VERBOSE="1", DNNL_VERBOSE="1")
    try:
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    for line in out.splitlines():
        if ",isa:" in line:  # onednn_verbose,v1,info,cpu,isa:Intel AVX2
            return line.split(",isa:", 1)[1].strip()
    return "not used for this convolution"


def main():
    global BATCH, DEVICE
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", nargs="+", default=STEPS, choices=STEPS)
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "0")) or os.cpu_count(),
                        help="torch.set_num_threads (default: OMP_NUM_THREADS, else the CPU count)")
    parser.add_argument("--repetitions", type=int, default=5)
    parser.add_argument("--min-time", type=float, default=0.5, help="seconds per repetition, at least")
    parser.add_argument("--warmup-time", type=float, default=0.5, help="untimed seconds before measuring")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--batch", type=int, default=BATCH, help="batch of the training steps (default 128)")
    parser.add_argument("--strict-fp32", action="store_true",
                        help="turn TF32 off for cuDNN convolutions and cuBLAS matmuls (GPU only)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args()

    BATCH = args.batch
    DEVICE = torch.device(args.device)
    if DEVICE.type == "cuda":
        if not torch.cuda.is_available():
            sys.exit(f"torch_steps.py: --device cuda, but torch {torch.__version__} sees no CUDA device "
                     f"(torch.version.cuda = {torch.version.cuda})")
        if args.strict_fp32:
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False

    torch.set_num_threads(args.threads)
    results = {}
    for name in args.steps:
        results[name] = measure(synchronized(MAKERS[name]()), args.repetitions, args.min_time, args.warmup_time)
        results[name]["batch"] = BATCH if name in TRAINING_STEPS else None
    info = {"torch": torch.__version__, "threads": torch.get_num_threads(),
            "blas": blas_name(), "mkldnn": torch.backends.mkldnn.is_available(),
            "onednn_isa": onednn_isa() if args.device == "cpu" else None, "device": args.device}
    if DEVICE.type == "cuda":
        info.update({"device_name": torch.cuda.get_device_name(DEVICE), "cuda": torch.version.cuda,
                     "cudnn": torch.backends.cudnn.version(),
                     "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
                     "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32})
    if args.json:
        json.dump({"info": info, "results": results}, sys.stdout, indent=1)
        print()
        return
    where = info.get("device_name", "CPU")
    print(f"torch {info['torch']} on {where}, {info['threads']} threads, BLAS {info['blas']}, batch {BATCH}")
    for name, r in results.items():
        print(f"{name:10s} {r['median_ms']:10.2f} ms wall {r['median_cpu_ms']:10.2f} ms CPU"
              f"  ({r['iterations']} steps x {len(r['repetition_ms'])})")


if __name__ == "__main__":
    main()
