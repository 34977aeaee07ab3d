"""Probe QAT recipes on the PP-OCR models with the torch student only (fast, no export).

    python bench/qat_probe.py MODEL TRAIN_LINES TEST_LINES EPOCHS LR
    QG=w,s,b  parameter groups trained (w: weights, s: scales, b: biases; default all)
    SB=1      factor on the scale and bias learning rates;  WARM=0  linear warm-up updates
    T=1       distillation temperature;  BS=8  batch size
    FRESH=1   render TRAIN_LINES new lines for every epoch after the first (seed 1000 + epoch)
    STEP=1    cosine learning rate over updates (default: over epochs)
    FREEZE=1  activation step sizes fixed in the last epoch
    VAL=N     keep the epoch with the best fidelity on N held-out lines (seed 12; 0: last epoch)
    LOSS=kl   the loss on the outputs (default: chosen from them: KL for class scores (cls), MSE on
              the probabilities for per-step scores (rec); optc.train.distill.KINDS)
    OUTSCALE=1  factor on the step size of the quantizer in front of the Softmax (its range clips
              the top logit; >1: fewer clipped, coarser steps)

Builds what :func:`optc.train.qat.qat` trains (post-training quantization with
``observer=percentile`` on the training lines, the torch student and float teacher), trains with
:func:`optc.train.distill.fit` (one thread) and prints the torch student's fidelity on the test
lines (seed 11; per time step for ``rec``) before training and after every epoch, and at the end
(for the kept epoch with ``VAL``). Figures are the torch student's, not onnxruntime's on an
exported model (``bench_qat.py`` measures those).
"""
import os
import sys
import time

import onnx
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def _groups(Q, student, plan, lr: float) -> list:
    """The parameter groups ``QG`` keeps, scale/bias rates times ``SB``."""
    groups = Q.param_groups(student, plan, lr)
    wids = {id(getattr(student, student._attr_of[n])) for n in plan.weights}
    kinds = {id(getattr(student, student._attr_of[n])): "w" if n in plan.weights else "b" if n in plan.biases else "s"
             for n in plan.trainable}
    keep = _env("QG", "w,s,b").split(",")
    groups = [g for g in groups if kinds.get(id(g["params"][0]), "s") in keep]
    for g in groups:
        if id(g["params"][0]) not in wids:
            g["lr"] *= float(_env("SB", "1"))
    return groups


def _widen_output_step(ptq, plan, student, factor: float) -> None:
    """Multiply the step size of the quantizer in front of the model's Softmax (the last layer's
    output: its percentile range clips the top logit) by ``factor`` (``OUTSCALE``)."""
    if factor == 1.0:
        return
    prod = {o: n for n in ptq.graph.node for o in n.output}
    soft = [n for n in ptq.graph.node if n.op_type == "Softmax"][-1]  # the output's (others: attention)
    dq = prod[soft.input[0]]
    while dq.op_type != "DequantizeLinear":  # through Transpose/Reshape
        dq = prod[dq.input[0]]
    name = plan.ties.get(dq.input[1], dq.input[1])
    with torch.no_grad():
        getattr(student, student._attr_of[name]).mul_(factor)
    print("widened", name, "x", factor, flush=True)


def main():
    from bench_quant import synth_lines
    from bench_qat import MODELS, _model_dir
    from optc.train import TrainConfig
    from optc.train import qat as Q
    from optc.train.distill import Distillation, FitHooks, fit, teacher_outputs
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    kind, ntr, nev, epochs, lr = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
    fname, hw = MODELS[kind]
    flip = kind == "cls"
    x = synth_lines(ntr, *hw, seed=10, flip_half=flip)[0]
    ev = synth_lines(nev, *hw, seed=11, flip_half=flip)[0]
    fp = Q.prepare_float(onnx.load(str(_model_dir() / fname)), x.shape[1:])
    ptq, det = Q.post_training_quantize(fp, x, "observer=percentile")
    student, plan, teacher = Q._torch_models(ptq, det, fp, x)
    tr_ref, ev_ref = teacher_outputs(teacher, x), teacher_outputs(teacher, ev)
    nval = int(_env("VAL", "0"))
    val = synth_lines(nval, *hw, seed=12, flip_half=flip)[0] if nval else None
    val_ref = teacher_outputs(teacher, val) if nval else None
    _widen_output_step(ptq, plan, student, float(_env("OUTSCALE", "1")))
    groups = _groups(Q, student, plan, lr)
    warm, proj = int(_env("WARM", "0")), Q._projector(student, plan)
    base = [g["lr"] for g in groups]

    def after(step):
        proj(step)
        if warm and step <= warm:
            for g, b in zip(groups, base):
                g["lr"] = b * min(1.0, (step + 1) / warm)

    def test():
        return Q._agreement(ev_ref, Q._run_torch(student, ev))

    def fidelity():
        r = test()
        v = Q._agreement(val_ref, Q._run_torch(student, val)) if nval else None
        print("  epoch test", r, "val", v, round(time.time() - t0), "s", flush=True)
        return Q._fidelity_value(v if nval else r)

    def epoch_data(k):
        xk = synth_lines(ntr, *hw, seed=1000 + k, flip_half=flip)[0]
        return xk, teacher_outputs(teacher, xk)

    opts = Q.QatOptions(train=TrainConfig(epochs=epochs), freeze_scales_last=_env("FREEZE", "0") == "1")
    hooks = FitHooks(after_step=after, fidelity=fidelity, before_epoch=Q._freezer(student, plan, opts),
                     epoch_data=epoch_data if _env("FRESH", "0") == "1" else None, keep_best=bool(nval),
                     lr_per_step=_env("STEP", "0") == "1")
    print("start test", test(), flush=True)
    t0 = time.time()
    res = fit(student, x, tr_ref, TrainConfig(epochs=epochs, lr=lr, batch_size=int(_env("BS", "8"))),
              distill=Distillation(temperature=float(_env("T", "1")), kinds=(_env("LOSS", ""),) if _env("LOSS", "") else None),
              hooks=hooks, parameters=groups)
    print("end test", test(), "kept epoch", res.recipe.get("kept_epoch"), flush=True)
    print("loss", [round(h.get("loss", 0), 5) for h in res.history], "s", round(time.time() - t0), os.getloadavg())


if __name__ == "__main__":
    main()
