"""Run the benchmark suites and print a table of ratios (reference time / fused time).

    python benchmarks/summarize.py [pytest -k expression] [--device-name NAME] [--out FILE]

Writes the raw pytest-benchmark JSON and a summary JSON under benchmarks/results/. Ratios only compare
rows measured in the same run; absolute times only mean something on the same machine.
"""
import argparse
import datetime
import json
import os
import platform
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # the source tree (an editable install) comes first


def summarize(raw):
    groups = {}
    for b in raw["benchmarks"]:
        info = b.get("extra_info", {})
        groups.setdefault(b["group"], {})[info.get("impl", b["name"])] = b["stats"]["median"]
    rows = []
    for group, times in sorted(groups.items()):
        fused = times.get("fused")
        row = {"group": group, "times_s": times}
        if fused:
            row["ratios"] = {impl: t / fused for impl, t in times.items() if impl != "fused"}
        rows.append(row)
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-k", default=None, help="pytest -k expression to pick benchmarks")
    ap.add_argument("--device-name", default=None, help="name of the machine, recorded in the JSON")
    ap.add_argument("--out", default=None, help="summary JSON path (default benchmarks/results/<name>.json)")
    ap.add_argument("files", nargs="*", default=[])
    args = ap.parse_args()
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    name = args.device_name or platform.node() or "machine"
    raw_path = os.path.join(HERE, "results", f"raw-{name}.json")
    files = args.files or [os.path.join(HERE, f) for f in sorted(os.listdir(HERE)) if f.startswith("bench_")]
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", HERE, "-c", os.devnull,
           "--benchmark-only", "--benchmark-json", raw_path, "--benchmark-min-rounds", "20",
           "--benchmark-warmup", "on", *files]
    if args.k:
        cmd += ["-k", args.k]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.path.dirname(HERE), env.get("PYTHONPATH")]))
    rc = subprocess.call(cmd, cwd=HERE, env=env)
    with open(raw_path) as f:
        raw = json.load(f)
    import torch
    import cbgan_ext
    rows = summarize(raw)
    summary = {
        "machine": name,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "torch": torch.__version__,
        # the suites' own setting (conftest.py), not this process's
        "threads": int(os.environ.get("CBGAN_BENCH_THREADS", os.cpu_count() or 1)),
        "malloc": os.environ.get("CBGAN_BENCH_MALLOC", "steady"),  # see conftest.py
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "build": cbgan_ext.build_info(),
        "rows": rows,
    }
    out = args.out or os.path.join(HERE, "results", f"{name}.json")
    with open(out, "w") as f:
        json.dump(summary, f, indent=1)
    baselines = sorted({k for r in rows for k in r.get("ratios", {})}, key=lambda k: (k != "eager", k != "compiled", k))
    print(f"\n{'group':<60} {'fused ms':>9} " + " ".join(f"{b + '/fused':>16}" for b in baselines))
    for r in rows:
        t, ratios = r["times_s"], r.get("ratios", {})
        fused = f"{t['fused'] * 1e3:.4f}" if "fused" in t else "-"
        cells = " ".join(f"{(f'{ratios[b]:.2f}x' if b in ratios else '-'):>16}" for b in baselines)
        print(f"{r['group']:<60} {fused:>9} {cells}")
    print(f"\nwrote {out}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
