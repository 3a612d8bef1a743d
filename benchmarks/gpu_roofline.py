"""Helper of benchmarks/gpu_check.sh: roofline and host-overhead numbers, then the run's JSON summary.

    python benchmarks/gpu_roofline.py env --out FILE
    python benchmarks/gpu_roofline.py measure --device cuda|cpu [--tiny] --out FILE
    python benchmarks/gpu_roofline.py summary --out-dir DIR --scratch DIR

measure: the bandwidth of a large device-to-device copy (bytes read + written, CUDA events), an fp32 matrix
product's rate, then each fused op's own dispatcher call (forward and backward separately) timed the same way,
with bytes = sizes of the tensors it reads and writes. Inputs rotate over several sets so that repeated
calls do not run from L2. Every case is guarded: a failing op is recorded and the rest still run.
summary: stage statuses, environment, junit counts, pytest-benchmark medians and ratios, and the roofline in
one JSON; merges the benchmark JSON parts into bench.json so that few files come back.
"""
import argparse
import datetime
import glob
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
import xml.etree.ElementTree as ET

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def _run(cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout.strip()
    except Exception as e:  # noqa: BLE001 - a missing tool is a fact to record, not an error
        return f"unavailable ({type(e).__name__})"


# ---- env ------------------------------------------------------------------------------------------------


def cmd_env(args):
    info = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "host": platform.node(),
            "python": sys.version.split()[0], "python_executable": sys.executable}
    info["git_commit"] = _run(["git", "-C", ROOT, "rev-parse", "HEAD"])
    info["nvcc"] = _run(["bash", "-c", "nvcc --version | tail -1"])
    info["gxx"] = _run(["bash", "-c", "${CXX:-g++} --version | head -1"])
    info["driver"] = _run(["bash", "-c", "nvidia-smi --query-gpu=name,driver_version,memory.total "
                                         "--format=csv,noheader"])
    try:
        import torch
        info.update(torch=torch.__version__, torch_cuda=torch.version.cuda,
                    cuda_available=torch.cuda.is_available(),
                    device_count=torch.cuda.device_count() if torch.cuda.is_available() else 0)
        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            info.update(device_name=p.name, capability="%d.%d" % (p.major, p.minor),
                        sm_count=p.multi_processor_count, memory_gib=round(p.total_memory / 2**30, 1),
                        l2_bytes=getattr(p, "L2_cache_size", None))
    except Exception as e:  # noqa: BLE001
        info["torch_error"] = repr(e)
    _dump(info, args.out)
    print(json.dumps({k: info.get(k) for k in ("python", "torch", "torch_cuda", "device_name", "capability")}))


# ---- measure --------------------------------------------------------------------------------------------


class Timer:
    """Median seconds of fn(i) over reps calls, i cycling over the input sets; events on CUDA."""

    def __init__(self, device, reps, warmup):
        import torch
        self.torch, self.device, self.reps, self.warmup = torch, device, reps, warmup

    def sync(self):
        if self.device == "cuda":
            self.torch.cuda.synchronize()

    def __call__(self, fn, n_sets=1):
        torch = self.torch
        for i in range(self.warmup):
            fn(i % n_sets)
        self.sync()
        times = []
        if self.device == "cuda":
            ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                  for _ in range(self.reps)]
            for i, (a, b) in enumerate(ev):
                a.record()
                fn(i % n_sets)
                b.record()
            torch.cuda.synchronize()
            times = [a.elapsed_time(b) * 1e-3 for a, b in ev]
        else:
            for i in range(self.reps):
                t0 = time.perf_counter()
                fn(i % n_sets)
                times.append(time.perf_counter() - t0)
        return statistics.median(times)


def _nbytes(*ts):
    import torch
    total = 0
    for t in ts:
        if isinstance(t, torch.Tensor):
            total += t.numel() * t.element_size()
        elif isinstance(t, (list, tuple)):
            total += _nbytes(*t)
    return total


def _sets_for(bytes_per_set, l2_bytes, cap=16):
    # Enough sets that the working set is 3x L2: repeated calls then stream from HBM, as in training.
    if not l2_bytes:
        return 2
    return max(1, min(cap, -(-3 * l2_bytes // max(1, bytes_per_set))))


def cmd_measure(args):
    out = {"device": args.device, "tiny": args.tiny, "rows": [], "errors": [], "host": {}}
    try:
        return _measure(args, out)
    finally:  # on a timeout's SIGINT too: what was measured comes back
        _dump(out, args.out)


def _measure(args, out):
    import torch
    dev = args.device
    tiny = args.tiny
    if dev == "cuda":
        p = torch.cuda.get_device_properties(0)
        out["device_name"], l2 = p.name, getattr(p, "L2_cache_size", 0)
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    else:
        out["device_name"], l2 = platform.processor() or "cpu", 0
    reps, warmup = (3, 1) if tiny else (30, 5)
    timer = Timer(dev, reps, warmup)
    torch.manual_seed(0)

    def guarded(name, fn):
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - record and go on to the next case
            out["errors"].append({"case": name, "error": f"{type(e).__name__}: {e}"[:500],
                                  "trace": traceback.format_exc()[-1500:]})
            print(f"  {name}: FAILED {type(e).__name__}: {str(e)[:200]}", flush=True)

    # Ceiling 1: device-to-device copy (read + write).
    def copy_bw():
        n = (4 << 20) if tiny else (256 << 20)  # 1 GiB of float32 on the GPU
        x = torch.randn(n, device=dev)
        y = torch.empty_like(x)
        t = Timer(dev, reps, warmup)(lambda i: y.copy_(x))
        b = 2 * x.numel() * x.element_size()
        out["copy"] = {"bytes": b, "median_s": t, "GBps": b / t / 1e9}
        print(f"  copy: {b / 2**30:.2f} GiB moved in {t * 1e3:.3f} ms = {b / t / 1e9:.0f} GB/s", flush=True)
    guarded("copy_bandwidth", copy_bw)

    # Ceiling 2: fp32 matrix product (no TF32), for the projection's FLOP floor.
    def matmul_rate():
        n = 256 if tiny else 8192
        a, b = torch.randn(n, n, device=dev), torch.randn(n, n, device=dev)
        t = Timer(dev, max(3, reps // 5), 2)(lambda i: a @ b)
        out["fp32_matmul"] = {"n": n, "median_s": t, "TFLOPs": 2 * n**3 / t / 1e12}
        print(f"  fp32 matmul n={n}: {2 * n**3 / t / 1e12:.1f} TFLOP/s", flush=True)
    guarded("fp32_matmul", matmul_rate)

    copy_bw_Bps = out.get("copy", {}).get("GBps", 0) * 1e9
    flop_rate = out.get("fp32_matmul", {}).get("TFLOPs", 0) * 1e12

    def row(op, pas, shape, fn, n_sets, nbytes, flops=0, note=""):
        t = timer(fn, n_sets)
        r = {"op": op, "pass": pas, "shape": shape, "bytes": nbytes, "flops": flops, "median_s": t,
             "GBps": nbytes / t / 1e9, "input_sets": n_sets, "note": note}
        if copy_bw_Bps:
            r["frac_of_copy_bw"] = nbytes / t / copy_bw_Bps
        floors = [nbytes / copy_bw_Bps if copy_bw_Bps else 0, flops / flop_rate if flop_rate and flops else 0]
        if max(floors) > 0:
            r["floor_s"] = max(floors)
            r["bound"] = "bytes" if floors[0] >= floors[1] else "flops"
            r["time_over_floor"] = t / max(floors)
        out["rows"].append(r)
        print(f"  {op} {pas} {shape}: {t * 1e6:.1f} us, {nbytes / 2**20:.1f} MiB, {nbytes / t / 1e9:.0f} GB/s"
              + (f" = {r['frac_of_copy_bw']:.2f} of copy" if copy_bw_Bps else ""), flush=True)

    import cbgan_ext  # noqa: F401 - loads the ops
    from cbgan_ext import ops
    C = torch.ops.cbgan_ext
    policy = "color,translation,cutout"

    # DiffAugment 64x3x128x128 float32 (what the benchmark times), forward and backward kernels alone.
    def diff_augment():
        shape = (4, 3, 32, 32) if tiny else (64, 3, 128, 128)
        x0 = torch.randn(shape, device=dev)
        prm = ops.sample_diff_augment_params(x0, policy)
        program = [["color", "translation", "cutout"].index(g) for g in prm.policy]
        pargs = (program, prm.color, prm.translation, prm.cutout, list(prm.cutout_size))
        pbytes = _nbytes(prm.color, prm.translation, prm.cutout)
        n = _sets_for(2 * x0.nbytes, l2)
        xs = [torch.randn(shape, device=dev) for _ in range(n)]
        name = "x".join(map(str, shape)) + " float32"
        row("diff_augment", "fwd", name, lambda i: C.diff_augment(xs[i], *pargs), n, 2 * x0.nbytes + pbytes,
            note="bytes: read x, write y, params; cutout/translation zeros are still written")
        row("diff_augment", "bwd", name, lambda i: C._diff_augment_backward(xs[i], *pargs), n,
            2 * x0.nbytes + pbytes, note="bytes: read grad, write grad_x, params")
        # The public call: draws its parameters (several small RNG launches) and then runs the kernel.
        row("diff_augment", "fwd incl. param sampling", name, lambda i: ops.diff_augment(xs[i], policy), n,
            2 * x0.nbytes + pbytes, note="ops.diff_augment(x, policy): RNG launches + the kernel")
    guarded("diff_augment", diff_augment)

    def class_balancing():
        shapes = [(64, 10), (256, 100)] if tiny else [(256, 1010), (65536, 1010)]
        for B, K in shapes:
            lg0 = torch.randn(B, K, device=dev)
            w = torch.rand(K, device=dev) + 0.1
            outs = C.class_balancing_loss_forward(lg0, w)
            loss, _, probs, mean_probs = outs
            gl = torch.ones_like(loss)
            n = _sets_for(2 * lg0.nbytes, l2)
            lgs = [torch.randn(B, K, device=dev) for _ in range(n)]
            prs = [torch.softmax(lg, 1) for lg in lgs]
            row("class_balancing_loss", "fwd", f"B={B} K={K} float32",
                lambda i: C.class_balancing_loss_forward(lgs[i], w), n, _nbytes(lg0, w) + _nbytes(outs),
                note="bytes: read logits, w; write loss, counts, probs (saved), mean_probs")
            gout = C._class_balancing_loss_backward(gl, probs, w, mean_probs)
            row("class_balancing_loss", "bwd", f"B={B} K={K} float32",
                lambda i: C._class_balancing_loss_backward(gl, prs[i], w, mean_probs), n,
                _nbytes(gl, probs, w, mean_probs, gout), note="bytes: read probs, w, mean_probs; write grad")
    guarded("class_balancing_loss", class_balancing)

    def projection():
        shapes = [(16, 64, 10)] if tiny else [(256, 1024, 1010), (16384, 1024, 1010)]
        for B, L, K in shapes:
            h0 = torch.randn(B, L, device=dev)
            E = torch.randn(K, L, device=dev)
            n = _sets_for(h0.nbytes + B * K * 4, l2)
            hs = [torch.randn(B, L, device=dev) for _ in range(n)]
            ys = [torch.softmax(torch.randn(B, K, device=dev), 1) for _ in range(n)]
            labels = [torch.randint(0, K, (B,), device=dev) for _ in range(n)]
            out_s = C.soft_label_projection_forward(h0, E, ys[0])
            shape = f"B={B} L={L} K={K} float32"
            row("soft_label_projection", "fwd soft", shape, lambda i: C.soft_label_projection_forward(hs[i], E, ys[i]),
                n, _nbytes(h0, E, ys[0]) + _nbytes(out_s), flops=2 * B * K * L + 2 * B * L,
                note="bytes: read h, E, y; write out, proj (saved). flops: y@E and the row dots")
            g = torch.randn(B, device=dev)
            grads = C._soft_label_projection_backward(g, h0, E, ys[0], out_s[1], [True, True, True])
            row("soft_label_projection", "bwd soft", shape,
                lambda i: C._soft_label_projection_backward(g, hs[i], E, ys[i], out_s[1], [True, True, True]), n,
                _nbytes(g, h0, E, ys[0], out_s[1]) + _nbytes(grads), flops=4 * B * K * L + 2 * B * L,
                note="bytes: read g, h, E, y, proj; write dh, dE, dy. flops: dE = y^T(g h), dy = (g h)E^T")
            out_h = C.soft_label_projection_forward(h0, E, labels[0])
            rows_read = min(B, K) * L * E.element_size()  # a gather reads at most min(B, K) rows of E
            row("soft_label_projection", "fwd hard", shape,
                lambda i: C.soft_label_projection_forward(hs[i], E, labels[i]), n,
                _nbytes(h0, labels[0]) + rows_read + _nbytes(out_h), flops=2 * B * L,
                note="bytes: read h, labels, <= min(B,K) rows of E; write outputs. One host sync (range check)")
    guarded("soft_label_projection", projection)

    # Host cost of one DiffAugment call: the Python call alone (no synchronisation; the GPU runs behind)
    # against the call plus synchronisation. Each sample starts with an idle GPU.
    def host_time():
        shape = (4, 3, 32, 32) if tiny else (64, 3, 128, 128)
        x = torch.randn(shape, device=dev, requires_grad=True)
        g = torch.randn(shape, device=dev)
        prm = ops.sample_diff_augment_params(x, policy)
        n = 3 if tiny else 50
        cases = {"fwd (draws params)": lambda: ops.diff_augment(x, policy),
                 "fwd (given params)": lambda: ops.diff_augment(x, policy, params=prm),
                 "fwd+bwd (draws params)": lambda: torch.autograd.grad(ops.diff_augment(x, policy), x, g)}
        for name, fn in cases.items():
            for _ in range(3):
                fn()
            nosync, withsync = [], []
            for _ in range(n):
                timer.sync()
                t0 = time.perf_counter()
                fn()
                nosync.append(time.perf_counter() - t0)
                timer.sync()
                t0 = time.perf_counter()
                fn()
                timer.sync()
                withsync.append(time.perf_counter() - t0)
            r = {"host_call_us": statistics.median(nosync) * 1e6,
                 "call_plus_sync_us": statistics.median(withsync) * 1e6}
            if dev == "cuda":
                r["gpu_us"] = Timer(dev, reps, warmup)(lambda i: fn()) * 1e6
                r["device_launches"] = _count_launches(torch, fn)
            out["host"][name] = r
            print(f"  host diff_augment {name}: call {r['host_call_us']:.1f} us, "
                  f"call+sync {r['call_plus_sync_us']:.1f} us", flush=True)
        out["host"]["shape"] = "x".join(map(str, shape))
    guarded("host_time", host_time)
    return 0 if not out["errors"] else 1


def _count_launches(torch, fn):
    """Kernels, copies and memsets one call puts on the GPU (profiler); None where the profiler fails."""
    try:
        from torch.profiler import ProfilerActivity, profile
        fn()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            fn()
            torch.cuda.synchronize()
        names = [e.name for e in prof.events() if str(getattr(e, "device_type", "")).endswith("CUDA")]
        return {"count": len(names), "names": sorted(set(names))[:20]}
    except Exception as e:  # noqa: BLE001
        return {"count": None, "error": repr(e)[:200]}


# ---- summary --------------------------------------------------------------------------------------------


def _load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _dump(obj, path):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, default=str)
    os.replace(tmp, path)


def _junit(path):
    if not os.path.exists(path):
        return {"error": "no junit xml (stage did not finish or did not run)"}
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        return {"error": f"junit xml unreadable: {e}"}
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    counts["time_s"] = round(sum(float(s.get("time", 0)) for s in suites), 1)
    bad = []
    for case in root.iter("testcase"):
        for tag in ("failure", "error"):
            el = case.find(tag)
            if el is not None:
                msg = (el.get("message") or "").strip().splitlines()
                bad.append(f"{case.get('classname')}::{case.get('name')} [{tag}] {msg[0][:200] if msg else ''}")
    skip_reasons = {}
    for case in root.iter("testcase"):
        el = case.find("skipped")
        if el is not None:
            reason = (el.get("message") or "")[:120]
            skip_reasons[reason] = skip_reasons.get(reason, 0) + 1
    counts["not_passed"] = bad[:50]
    counts["not_passed_total"] = len(bad)
    counts["skip_reasons"] = skip_reasons
    return counts


def _bench_rows(raws):
    groups = {}
    for raw in raws:
        for b in raw.get("benchmarks", []):
            info = b.get("extra_info", {})
            g = groups.setdefault(b["group"], {"times_s": {}, "rounds": {}})
            impl = info.get("impl", b["name"])
            g["times_s"][impl] = b["stats"]["median"]
            g["rounds"][impl] = b["stats"]["rounds"]
    rows = []
    for group, g in sorted(groups.items()):
        fused = g["times_s"].get("fused")
        r = {"group": group, **g}
        if fused:
            r["ratios_vs_fused"] = {k: t / fused for k, t in g["times_s"].items() if k != "fused"}
        rows.append(r)
    return rows


def cmd_summary(args):
    out_dir, scratch = args.out_dir, args.scratch
    stages = []
    path = os.path.join(scratch, "stages.tsv")
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                name, status, rc, secs, limit, note = (line.rstrip("\n").split("\t") + [""] * 6)[:6]
                stages.append({"stage": name, "status": status, "rc": rc, "seconds": secs, "limit_s": limit,
                               "note": note})
    # Merge the benchmark parts into one file (few files come back from the device).
    parts = sorted(glob.glob(os.path.join(out_dir, "bench_*.json")))
    raws = []
    for p in parts:
        raw = _load(p)
        if raw is not None:
            raw["_part"] = os.path.basename(p)
            for b in raw.get("benchmarks", []):  # every round's time: megabytes on a GPU, not needed here
                b.get("stats", {}).pop("data", None)
            raws.append(raw)
    if raws:
        _dump({"parts": raws}, os.path.join(out_dir, "bench.json"))
        for p in parts:
            os.remove(p)
    elif os.path.exists(os.path.join(out_dir, "bench.json")):
        raws = (_load(os.path.join(out_dir, "bench.json")) or {}).get("parts", [])
    env = _load(os.path.join(scratch, "env.json")) or {}
    roof = _load(os.path.join(scratch, "roofline.json"))
    summary = {
        "mode": args.mode,
        "device_name": env.get("device_name"),
        "capability": env.get("capability"),
        "torch": env.get("torch"),
        "torch_cuda": env.get("torch_cuda"),
        "python": env.get("python"),
        "env": env,
        "stages": stages,
        "all_stages_ok": bool(stages) and all(s["status"] in ("ok", "skipped") for s in stages),
        "tests": _junit(os.path.join(out_dir, "tests.xml")),
        "build": _load(os.path.join(scratch, "build_info.json")),
        "benchmarks": {"parts": [r.get("_part") for r in raws],
                       "machine_info": (raws[0].get("machine_info", {}).get("cpu", {}).get("brand_raw")
                                        if raws else None),
                       "rows": _bench_rows(raws)},
        "roofline": roof if roof is not None else {"error": "no roofline output (stage failed or did not run)"},
    }
    _dump(summary, os.path.join(out_dir, "gpu_summary.json"))
    _print_table(summary)
    return 0


def _print_table(s):
    print(f"\n== gpu_summary ({s['mode']}): {s['device_name'] or 'no GPU'} torch {s['torch']} cuda {s['torch_cuda']}")
    for st in s["stages"]:
        print(f"  stage {st['stage']:<18} {st['status']:<8} {st['seconds']:>4}s  {st['note']}")
    t = s["tests"]
    if "tests" in t:
        print(f"  tests: {t['passed']} passed, {t['failures']} failed, {t['errors']} errors, {t['skipped']} skipped")
        for line in t["not_passed"][:10]:
            print(f"    {line}")
    else:
        print(f"  tests: {t.get('error')}")
    for r in s["benchmarks"]["rows"]:
        fused = r["times_s"].get("fused")
        ratios = " ".join(f"{k}/fused={v:.2f}" for k, v in r.get("ratios_vs_fused", {}).items())
        print(f"  bench {r['group'][:58]:<58} fused {fused * 1e3 if fused else float('nan'):8.4f} ms {ratios}")
    roof = s["roofline"]
    if "copy" in roof:
        print(f"  copy bandwidth {roof['copy']['GBps']:.0f} GB/s")
    for r in roof.get("rows", []):
        frac = r.get("frac_of_copy_bw")
        print(f"  roof {r['op']:<22} {r['pass']:<26} {r['shape']:<28} {r['median_s'] * 1e6:9.1f} us "
              f"{r['GBps']:7.0f} GB/s" + (f" {frac:5.2f} of copy" if frac is not None else ""))
    for name, h in roof.get("host", {}).items():
        if isinstance(h, dict):
            print(f"  host diff_augment {name:<24} call {h['host_call_us']:.1f} us, call+sync "
                  f"{h['call_plus_sync_us']:.1f} us" + (f", gpu {h['gpu_us']:.1f} us" if "gpu_us" in h else ""))
    for e in roof.get("errors", []):
        print(f"  roofline error {e['case']}: {e['error'][:150]}")


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("env")
    e.add_argument("--out", required=True)
    m = sub.add_parser("measure")
    m.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    m.add_argument("--tiny", action="store_true", help="small shapes and few repeats (CPU rehearsal)")
    m.add_argument("--out", required=True)
    s = sub.add_parser("summary")
    s.add_argument("--out-dir", required=True)
    s.add_argument("--scratch", required=True)
    s.add_argument("--mode", default="gpu")
    args = ap.parse_args()
    return {"env": cmd_env, "measure": cmd_measure, "summary": cmd_summary}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
