#!/usr/bin/python3
"""Runs opnorm's bench_steps and PyTorch's torch_steps.py on the same steps,
the same thread count and the same timing scheme, and prints the median time
per step of each and the ratio opnorm / PyTorch (below 1: opnorm is faster).

The two sides alternate step by step (opnorm standard, PyTorch standard,
opnorm pga10, ...), so a change in machine load during the run hits both
sides of a row alike. --rounds N repeats the whole alternation N times and
reports the median over rounds.

  /usr/bin/python3 bench/compare.py                      # all steps, 2 threads
  /usr/bin/python3 bench/compare.py --steps standard pga10 --json out.json
  /usr/bin/python3 bench/compare.py --torch-library-path DIR   # e.g. an OpenBLAS libblas.so.3
  /usr/bin/python3 bench/compare.py --threads 1 --clock cpu    # on a busy machine

--clock wall (the default) compares wall-clock time per step. --clock cpu
compares the CPU time of the whole process instead; with --threads 1 that is
the measure other processes disturb least, because time slices lost to them
do not count (with more threads it also counts OpenMP threads spinning while
they wait, on both sides).

--torch-library-path puts DIR first on PyTorch's LD_LIBRARY_PATH, which swaps
the BLAS/LAPACK that torch loads (libblas.so.3, liblapack.so.3) without
touching the system; the table says which libblas PyTorch actually loaded.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
STEPS = ["standard", "pga10", "ddsnr10", "gsnr1", "infer1000", "jac_svd"]
DESCRIPTIONS = {
    "standard": "forward + CE + backward + SGD (batch 128)",
    "pga10": "10 l2-PGA iterations + step on x_adv",
    "ddsnr10": "10 power iterations + CE + penalty step",
    "gsnr1": "standard + 1 power iteration per weight",
    "infer1000": "eval forward, 1000 images",
    "jac_svd": "10x784 Jacobian + SVD, 1 image",
}


def run_opnorm(binary, step, env, args):
    """Median ms per step from bench_steps (the clock chosen by --clock)."""
    command = [binary, f"--benchmark_filter=^{step}/", f"--benchmark_repetitions={args.repetitions}",
               f"--benchmark_min_time={args.min_time}", f"--benchmark_min_warmup_time={args.warmup_time}",
               "--benchmark_report_aggregates_only=true", "--benchmark_format=json"]
    out = subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout
    report = json.loads(out)
    for b in report["benchmarks"]:
        if b.get("aggregate_name") == "median":
            scale = {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}[b["time_unit"]]
            return b["real_time" if args.clock == "wall" else "cpu_time"] * scale, report["context"]
    raise RuntimeError(f"bench_steps reported no median for {step}")


def run_torch(python, step, env, args):
    command = [python, os.path.join(HERE, "torch_steps.py"), "--steps", step, "--threads", str(args.threads),
               "--repetitions", str(args.repetitions), "--min-time", str(args.min_time),
               "--warmup-time", str(args.warmup_time), "--json"]
    out = subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout
    report = json.loads(out)
    return report["results"][step]["median_ms" if args.clock == "wall" else "median_cpu_ms"], report["info"]


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", nargs="+", default=STEPS, choices=STEPS)
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")),
                        help="OpenMP threads for opnorm and torch.set_num_threads (default: OMP_NUM_THREADS, else 2)")
    parser.add_argument("--repetitions", type=int, default=5, help="timed blocks per step and side")
    parser.add_argument("--min-time", type=float, default=0.5, help="seconds per timed block, at least")
    parser.add_argument("--warmup-time", type=float, default=0.5, help="untimed seconds before the first block")
    parser.add_argument("--rounds", type=int, default=1, help="alternate the two sides this many times")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="wall-clock time, or CPU time of the whole process (see above)")
    parser.add_argument("--bench-binary", default=os.path.join(HERE, "..", "build", "bench", "bench_steps"))
    parser.add_argument("--python", default="/usr/bin/python3", help="interpreter that has torch")
    parser.add_argument("--torch-library-path", help="directory put first on PyTorch's LD_LIBRARY_PATH")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE")
    args = parser.parse_args()

    binary = os.path.abspath(args.bench_binary)
    if not os.access(binary, os.X_OK):
        sys.exit(f"compare.py: {binary} not found; build it with `make -C build bench_steps`")

    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), OPENBLAS_NUM_THREADS=str(args.threads))
    torch_env = dict(env)
    if args.torch_library_path:
        torch_env["LD_LIBRARY_PATH"] = os.pathsep.join(
            p for p in [os.path.abspath(args.torch_library_path), env.get("LD_LIBRARY_PATH", "")] if p)

    load_before = os.getloadavg()
    started = time.time()
    samples = {step: {"opnorm": [], "torch": []} for step in args.steps}
    context, torch_info = {}, {}
    for _ in range(args.rounds):
        for step in args.steps:
            ms, context = run_opnorm(binary, step, env, args)
            samples[step]["opnorm"].append(ms)
            ms, torch_info = run_torch(args.python, step, torch_env, args)
            samples[step]["torch"].append(ms)
    load_after = os.getloadavg()

    rows = []
    for step in args.steps:
        o = statistics.median(samples[step]["opnorm"])
        t = statistics.median(samples[step]["torch"])
        rows.append({"step": step, "opnorm_ms": o, "torch_ms": t, "ratio": o / t,
                     "opnorm_rounds_ms": samples[step]["opnorm"], "torch_rounds_ms": samples[step]["torch"]})

    print(f"CPU: {cpu_model()}, {os.cpu_count()} logical CPUs; threads: {args.threads} (both sides)")
    print(f"PyTorch {torch_info.get('torch')}, BLAS: {torch_info.get('blas')}")
    print(f"{args.clock} time; median of {args.repetitions} blocks of >= {args.min_time} s, {args.rounds} round(s); "
          f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after; {time.time() - started:.0f} s")
    print()
    print(f"| {'step':9s} | {'what':42s} | {'opnorm ms':>10s} | {'PyTorch ms':>10s} | {'opnorm/PyTorch':>14s} |")
    print(f"|{'-' * 11}|{'-' * 44}|{'-' * 11}:|{'-' * 11}:|{'-' * 15}:|")
    for r in rows:
        print(f"| {r['step']:9s} | {DESCRIPTIONS[r['step']]:42s} | {r['opnorm_ms']:10.2f} | {r['torch_ms']:10.2f} "
              f"| {r['ratio']:14.2f} |")

    if args.json:
        with open(args.json, "w") as f:
            json.dump({"cpu": cpu_model(), "threads": args.threads, "clock": args.clock, "repetitions": args.repetitions,
                       "min_time_s": args.min_time, "rounds": args.rounds,
                       "load_average_before": load_before, "load_average_after": load_after,
                       "torch": torch_info, "bench_context": context, "rows": rows}, f, indent=1)
            f.write("\n")


if __name__ == "__main__":
    main()
