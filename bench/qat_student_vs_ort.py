"""Where the QAT torch student and onnxruntime on its exported QDQ model differ (PP-OCR).

    python bench/qat_student_vs_ort.py [--model rec] [--train 16] [--lines 3] [--epochs 1] [--float-bias]

Builds what :func:`optc.train.qat.qat` trains (post-training quantization with
``observer=percentile`` on ``--train`` rendered lines, seed 10), trains the student for
``--epochs`` on those lines (batch 8, lr 3e-3, all parameter groups, the default loss), exports
the QDQ model and prints, for every activation QuantizeLinear in graph order, how many codes
differ between the student and onnxruntime (graph optimizations off) on the first ``--lines``
lines, then the top-1 agreement and SQNR of the outputs. ``--epochs 0``: the untrained
(post-training) model. ``--float-bias``: the training graph of before 2026-12-06 20:20 UTC (each
bias a float parameter instead of fake-quantized on ``s_x * s_w``), to reproduce the mismatch.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _codes(student, model: onnx.ModelProto, x: np.ndarray) -> list[tuple[str, int, int, int]]:
    """(quantizer output, differing codes, codes, largest difference) per activation quantizer."""
    import torch

    from optc.verify import ort_session

    inits = {t.name for t in model.graph.initializer}
    names = [n.output[0] for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in inits]
    probe = onnx.ModelProto.FromString(model.SerializeToString())
    del probe.graph.output[:]
    probe.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in names)
    sess = ort_session(probe, threads=2)
    keep = student.output_names
    student.output_names = names
    rows = {n: [0, 0, 0] for n in names}
    with torch.no_grad():
        for i in range(len(x)):
            for n, a, b in zip(names, sess.run(None, {model.graph.input[0].name: x[i:i + 1]}),
                               student(torch.from_numpy(x[i:i + 1]))):
                d = np.abs(a.astype(np.int64) - b.numpy().astype(np.int64))
                rows[n] = [rows[n][0] + int(np.count_nonzero(d)), rows[n][1] + d.size, max(rows[n][2], int(d.max()))]
    student.output_names = keep
    return [(n, *rows[n]) for n in names]


def main(argv=None) -> int:
    import torch

    from bench_qat import MODELS, _model_dir
    from bench_quant import synth_lines
    from optc.train import TrainConfig
    from optc.train import qat as Q
    from optc.train.distill import FitHooks, fit, teacher_outputs

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="rec", choices=sorted(MODELS))
    ap.add_argument("--train", type=int, default=16)
    ap.add_argument("--lines", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--float-bias", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    if args.float_bias:
        Q._bias_grid_nodes = lambda bf, names, inits, plan: ([], bf)
    fname, hw = MODELS[args.model]
    x = synth_lines(args.train, *hw, seed=10, flip_half=args.model == "cls")[0]
    fp = Q.prepare_float(onnx.load(str(_model_dir() / fname)), x.shape[1:])
    ptq, det = Q.post_training_quantize(fp, x, "observer=percentile")
    student, plan, teacher = Q._torch_models(ptq, det, fp, x)
    if args.epochs:
        fit(student, x, teacher_outputs(teacher, x), TrainConfig(epochs=args.epochs, lr=3e-3, batch_size=8),
            hooks=FitHooks(after_step=Q._projector(student, plan)), parameters=Q.param_groups(student, plan, 3e-3))
    exported = Q.export_qdq(ptq, plan, Q.trained_values(student, plan))
    xs = x[:args.lines]
    for name, diff, size, largest in _codes(student, exported, xs):
        print(f"{name:45s} {diff:8d} of {size:8d} codes differ ({diff / size:.1e}), largest {largest}")
    print("outputs, student vs onnxruntime:", Q._agreement(Q._run_ort(exported, xs), Q._run_torch(student, xs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
