#!/usr/bin/env python3
"""Binary (1-bit) layers and the binary digits CNN against their fp32 versions, all compiled by
optc: latency per layer and end to end on this CPU, model size in bits/bytes, accuracy, and the
same artifacts built for 64-bit ARM, run under qemu and compared bit for bit.

    python bench/bench_binary.py                       # everything (about 5-10 minutes)
    python bench/bench_binary.py --no-arm              # x86 only
    python bench/bench_binary.py --json bench/results/binary.json
    python bench/bench_binary.py --only digits_wide --json bench/results/binary_digits_wide.json

What is compared (every package built with ``optc.compile``, verified, default settings):

1. **Layers**, batch 1: a 3x3 convolution 256 -> 256 channels on 28x28 (pad 1) and a dense
   layer 4096 -> 4096. fp32: an ONNX ``Conv`` / ``Gemm`` with random weights, default
   pipeline. Binary: the ``ai.optc`` op itself (``BinaryConv2d`` / ``BinaryDense`` with the
   sign bits of the same weights and alpha = mean|w| per output channel; the op binarizes its
   float input at run time, so input and output are the same float tensors as fp32).
2. **digits CNNs end to end**, each binary model against its fp32 version (same layout):
   ``digits_wide`` = ``models/digits_cnn_wide.onnx`` vs ``models/digits_bcnn_wide.onnx``
   (64-128-256 channels, a FINN CNV-like BNN width: the pair the targets are measured on) and
   ``digits`` = the small bundled ``digits_cnn.onnx`` vs ``digits_bcnn.onnx`` (16-32-64
   channels: a few microseconds of kernel-call overhead either way). fp32: default pipeline;
   binary: ``optc.models.binary_digits.FUSED_PIPELINE`` (``simplify,sign-to-threshold,binarize,
   fuse-binary-threshold``: thresholds and 2x2 max-pools computed in the binary convolutions'
   epilogue; ``--binary-passes`` to compare with another pipeline); batch 1 and 64; top-1 on
   ``models/digits_eval.npz`` (``--eval``), weight bytes (tensor payload of the optimized ONNX,
   i.e. of ``params.bin`` with ``--params separate``) and bits.
3. **Per layer** inside the end-to-end models: each kernel call timed by a Relax VM instrument
   (Python callback before/after every call: adds ~1 us per call, so small kernels read high).
4. **ARM** (``arm`` = Cortex-A72 target): the same packages cross-built, run under
   ``qemu-aarch64 -cpu cortex-a72``; outputs compared with the x86 artifact (and, for the
   binary layers built without alpha, with the exact integer numpy reference); executed
   guest instructions per inference from qemu's insn plugin (``optc.backends.tvm.qemu_plugin``)
   when it can be built here. Emulated wall time is not ARM latency and is not reported.

Latency: wall clock per call in the process, from numpy inputs to numpy outputs on every side
(``Session.time`` includes the input conversion and output copies, like onnxruntime's
``run()``), ``--rounds`` rounds that alternate fp32 and binary so machine noise hits both alike,
``--repeat`` calls per variant in total; medians, p10-p90 and the speed-up (fp32 median / binary
median, also per round). TVM's thread pool is set to each of ``--threads`` with
``runtime.config_threadpool`` (as ``optc.bench``); the count it reports in use and the load
average are recorded with each figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


TIMING_BOUNDARY = ("numpy inputs to numpy outputs for optc (CpuSession.time: input conversion, VM call, output "
                   "copies) and onnxruntime (run()); per-kernel breakdowns time the kernel calls only")


def log(msg: str) -> None:
    print(f"[bench_binary {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------- models
def layer_models(tmp: Path) -> dict:
    """fp32 and binary ONNX files for the two benchmark layers, plus inputs."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from optc.passes import optc_ops as ops

    rng = np.random.default_rng(0)
    out = {}

    def save(name, nodes, x_shape, y_shape, inits, domains=()):
        g = helper.make_graph(nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)] + [helper.make_opsetid(d, 1) for d in domains])
        onnx.checker.check_model(m)
        path = tmp / f"{name}.onnx"
        onnx.save(m, path)
        return path

    # conv 256 -> 256, 3x3, 28x28, pad 1
    w = (rng.standard_normal((256, 256, 3, 3)) * 0.05).astype(np.float32)
    alpha = np.abs(w).reshape(256, -1).mean(1).astype(np.float32)
    wbits = ops.pack_bits((w >= 0).transpose(0, 2, 3, 1).reshape(256, -1))
    attrs = {"in_channels": 256, "kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "strides": [1, 1], "dilations": [1, 1]}
    x = rng.standard_normal((1, 256, 28, 28)).astype(np.float32)
    out["conv3x3_256_28x28"] = {
        "fp32": save("conv_fp32", [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])],
                     [1, 256, 28, 28], [1, 256, 28, 28], {"w": w}),
        "binary": save("conv_bin", [helper.make_node("BinaryConv2d", ["x", "w", "alpha"], ["y"], domain=ops.DOMAIN, **attrs)],
                       [1, 256, 28, 28], [1, 256, 28, 28], {"w": wbits, "alpha": alpha}, [ops.DOMAIN]),
        "binary_int": save("conv_bin_int", [helper.make_node("BinaryConv2d", ["x", "w"], ["y"], domain=ops.DOMAIN, **attrs)],
                           [1, 256, 28, 28], [1, 256, 28, 28], {"w": wbits}, [ops.DOMAIN]),
        "x": x, "weights": {"fp32_bits": w.size * 32, "binary_bits": w.size + 256 * 32},
        "flops": 2 * 256 * 256 * 9 * 28 * 28,
    }
    # dense 4096 -> 4096
    w = (rng.standard_normal((4096, 4096)) * 0.02).astype(np.float32)
    alpha = np.abs(w).mean(1).astype(np.float32)
    wbits = ops.pack_bits(w >= 0)
    x = rng.standard_normal((1, 4096)).astype(np.float32)
    out["dense_4096x4096"] = {
        "fp32": save("dense_fp32", [helper.make_node("Gemm", ["x", "w"], ["y"], transB=1)], [1, 4096], [1, 4096], {"w": w}),
        "binary": save("dense_bin", [helper.make_node("BinaryDense", ["x", "w", "alpha"], ["y"], domain=ops.DOMAIN, in_features=4096)],
                       [1, 4096], [1, 4096], {"w": wbits, "alpha": alpha}, [ops.DOMAIN]),
        "binary_int": save("dense_bin_int", [helper.make_node("BinaryDense", ["x", "w"], ["y"], domain=ops.DOMAIN, in_features=4096)],
                           [1, 4096], [1, 4096], {"w": wbits}, [ops.DOMAIN]),
        "x": x, "weights": {"fp32_bits": w.size * 32, "binary_bits": w.size + 4096 * 32},
        "flops": 2 * 4096 * 4096,
    }
    return out


# ------------------------------------------------------------------------------- helpers
def compile_pkg(path, target, out, **kw) -> dict:
    import optc

    t0 = time.perf_counter()
    rep = optc.compile(str(path), target, str(out), **kw, options=optc.CompileOptions.of(measure=False, force=True))
    rep["bench_compile_seconds"] = round(time.perf_counter() - t0, 1)
    return rep


def session(pkg):
    from optc import artifact
    from optc.backends import get_backend

    manifest = artifact.read_package(pkg)
    return get_backend(manifest["target"]["backend"]).load(Path(pkg), manifest), manifest


def stats(times) -> dict:
    ms = sorted(t * 1e3 for t in times)
    q = lambda p: ms[min(len(ms) - 1, int(round(p * (len(ms) - 1))))]  # noqa: E731
    return {"median_ms": statistics.median(ms), "p10_ms": q(0.1), "p90_ms": q(0.9), "min_ms": ms[0], "n": len(ms)}


def interleaved(sessions: dict, args: dict, repeat: int, rounds: int, warmup: int = 5) -> dict:
    """Time each session in ``rounds`` alternating rounds; per-variant stats and round medians."""
    per = max(1, repeat // rounds)
    for name, s in sessions.items():
        s.time(args[name], warmup=warmup, repeat=0)
    times = {n: [] for n in sessions}
    round_medians = {n: [] for n in sessions}
    for _ in range(rounds):
        for name, s in sessions.items():
            t = s.time(args[name], warmup=0, repeat=per)
            times[name] += t
            round_medians[name].append(statistics.median(t) * 1e3)
    return {n: stats(t) | {"round_medians_ms": [round(v, 4) for v in round_medians[n]]} for n, t in times.items()}


def speedup(res: dict, a: str = "fp32", b: str = "binary") -> dict:
    per_round = [x / y for x, y in zip(res[a]["round_medians_ms"], res[b]["round_medians_ms"])]
    return {"median": res[a]["median_ms"] / res[b]["median_ms"], "per_round_min": min(per_round),
            "per_round_max": max(per_round)}


def per_layer(pkg, x: np.ndarray, calls: int = 30) -> list[dict]:
    """Median time of each kernel call of ``main`` (Relax VM instrument)."""
    import tvm
    from tvm import relax

    lib = tvm.runtime.load_module(str(Path(pkg) / "model.so"))
    vm = relax.VirtualMachine(lib, tvm.cpu())
    times: dict[str, list[float]] = {}
    order: list[str] = []
    start: dict[str, float] = {}

    def instrument(func, name, before, ret, *args):
        if name.startswith("vm.builtin"):
            return
        if before:
            start[name] = time.perf_counter()
        else:
            if name not in times:
                times[name] = []
                order.append(name)
            times[name].append(time.perf_counter() - start[name])

    vm.set_instrument(instrument)
    xt = tvm.runtime.tensor(x)
    for _ in range(calls):
        vm["main"](xt)
    return [{"kernel": n, "median_us": round(statistics.median(times[n]) * 1e6, 2)} for n in order]


def weight_info(onnx_path) -> dict:
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(onnx_path))
    arrays = [numpy_helper.to_array(t) for t in m.graph.initializer]
    return {"bytes": int(sum(a.nbytes for a in arrays)), "bits": int(sum(a.nbytes for a in arrays) * 8),
            "tensors": len(arrays), "by_dtype": {str(dt): int(sum(a.nbytes for a in arrays if a.dtype == dt))
                                                 for dt in sorted({a.dtype for a in arrays}, key=str)}}


class OrtSession:
    """onnxruntime on an ONNX file (all graph optimizations, ``threads`` intra-op threads), with
    the ``time`` call of optc's sessions: fp32 context for the layer numbers."""

    def __init__(self, path, input_name: str, threads: int):
        from optc.verify import ort_session

        self._s = ort_session(path, threads=threads, optimize=True)
        self._name = input_name

    def time(self, inputs, warmup: int, repeat: int) -> list[float]:
        feeds = {self._name: inputs[0]}
        for _ in range(warmup):
            self._s.run(None, feeds)
        out = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            self._s.run(None, feeds)
            out.append(time.perf_counter() - t0)
        return out


def set_threads(n: int) -> None:
    """Set TVM's thread pool of this process to ``n`` for real, as ``optc.bench`` does."""
    import tvm

    tvm.get_global_func("runtime.config_threadpool")(1, int(n))


def threads_in_use(n: int) -> dict:
    """What each side reports in use (read after the warm-up calls, when TVM's pool exists),
    and the load average: recorded with every latency figure."""
    import tvm

    return {"threads_applied": {"optc (TVM runtime.NumThreads)": int(tvm.get_global_func("runtime.NumThreads")()),
                                "onnxruntime (intra_op_num_threads)": n},
            "load_average": [round(v, 2) for v in os.getloadavg()]}


# ------------------------------------------------------------------------------- experiments
def bench_layers(tmp: Path, args, results: dict) -> dict:
    layers = layer_models(tmp)
    out = {}
    for name, lay in layers.items():
        log(f"layer {name}: compiling fp32 and binary for cpu")
        feeds = {"x": lay["x"]}
        reps = {v: compile_pkg(lay[v], "cpu", tmp / f"{name}.{v}.cpu", inputs=feeds) for v in ("fp32", "binary", "binary_int")}
        sess = {v: session(reps[v]["package"])[0] for v in ("fp32", "binary")}
        entry = {"verify": {v: reps[v]["verify"].get("passed") for v in reps},
                 "weight_bits": lay["weights"], "size_ratio_bits": lay["weights"]["fp32_bits"] / lay["weights"]["binary_bits"],
                 "gflop_fp32": lay["flops"] / 1e9, "latency": {}}
        for th in args.threads:
            set_threads(th)
            both = sess | {"onnxruntime_fp32": OrtSession(lay["fp32"], "x", th)}
            res = interleaved(both, {k: [lay["x"]] for k in both}, args.repeat, args.rounds)
            entry["latency"][f"{th}_threads"] = res | {"speedup": speedup(res),
                                                       "speedup_vs_onnxruntime_fp32": speedup(res, "onnxruntime_fp32")
                                                       } | threads_in_use(th)
            log(f"  {th} thread(s): fp32 {res['fp32']['median_ms']:.4f} ms (onnxruntime "
                f"{res['onnxruntime_fp32']['median_ms']:.4f} ms), binary {res['binary']['median_ms']:.4f} ms "
                f"-> {speedup(res)['median']:.1f}x")
        set_threads(args.threads[-1])
        # exactness of the integer part: the alpha-free op against the numpy reference
        from optc.passes import optc_ops as ops

        s_int = session(reps["binary_int"]["package"])[0]
        got = s_int.run([lay["x"]])[0]
        want = ops.reference_evaluator(__import__("onnx").load(str(lay["binary_int"]))).run(None, feeds)[0]
        entry["integer_exact_vs_numpy"] = bool(np.array_equal(got, want))
        out[name] = {"packages": {v: reps[v]["package"] for v in reps}, **entry}
        if args.arm:
            out[name]["arm"] = arm_check(tmp, name, lay, reps, args)
    return out


def arm_check(tmp, name, model_paths, cpu_reps, args, x=None, variants=("fp32", "binary", "binary_int")) -> dict:
    """Build for arm, run under qemu, compare with the x86 artifact bit for bit; count instructions."""
    from optc.backends.tvm import qemu_plugin

    res = {}
    x = model_paths["x"] if x is None else x
    for v in variants:
        if v not in model_paths:
            continue
        log(f"  arm: {name} {v}")
        kw = {"inputs": {"input" if "digits" in name or "cnn" in name else "x": x}}
        if "input_shapes" in model_paths:
            kw["input_shapes"] = model_paths["input_shapes"]
        if "passes" in model_paths and v in model_paths["passes"]:
            kw["passes"] = model_paths["passes"][v]
        rep = compile_pkg(model_paths[v], "arm", tmp / f"{name}.{v}.arm", **kw)
        sess, manifest = session(rep["package"])
        arm_out = sess.run([x])[0]
        x86_out = session(cpu_reps[v]["package"])[0].run([x])[0]
        entry = {"verify_passed": rep["verify"].get("passed"), "max_abs_error_vs_reference": rep["verify"].get("max_abs_error"),
                 "bitwise_equal_to_x86_artifact": bool(np.array_equal(arm_out, x86_out)),
                 "max_abs_diff_vs_x86": float(np.max(np.abs(arm_out.astype(np.float64) - x86_out)))}
        if args.insn:
            try:
                files = manifest["files_by_role"]
                pkg = Path(rep["package"])
                entry["instructions"] = qemu_plugin.count_instructions(
                    pkg / files["library"], [x], params_path=pkg / files["params"] if "params" in files else None,
                    qemu_cpu=manifest["target"].get("qemu_cpu") or "cortex-a72", bundle=(pkg / files["runner"]).parent)
            except Exception as err:  # noqa: BLE001 - report, go on
                entry["instructions"] = {"count": None, "reason": " ".join(str(err).split())[:300]}
        res[v] = entry
    counts = {v: (res[v].get("instructions") or {}).get("count") for v in res}
    if counts.get("fp32") and counts.get("binary"):
        res["instruction_ratio_fp32_over_binary"] = counts["fp32"] / counts["binary"]
    return res


DIGITS_PAIRS = {
    # name: (fp32 file, binary file, binary_digits.json key of the binary model)
    "digits_wide": ("digits_cnn_wide.onnx", "digits_bcnn_wide.onnx", "digits_bcnn_wide"),
    "digits": ("digits_cnn.onnx", "digits_bcnn.onnx", "digits_bcnn"),
}


def bench_digits(tmp: Path, args, pair: str = "digits_wide") -> dict:
    """One fp32 / binary pair of digits CNNs end to end: accuracy, weights, latency (batches x
    threads), per-kernel breakdown, and on arm the bit-exactness and instruction counts."""
    from optc.models.binary_digits import FUSED_PIPELINE

    pipeline = args.binary_passes or FUSED_PIPELINE
    models = REPO / "models"
    eval_npz = models / "digits_eval.npz"
    data = np.load(eval_npz)
    fp32_file, bin_file, key = DIGITS_PAIRS[pair]
    meta = json.loads((models / "binary_digits.json").read_text())["models"][key]
    out = {"models": {"fp32": fp32_file, "binary": bin_file}, "binary_passes": pipeline,
           "accuracy": {}, "weights": {}, "latency": {}, "per_layer": {}}
    variants = {"fp32": (models / fp32_file, None), "binary": (models / bin_file, pipeline)}
    reps = {}
    for batch in args.batches:
        for v, (path, passes) in variants.items():
            log(f"{pair} {v}: compile for cpu, batch {batch}" + (" with --eval" if batch == 1 else ""))
            kw = {"input_shapes": {"input": (batch, 1, 8, 8)}, "inputs": eval_npz}
            if passes:
                kw["passes"] = passes
            if batch == 1:
                kw["eval_data"] = eval_npz
            reps[(v, batch)] = compile_pkg(path, "cpu", tmp / f"{pair}.{v}.b{batch}.cpu", **kw)
            if batch == 1:
                acc = reps[(v, batch)]["accuracy"]
                out["accuracy"][v] = {"top1": acc["top1"], "samples": acc["samples"], "evaluated_on": acc["evaluated_on"]}
                sep = compile_pkg(path, "cpu", tmp / f"{pair}.{v}.sep", params="separate", verify_outputs=False,
                                  **{k: kw[k] for k in ("input_shapes", "passes") if k in kw})
                w = weight_info(Path(sep["package"]) / "model.onnx")
                out["weights"][v] = w | {"params_bin_file_bytes": sep["size_bytes"]["params"],
                                         "library_bytes_embedded": reps[(v, batch)]["size_bytes"]["library"]}
        out.setdefault("verify", {})[f"batch{batch}"] = {v: reps[(v, batch)]["verify"].get("passed") for v in variants}
        sess = {v: session(reps[(v, batch)]["package"])[0] for v in variants}
        x = data["input"][:batch]
        out["per_layer"][f"batch{batch}"] = {}
        for th in args.threads:
            set_threads(th)
            res = interleaved(sess, {v: [x] for v in variants}, args.repeat, args.rounds)
            out["latency"][f"batch{batch}_{th}_threads"] = res | {"speedup": speedup(res)} | threads_in_use(th)
            log(f"  batch {batch}, {th} thread(s): fp32 {res['fp32']['median_ms']:.4f} ms, binary "
                f"{res['binary']['median_ms']:.4f} ms -> {speedup(res)['median']:.1f}x")
            out["per_layer"][f"batch{batch}"][f"{th}_threads"] = {
                v: per_layer(reps[(v, batch)]["package"], x) for v in variants}
    out["accuracy"]["drop_points"] = 100 * (out["accuracy"]["fp32"]["top1"] - out["accuracy"]["binary"]["top1"])
    out["weights"]["ratio_bytes"] = out["weights"]["fp32"]["bytes"] / out["weights"]["binary"]["bytes"]
    out["bnn_json"] = {k: meta[k] for k in ("test_accuracy", "binarized_test_accuracy", "fp32_test_accuracy", "weight_bytes")}
    if args.arm:
        paths = {"fp32": variants["fp32"][0], "binary": variants["binary"][0], "x": data["input"][:1],
                 "input_shapes": {"input": (1, 1, 8, 8)}, "passes": {"binary": pipeline}}
        cpu = {v: reps[(v, 1)] for v in variants}
        out["arm"] = arm_check(tmp, pair, paths, cpu, args, variants=("fp32", "binary"))
    return out


# ------------------------------------------------------------------------------- main
def table(results: dict) -> str:
    lines = ["", f"timing boundary: {TIMING_BOUNDARY}", "", "== layers (batch 1, cpu) =="]
    for name, r in results.get("layers", {}).items():
        for th, lat in r["latency"].items():
            lines.append(f"{name:22s} {th:10s} fp32 {lat['fp32']['median_ms']:9.4f} ms  binary {lat['binary']['median_ms']:8.4f} ms"
                         f"  speed-up {lat['speedup']['median']:6.1f}x (rounds {lat['speedup']['per_round_min']:.1f}-"
                         f"{lat['speedup']['per_round_max']:.1f}); onnxruntime fp32 {lat['onnxruntime_fp32']['median_ms']:.4f} ms "
                         f"({lat['speedup_vs_onnxruntime_fp32']['median']:.1f}x); TVM threads in use "
                         f"{lat['threads_applied']['optc (TVM runtime.NumThreads)']}, load {lat['load_average'][0]:.2f}")
        lines.append(f"{'':22s} weight bits {r['weight_bits']['fp32_bits']} -> {r['weight_bits']['binary_bits']} "
                     f"({r['size_ratio_bits']:.1f}x); integer part exact vs numpy: {r['integer_exact_vs_numpy']}")
        if "arm" in r:
            a = r["arm"]
            lines.append(f"{'':22s} arm: " + ", ".join(
                f"{v} bitwise==x86 {a[v]['bitwise_equal_to_x86_artifact']} insns {(a[v].get('instructions') or {}).get('count')}"
                for v in ("fp32", "binary", "binary_int") if v in a)
                + (f"; insn ratio {a['instruction_ratio_fp32_over_binary']:.1f}x" if "instruction_ratio_fp32_over_binary" in a else ""))
    for pair in DIGITS_PAIRS:
        d = results.get(pair)
        if not d:
            continue
        lines += ["", f"== {pair} end to end (cpu): {d['models']['fp32']} vs {d['models']['binary']} "
                      f"({d['binary_passes']}) =="]
        for k, lat in d["latency"].items():
            sp = lat["speedup"]
            lines.append(f"{k:20s} fp32 {lat['fp32']['median_ms']:.4f} ms  binary {lat['binary']['median_ms']:.4f} ms  "
                         f"speed-up {sp['median']:.1f}x (rounds {sp['per_round_min']:.1f}-{sp['per_round_max']:.1f}); "
                         f"TVM threads in use {lat['threads_applied']['optc (TVM runtime.NumThreads)']}, "
                         f"load {lat['load_average'][0]:.2f}")
        lines.append(f"top-1 fp32 {d['accuracy']['fp32']['top1']:.4f}  binary {d['accuracy']['binary']['top1']:.4f}  "
                     f"(drop {d['accuracy']['drop_points']:.2f} points)")
        lines.append(f"weights fp32 {d['weights']['fp32']['bytes']} B ({d['weights']['fp32']['bits']} bits)  binary "
                     f"{d['weights']['binary']['bytes']} B ({d['weights']['binary']['bits']} bits) "
                     f"({d['weights']['ratio_bytes']:.1f}x smaller)")
        for b, per_th in d["per_layer"].items():
            for th, per in per_th.items():
                for v, ks in per.items():
                    lines.append(f"  per kernel {b} {th} {v:6s}: " + ", ".join(f"{k['kernel']} {k['median_us']:.1f}" for k in ks)
                                 + " us")
        if "arm" in d:
            a = d["arm"]
            lines.append("arm: " + ", ".join(f"{v} verify {a[v]['verify_passed']} bitwise==x86 {a[v]['bitwise_equal_to_x86_artifact']} "
                                             f"insns {(a[v].get('instructions') or {}).get('count')}" for v in ("fp32", "binary"))
                         + (f"; instruction ratio {a['instruction_ratio_fp32_over_binary']:.2f}x"
                            if "instruction_ratio_fp32_over_binary" in a else ""))
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json", type=Path, help="write every figure to this JSON file")
    p.add_argument("--repeat", type=int, default=200, help="timed calls per variant (default 200)")
    p.add_argument("--rounds", type=int, default=10, help="alternating rounds (default 10)")
    p.add_argument("--threads", type=lambda s: [int(v) for v in s.split(",")], default=[1, 2],
                   help="TVM thread-pool sizes to time with (default 1,2)")
    p.add_argument("--batches", type=lambda s: [int(v) for v in s.split(",")], default=[1, 64],
                   help="digits CNN batch sizes (default 1,64)")
    p.add_argument("--no-arm", dest="arm", action="store_false", help="skip the aarch64 builds and qemu runs")
    p.add_argument("--no-insn", dest="insn", action="store_false", help="skip qemu instruction counts")
    p.add_argument("--only", choices=["layers", *DIGITS_PAIRS], help="run one part")
    p.add_argument("--binary-passes", default=None,
                   help="pipeline for the binary digits models (default optc.models.binary_digits.FUSED_PIPELINE)")
    args = p.parse_args(argv)
    import tvm

    results = {"machine": {"platform": platform.platform(), "processor": platform.processor(),
                           "cpu_count": os.cpu_count(), "tvm_target": None,
                           "load_average_at_start": os.getloadavg()},
               "method": "wall clock per call (Session.time), interleaved rounds; see module docstring",
               "timing_boundary": TIMING_BOUNDARY,
               "settings": {k: v for k, v in vars(args).items() if k != "json"} | {"json": str(args.json)}}
    from optc.backends.tvm import lower
    from optc.targets import get_target

    results["machine"]["tvm_target"] = str(lower.resolved_target_dict(get_target("cpu")))
    results["versions"] = {"tvm": tvm.__version__}
    with tempfile.TemporaryDirectory(prefix="bench-binary-") as td:
        tmp = Path(td)
        if args.only in (None, "layers"):
            results["layers"] = bench_layers(tmp, args, results)
        for pair in DIGITS_PAIRS:
            if args.only in (None, pair):
                results[pair] = bench_digits(tmp, args, pair)
    results["machine"]["load_average_at_end"] = os.getloadavg()
    print(table(results))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
