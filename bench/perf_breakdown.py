#!/usr/bin/python3
"""Where a step's time goes, by part of the network, from a `perf record`
profile of bench_steps: the self time of every sampled symbol, summed into
the groups below (the first pattern that matches a symbol wins).

  OMP_NUM_THREADS=1 perf record -e cpu-clock -o perf.data \\
      build/bench/bench_steps --benchmark_filter='^pga10/' --benchmark_min_time=4
  python3 bench/perf_breakdown.py perf.data

cpu-clock is a software event, so this works in virtual machines where perf
cannot read hardware counters; the shares are sampled CPU time, which other
load on the machine distorts far less than wall time. docs/performance.md
gives these breakdowns before and after each change.
"""
import collections
import re
import subprocess
import sys

GROUPS = [
    # Eigen's GEMM (the micro-kernel, operand packing and GEMV), or
    # OpenBLAS's kernels and copies under backend::cpu_blas.
    ("conv and dense GEMMs (kernel + packing)",
     r"Eigen::internal::(gebp|gemm_pack|general_matrix)|eigen::gemm|cblas::gemm_kernel::gemm|^\[\.\] [sd]gemm_|cblas_[sd]gemm"),
    # Winograd's transforms; convolve's own time is the output transform the
    # compiler inlined into it.
    ("conv Winograd transforms", r"winograd::|convolve_winograd|prepare_filter|winograd_vjp|conv2d<.*>::convolve\b"),
    ("conv im2col, col2im, bias", r"conv2d<.*>::(im2col|col2im|forward|vjp)"),
    ("batch_norm", r"batch_norm"),
    ("relu", r"relu<"),
    ("max_pool2d", r"max_pool2d"),
    ("memset, memcpy", r"__mem(set|move|cpy)"),
    ("kernel (page faults, munmap)", r"^\[k\]"),
]


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    report = subprocess.run(["perf", "report", "-i", sys.argv[1], "--no-children", "--sort", "symbol", "--stdio",
                             "-g", "none"], capture_output=True, text=True, check=True).stdout
    totals = collections.Counter()
    for line in report.splitlines():
        m = re.match(r"\s+([0-9.]+)%\s+(\[.\])\s+(.*)", line)
        if not m:
            continue
        text = m.group(2) + " " + m.group(3)
        name = next((n for n, pattern in GROUPS if re.search(pattern, text)), "other")
        totals[name] += float(m.group(1))
    print("| part | share of samples |")
    print("|---|---:|")
    for name in [n for n, _ in GROUPS] + ["other"]:
        print(f"| {name} | {totals[name]:.1f}% |")


if __name__ == "__main__":
    main()
