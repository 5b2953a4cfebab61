#!/usr/bin/python3
"""Runs opnorm's bench_steps and PyTorch's torch_steps.py on the same steps,
the same thread count and the same timing scheme, and prints the median time
per step of each and the ratio opnorm / PyTorch (below 1: opnorm is faster).

The two sides alternate step by step (opnorm standard, PyTorch standard,
opnorm pga10, ...), so a change in machine load during the run hits both
sides of a row alike. --rounds N repeats the whole alternation N times and
reports the median over rounds.

  bash bench/setup_peer.sh                               # once: the peer, torch from PyPI
  python3 bench/compare.py                               # all steps, 2 threads
  /usr/bin/python3 bench/compare.py --steps standard pga10 --json out.json
  /usr/bin/python3 bench/compare.py --torch-library-path DIR   # e.g. an OpenBLAS libblas.so.3
  /usr/bin/python3 bench/compare.py --threads 1 --clock cpu    # on a busy machine

--clock wall (the default) compares wall-clock time per step. --clock cpu
compares the CPU time of the whole process instead; with --threads 1 that is
the measure other processes disturb least, because time slices lost to them
do not count (with more threads it also counts OpenMP threads spinning while
they wait, on both sides).

The peer is current PyTorch from PyPI (MKL, oneDNN) in the virtual
environment bench/setup_peer.sh makes ($OPNORM_PEER_VENV, default
~/.cache/opnorm/torch-peer); --python picks another interpreter. The report
names torch's version, its BLAS and the instruction set oneDNN's JIT chose.

Peak RSS: in the first round each side of each step runs under
`/usr/bin/time -f %M`, and the table gives the whole process's peak resident
set in MB beside the times (the timing loop included, on both sides alike).

--torch-library-path puts DIR first on PyTorch's LD_LIBRARY_PATH, which swaps
the BLAS/LAPACK that torch loads (libblas.so.3, liblapack.so.3) without
touching the system; the table says which libblas PyTorch actually loaded.

--device cuda compares on the GPU: opnorm's cuda_bench_steps (the nvcc build
of bench_steps, backend thrust<cuda>) against torch_steps.py --device cuda;
both sides wait for the GPU at the end of every timed step. Its default
steps add pga10 and ddsnr10 at batch 1024 (pga10_b1024, ddsnr10_b1024).
--markdown FILE writes the report (machine, GPU, versions, method, table);
scripts/gpu_check.sh writes docs/performance-gpu.md that way:

  python3 bench/compare.py --device cuda --python python3 \
      --bench-binary build-gpu/bench/cuda_bench_steps --markdown docs/performance-gpu.md
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
CPU_STEPS = ["standard", "pga10", "ddsnr10", "gsnr1", "infer1000", "jac_svd"]
STEPS = CPU_STEPS + ["pga10_b1024", "ddsnr10_b1024"]
DEFAULT_STEPS = {"cpu": CPU_STEPS, "cuda": STEPS}
DESCRIPTIONS = {
    "standard": "forward + CE + backward + SGD (batch 128)",
    "pga10": "10 l2-PGA iterations + step on x_adv",
    "ddsnr10": "10 power iterations + CE + penalty step",
    "gsnr1": "standard + 1 power iteration per weight",
    "infer1000": "eval forward, 1000 images",
    "jac_svd": "10x784 Jacobian + SVD, 1 image",
    "pga10_b1024": "pga10 at batch 1024",
    "ddsnr10_b1024": "ddsnr10 at batch 1024",
}
# bench_steps' name -> (torch_steps.py's step, its --batch).
TORCH_STEPS = {name: (name, 128) for name in CPU_STEPS}
TORCH_STEPS.update({"pga10_b1024": ("pga10", 1024), "ddsnr10_b1024": ("ddsnr10", 1024)})
BATCH = {"standard": 128, "pga10": 128, "ddsnr10": 128, "gsnr1": 128, "infer1000": 1000, "jac_svd": 1,
         "pga10_b1024": 1024, "ddsnr10_b1024": 1024}
PEER_VENV = os.environ.get("OPNORM_PEER_VENV") or os.path.join(
    os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "opnorm", "torch-peer")
PEER_PYTHON = os.path.join(PEER_VENV, "bin", "python")
TIME = "/usr/bin/time"
DEFAULT_BINARY = {"cpu": os.path.join(REPO, "build", "bench", "bench_steps"),
                  "cuda": os.path.join(REPO, "build-gpu", "bench", "cuda_bench_steps")}


def run_checked(command, env, timeout, rss=None):
    """stdout of command; on failure or timeout, says what failed and exits.
    With rss a list, runs it under /usr/bin/time and appends its peak RSS in MB."""
    rss_file = None
    if rss is not None and os.access(TIME, os.X_OK):
        rss_file = tempfile.NamedTemporaryFile(prefix="compare-rss-", suffix=".txt", delete=False)
        rss_file.close()
        command = [TIME, "-f", "%M", "-o", rss_file.name] + command
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        sys.exit(f"compare.py: timed out after {timeout} s: {' '.join(command)}")
    if done.returncode != 0:
        sys.stderr.write(done.stderr[-4000:])
        sys.exit(f"compare.py: exit status {done.returncode}: {' '.join(command)}")
    if rss_file is not None:
        with open(rss_file.name) as f:
            rss.append(int(f.read().split()[-1]) / 1024.0)  # KB -> MB
        os.unlink(rss_file.name)
    return done.stdout


def run_opnorm(binary, step, env, args, rss=None):
    """Median ms per step from bench_steps (the clock chosen by --clock)."""
    command = [binary, f"--benchmark_filter=^{step}/", f"--benchmark_repetitions={args.repetitions}",
               f"--benchmark_min_time={args.min_time}", f"--benchmark_min_warmup_time={args.warmup_time}",
               "--benchmark_report_aggregates_only=true", "--benchmark_format=json"]
    report = json.loads(run_checked(command, env, args.timeout, rss))
    for b in report["benchmarks"]:
        if b.get("aggregate_name") == "median":
            scale = {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}[b["time_unit"]]
            return b["real_time" if args.clock == "wall" else "cpu_time"] * scale, report["context"]
    raise RuntimeError(f"bench_steps reported no median for {step}")


def run_torch(python, step, env, args, rss=None):
    torch_step, batch = TORCH_STEPS[step]
    command = [python, os.path.join(HERE, "torch_steps.py"), "--steps", torch_step, "--threads", str(args.threads),
               "--repetitions", str(args.repetitions), "--min-time", str(args.min_time),
               "--warmup-time", str(args.warmup_time), "--device", args.device, "--batch", str(batch), "--json"]
    if args.torch_strict_fp32:
        command.append("--strict-fp32")
    report = json.loads(run_checked(command, env, args.timeout, rss))
    return report["results"][torch_step]["median_ms" if args.clock == "wall" else "median_cpu_ms"], report["info"]


def megabytes(value):
    return "-" if value is None else f"{value:.0f}"


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def command_output(command):
    """First line of a command's output, or None where it cannot run."""
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else None


def gpu_description():
    """What nvidia-smi says about the GPU(s): name, driver, memory."""
    return command_output(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                           "--format=csv,noheader"])


def source_version():
    commit = command_output(["git", "-C", REPO, "rev-parse", "--short", "HEAD"])
    if commit is None:
        return "unknown (no git repository)"
    dirty = command_output(["git", "-C", REPO, "status", "--porcelain", "--untracked-files=no"])
    return commit + (" with uncommitted changes" if dirty else "")


def markdown_report(args, rows, context, torch_info, load, seconds, command_line):
    """The report as Markdown: where, what, how, and the table."""
    gpu = args.device == "cuda"
    nvcc = command_output(["nvcc", "--version"])
    nvcc = nvcc.splitlines()[-1] if nvcc else None
    harness = context.get("harness") or (f"Google Benchmark {context['library_version']}"
                                         if context.get("library_version") else "Google Benchmark")
    lines = [f"# Performance on {'the GPU' if gpu else 'the CPU'}: opnorm and PyTorch", ""]
    lines += [f"Written by `bench/compare.py --markdown`{' (run by `scripts/gpu_check.sh`)' if gpu else ''} on "
              f"{time.strftime('%Y-%m-%d %H:%M %Z')}; rerun it rather than editing this file. "
              "docs/performance.md describes the steps and the CPU measurements.", ""]
    lines += ["## Machine", ""]
    if gpu:
        lines.append(f"* GPU (nvidia-smi: name, driver, memory): {gpu_description() or 'nvidia-smi not available'}")
        lines.append(f"* GPU as PyTorch names it: {torch_info.get('device_name')}; "
                     f"as opnorm names it: {context.get('device', 'unknown')}")
    lines.append(f"* CPU: {cpu_model()}, {os.cpu_count()} logical CPUs; threads: {args.threads} on both sides "
                 "(OMP_NUM_THREADS, torch.set_num_threads)")
    lines.append(f"* opnorm: {source_version()}, backend {context.get('backend', 'cpu')}, timed by {harness}"
                 + (f"; {nvcc}" if gpu and nvcc else ""))
    torch_line = f"* PyTorch {torch_info.get('torch')}"
    if gpu:
        torch_line += (f", CUDA {torch_info.get('cuda')}, cuDNN {torch_info.get('cudnn')}; TF32 for cuDNN "
                       f"convolutions: {torch_info.get('cudnn_allow_tf32')}, for matmuls: "
                       f"{torch_info.get('matmul_allow_tf32')}")
    else:
        torch_line += (f", BLAS {torch_info.get('blas')}, oneDNN ISA {torch_info.get('onednn_isa')} "
                       f"(`{args.python}`)")
    lines += [torch_line, ""]
    lines += ["## Method", ""]
    lines.append("The steps of docs/performance.md on `fmnist_cnn` (float), with the same timing scheme on both "
                 f"sides: {args.warmup_time} s untimed warm-up, then an iteration count whose block lasts at least "
                 f"{args.min_time} s, {args.repetitions} blocks; a side's time is the median of its blocks' means, "
                 f"and with {args.rounds} round(s) of alternating the two sides step by step, the median over "
                 f"rounds. Clock: {args.clock} time.")
    if gpu:
        lines.append("")
        lines.append("GPU work is asynchronous, so every timed step ends with the GPU finished: "
                     "`cudaStreamSynchronize` on opnorm's stream (backend `thrust<cuda>` queues all its kernels, "
                     "copies and cuBLAS calls there) and `torch.cuda.synchronize()` in PyTorch. Both sides keep "
                     "model, data and workspaces on the GPU; opnorm's `jac_svd` copies the Jacobian to the host "
                     "and runs Eigen's SVD there, PyTorch's runs `torch.linalg.svd` on the GPU.")
    lines.append("")
    lines.append(f"Load average {load[0]:.2f} before, {load[1]:.2f} after; the comparison took {seconds:.0f} s. "
                 f"Command: `{command_line}`")
    lines += ["", "## Results", "",
              "Time per step in ms; the ratio is opnorm / PyTorch (below 1: opnorm is faster).", "",
              "| step | what | batch | opnorm ms | PyTorch ms | opnorm/PyTorch | opnorm peak RSS MB | PyTorch peak RSS MB |",
              "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| `{r['step']}` | {DESCRIPTIONS[r['step']]} | {BATCH[r['step']]} | {r['opnorm_ms']:.3f} "
                     f"| {r['torch_ms']:.3f} | {r['ratio']:.2f} | {megabytes(r['opnorm_rss_mb'])} "
                     f"| {megabytes(r['torch_rss_mb'])} |")
    if args.rounds > 1:
        lines += ["", "Per round (ms), opnorm / PyTorch:", ""]
        for r in rows:
            pairs = ", ".join(f"{o:.3f} / {t:.3f}" for o, t in zip(r["opnorm_rounds_ms"], r["torch_rounds_ms"]))
            lines.append(f"* `{r['step']}`: {pairs}")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                        help="cpu: bench_steps vs PyTorch on the CPU; cuda: cuda_bench_steps vs PyTorch on the GPU")
    parser.add_argument("--steps", nargs="+", choices=STEPS,
                        help="default: the six batch-128 steps on cpu, those and the batch-1024 ones on cuda")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")),
                        help="OpenMP threads for opnorm and torch.set_num_threads (default: OMP_NUM_THREADS, else 2)")
    parser.add_argument("--repetitions", type=int, default=5, help="timed blocks per step and side")
    parser.add_argument("--min-time", type=float, default=0.5, help="seconds per timed block, at least")
    parser.add_argument("--warmup-time", type=float, default=0.5, help="untimed seconds before the first block")
    parser.add_argument("--rounds", type=int, default=1, help="alternate the two sides this many times")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="wall-clock time, or CPU time of the whole process (see above)")
    parser.add_argument("--bench-binary", help="default: build/bench/bench_steps on cpu, "
                        "build-gpu/bench/cuda_bench_steps on cuda")
    parser.add_argument("--python", help="interpreter that has torch (default: the peer venv of "
                        "bench/setup_peer.sh, " + PEER_VENV + ")")
    parser.add_argument("--torch-strict-fp32", action="store_true",
                        help="PyTorch on the GPU without TF32 (torch_steps.py --strict-fp32)")
    parser.add_argument("--timeout", type=float, help="seconds each side of each step may take, at most")
    parser.add_argument("--markdown", metavar="FILE", help="also write a Markdown report to FILE")
    parser.add_argument("--torch-library-path", help="directory put first on PyTorch's LD_LIBRARY_PATH")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE")
    args = parser.parse_args()
    args.steps = args.steps or DEFAULT_STEPS[args.device]
    if not args.python:
        if not os.access(PEER_PYTHON, os.X_OK):
            sys.exit(f"compare.py: no peer at {PEER_VENV}; run `bash bench/setup_peer.sh` (torch from PyPI) "
                     "or pass --python")
        args.python = PEER_PYTHON

    binary = os.path.abspath(args.bench_binary or DEFAULT_BINARY[args.device])
    if not os.access(binary, os.X_OK):
        target = "bench_steps" if args.device == "cpu" else "cuda_bench_steps (configure with -DOPNORM_CUDA=ON)"
        sys.exit(f"compare.py: {binary} not found; build it with `cmake --build <build dir> --target {target}`")

    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), OPENBLAS_NUM_THREADS=str(args.threads))
    torch_env = dict(env)
    if args.torch_library_path:
        torch_env["LD_LIBRARY_PATH"] = os.pathsep.join(
            p for p in [os.path.abspath(args.torch_library_path), env.get("LD_LIBRARY_PATH", "")] if p)

    load_before = os.getloadavg()
    started = time.time()
    samples = {step: {"opnorm": [], "torch": []} for step in args.steps}
    rss = {step: {"opnorm": [], "torch": []} for step in args.steps}
    context, torch_info = {}, {}

    def summarize():
        """One row per step measured on both sides so far."""
        rows = []
        for step in args.steps:
            if not samples[step]["torch"]:
                continue
            o = statistics.median(samples[step]["opnorm"])
            t = statistics.median(samples[step]["torch"])
            rows.append({"step": step, "opnorm_ms": o, "torch_ms": t, "ratio": o / t,
                         "opnorm_rss_mb": max(rss[step]["opnorm"], default=None),
                         "torch_rss_mb": max(rss[step]["torch"], default=None),
                         "opnorm_rounds_ms": samples[step]["opnorm"], "torch_rounds_ms": samples[step]["torch"]})
        return rows

    def write_markdown(rows, partial):
        report = markdown_report(args, rows, context, torch_info, (load_before[0], os.getloadavg()[0]),
                                 time.time() - started, " ".join(["bench/compare.py"] + sys.argv[1:]))
        if partial:
            report += (f"\n**Partial report**: {len(rows)} of {len(args.steps)} steps, written while the "
                       "comparison was still running; the run did not finish.\n")
        os.makedirs(os.path.dirname(os.path.abspath(args.markdown)), exist_ok=True)
        with open(args.markdown, "w") as f:
            f.write(report)

    for round_index in range(args.rounds):
        for step in args.steps:
            first = round_index == 0
            ms, context = run_opnorm(binary, step, env, args, rss[step]["opnorm"] if first else None)
            samples[step]["opnorm"].append(ms)
            opnorm_ms = ms
            ms, torch_info = run_torch(args.python, step, torch_env, args, rss[step]["torch"] if first else None)
            samples[step]["torch"].append(ms)
            # Progress, and a report that survives the run being cut short
            # (scripts/gpu_check.sh runs this under a time limit).
            print(f"compare.py: {step}: opnorm {opnorm_ms:.3f} ms, PyTorch {ms:.3f} ms", file=sys.stderr, flush=True)
            if args.markdown and round_index == 0:
                write_markdown(summarize(), partial=True)
    load_after = os.getloadavg()
    rows = summarize()

    if args.device == "cuda":
        print(f"GPU: {gpu_description() or torch_info.get('device_name')}; opnorm sees {context.get('device')}")
    print(f"CPU: {cpu_model()}, {os.cpu_count()} logical CPUs; threads: {args.threads} (both sides)")
    print(f"PyTorch {torch_info.get('torch')} ({args.python}), BLAS: {torch_info.get('blas')}"
          + (f", oneDNN ISA: {torch_info.get('onednn_isa')}" if args.device == "cpu" else "")
          + (f", CUDA {torch_info.get('cuda')}, cuDNN TF32 {torch_info.get('cudnn_allow_tf32')}"
             if args.device == "cuda" else ""))
    print(f"{args.clock} time; median of {args.repetitions} blocks of >= {args.min_time} s, {args.rounds} round(s); "
          f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after; {time.time() - started:.0f} s")
    print()
    width = max(9, *(len(step) for step in args.steps))
    print(f"| {'step':{width}s} | {'what':42s} | {'opnorm ms':>10s} | {'PyTorch ms':>10s} | {'opnorm/PyTorch':>14s} "
          f"| {'opnorm MB':>9s} | {'PyTorch MB':>10s} |")
    print(f"|{'-' * (width + 2)}|{'-' * 44}|{'-' * 11}:|{'-' * 11}:|{'-' * 15}:|{'-' * 10}:|{'-' * 11}:|")
    digits = 3 if args.device == "cuda" else 2  # GPU steps take fractions of a millisecond
    for r in rows:
        print(f"| {r['step']:{width}s} | {DESCRIPTIONS[r['step']]:42s} | {r['opnorm_ms']:10.{digits}f} "
              f"| {r['torch_ms']:10.{digits}f} | {r['ratio']:14.2f} | {megabytes(r['opnorm_rss_mb']):>9s} "
              f"| {megabytes(r['torch_rss_mb']):>10s} |")

    if args.markdown:
        write_markdown(rows, partial=False)
        print(f"\nwrote {args.markdown}")

    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": args.device, "gpu": gpu_description() if args.device == "cuda" else None,
                       "cpu": cpu_model(), "threads": args.threads, "clock": args.clock, "repetitions": args.repetitions,
                       "min_time_s": args.min_time, "rounds": args.rounds,
                       "load_average_before": load_before, "load_average_after": load_after,
                       "torch": torch_info, "bench_context": context, "rows": rows}, f, indent=1)
            f.write("\n")


if __name__ == "__main__":
    main()
