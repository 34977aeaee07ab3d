"""Probe QAT recipes on the PP-OCR models with the torch student only (fast, no export).

    python bench/qat_probe.py MODEL TRAIN_LINES TEST_LINES EPOCHS LR
    QG=w,s,b  parameter groups trained (w: weights, s: scales, b: biases; default all)
    SB=1      factor on the scale and bias learning rates;  WARM=0  linear warm-up updates
    T=1       distillation temperature

Builds what :func:`optc.train.qat.qat` trains (post-training quantization with
``observer=percentile`` on the training lines, the torch student and float teacher), trains with
:func:`optc.train.distill.fit` (batch 8, one thread) and prints the torch student's fidelity on
the test lines (per time step for ``rec``) before training and after every epoch. Figures are
the torch student's, not onnxruntime's on an exported model (``bench_qat.py`` measures those).
"""
import os
import sys
import time

import numpy as np
import onnx
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main():
    from bench_quant import synth_lines
    from bench_qat import _model_dir, MODELS
    from optc.train import qat as Q, TrainConfig
    from optc.train.distill import Distillation, fit, FitHooks, teacher_outputs
    torch.set_num_threads(1)
    kind, ntr, nev, epochs, lr = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
    warm = int(os.environ.get("WARM", "0")); sb = float(os.environ.get("SB", "1")); T = float(os.environ.get("T", "1"))
    fname, hw = MODELS[kind]
    x = synth_lines(ntr, *hw, seed=10, flip_half=kind == "cls")[0]
    ev = synth_lines(nev, *hw, seed=11, flip_half=kind == "cls")[0]
    fp = Q.prepare_float(onnx.load(str(_model_dir() / fname)), x.shape[1:])
    ptq, det = Q.post_training_quantize(fp, x, "observer=percentile")
    student, plan, teacher = Q._torch_models(ptq, det, fp, x)
    tr_ref = teacher_outputs(teacher, x); ev_ref = teacher_outputs(teacher, ev)
    groups = Q.param_groups(student, plan, lr)
    wids = {id(getattr(student, student._attr_of[n])) for n in plan.weights}
    keep = os.environ.get("QG", "w,s,b").split(",")
    kinds = {}
    for n in plan.trainable:
        kinds[id(getattr(student, student._attr_of[n]))] = "w" if n in plan.weights else "b" if n in plan.biases else "s"
    groups = [g for g in groups if kinds.get(id(g["params"][0]), "s") in keep]
    for g in groups:
        if id(g["params"][0]) not in wids: g["lr"] *= sb
    base = [g["lr"] for g in groups]
    proj = Q._projector(student, plan)
    def after(step):
        proj(step)
        if warm and step <= warm:
            for g, b in zip(groups, base): g["lr"] = b * min(1.0, (step + 1) / warm)
    if warm:
        for g, b in zip(groups, base): g["lr"] = b / warm
    def f():
        r = Q._agreement(ev_ref, Q._run_torch(student, ev)); return r
    print("start eval", f(), flush=True)
    hist = []
    def fidelity():
        r = f(); print("  epoch eval", r, flush=True); return r.get("top1_agreement", r["sqnr_db"])
    t0 = time.time()
    res = fit(student, x, tr_ref, TrainConfig(epochs=epochs, lr=lr, batch_size=8), distill=Distillation(temperature=T),
              hooks=FitHooks(after_step=after, fidelity=fidelity), parameters=groups)
    print("loss", [round(h["loss"], 5) for h in res.history], "s", round(time.time() - t0), os.getloadavg())
if __name__ == "__main__":
    main()
