#!/usr/bin/env python3
"""Compares reproduce's results.json from one process with one from a job of
several ranks (reproduce --distributed), run with the same options.

What must agree, and how exactly:
  * Models that both runs hold bit for bit: the untrained baseline (made from
    the seed) and the standard model (loaded with --standard-checkpoint).
    The ranks split the test points, measure each point as one process
    would (random starts are keyed by the point's pixels, not its place) and
    join the per-point values exactly. So every count-based measurement of
    these models (the eps rule, Table 1 with the APGD ensemble and the
    masking checks, the attack success rate and the accuracy curves of
    Figures 1-3) must be equal to the last bit. The continuous ones
    (singular values, alignments, deviations) must agree to 1e-5 relative:
    a point's float arithmetic depends on how many points share its batch
    (Eigen's GEMM sums the rows left over from its register blocks in
    another order), a rank's batch is smaller, and an attack's 10 steps
    carry that rounding into the perturbation. Measured: 1.3e-7 at most;
    a point joined in the wrong place or left out would be off by far more.
  * The fine-tuned models are trained data-parallel in float, so they equal
    one process's models up to rounding only (the 2-rank test in double,
    test_data_parallel, bounds that at 1e-10). For them this checks that
    every measurement covers all of the set's points, not one rank's share.

Usage: compare_reproductions.py <one process results.json> <job results.json> <ranks>
"""
import json
import math
import sys

SHARED_MODELS = ("random_init", "standard")
TIMINGS = {"seconds", "train_seconds", "stage_seconds"}


def fail(message):
    print("FAILED: " + message)
    sys.exit(1)


def without_timings(value):
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if k not in TIMINGS}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value


CONTINUOUS_TOLERANCE = 1e-5
# Inside the figures, the measurements made of counts: equal to the last bit.
COUNTED = {"accuracy", "attack_success_rate", "n"}


def same(a, b, exact=True):
    """Equal to the last bit (exact) or to CONTINUOUS_TOLERANCE relative;
    NaN (a single sample's standard error) equals NaN."""
    if isinstance(a, float) and isinstance(b, float):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return a == b if exact else abs(a - b) <= CONTINUOUS_TOLERANCE * max(abs(a), abs(b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k], exact or k in COUNTED) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y, exact) for x, y in zip(a, b))
    return type(a) == type(b) and a == b


def sample_counts(value):
    """Every "n" (points behind a mean) inside a measurement."""
    if isinstance(value, dict):
        for k, v in value.items():
            if k == "n":
                yield v
            else:
                yield from sample_counts(v)


def main():
    one = json.load(open(sys.argv[1]))
    job = json.load(open(sys.argv[2]))
    ranks = int(sys.argv[3])
    for name, r, expected in (("one process", one, 1), ("job", job, ranks)):
        if not r["meta"].get("complete"):
            fail(f"the {name}'s reproduction did not complete")
        if r["meta"].get("ranks") != expected:
            fail(f"the {name}'s results.json says {r['meta'].get('ranks')} ranks, expected {expected}")
    if one["model_order"] != job["model_order"]:
        fail(f"models differ: {one['model_order']} and {job['model_order']}")
    if not same(one["meta"]["points"], job["meta"]["points"]):
        fail(f"point counts differ: {one['meta']['points']} and {job['meta']['points']}")
    if not same(one["eps_selection"], job["eps_selection"]):
        fail(f"the eps rule differs: {one['eps_selection']} and {job['eps_selection']}")

    compared = 0
    for key in SHARED_MODELS:
        for section in ("models", "figure1", "figure2", "figure3"):
            if key not in one.get(section, {}):
                continue
            a, b = without_timings(one[section][key]), without_timings(job[section].get(key))
            if not same(a, b, exact=section == "models"):
                fail(f"{section}/{key} differs between one process and {ranks} ranks:\n  {a}\n  {b}")
            compared += 1
    if compared < 5:
        fail(f"only {compared} measurements of the shared models were found")

    points = job["meta"]["points"]
    expected_n = {"figure1": points["figure_1"], "figure2": points["figure_2"], "figure3": points["figure_3"]}
    for key in job["model_order"]:
        row = job["models"][key]
        if row["robust_points"] != points["robust"]:
            fail(f"{key}: Table 1 measured {row['robust_points']} points, expected {points['robust']}")
        if "ensemble" in row and row["ensemble"]["points"] != points["ensemble"]:
            fail(f"{key}: the ensemble measured {row['ensemble']['points']} points, expected {points['ensemble']}")
        for section, n in expected_n.items():
            if key in job.get(section, {}):
                counts = set(sample_counts(job[section][key]))
                if counts != {n}:
                    fail(f"{section}/{key}: means over {sorted(counts)} points, expected {n}")
    print(f"ok: {compared} measurements of the shared models agree on {ranks} ranks (counts to the last bit); "
          f"every measurement of the {len(job['model_order'])} models covers all points")


if __name__ == "__main__":
    main()
