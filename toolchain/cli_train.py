"""``optc qat``: a thin CLI layer over :func:`optc.train.qat.qat` (quantization-aware training
from an ONNX model, label-free by default)."""

from __future__ import annotations

from .cli_common import add_training_command, print_json


def _figures(section: dict) -> str:
    parts = []
    if "top1" in section:
        parts.append(f"top-1 {100 * section['top1']:.2f}%")
    if "top1_agreement" in section:
        parts.append(f"agreement {100 * section['top1_agreement']:.2f}%")
    parts += [f"SQNR {v:.1f} dB ({k})" for k, v in (section.get("sqnr_db") or {}).items()]
    return ", ".join(parts) or "-"


def cmd_qat(args) -> int:
    from .progress import Progress
    from .train import TrainConfig
    from .train.distill import Distillation
    from .train.qat import QatOptions, qat

    options = QatOptions(
        train=TrainConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, seed=args.seed),
        distill=Distillation(temperature=args.temperature, label_weight=args.label_weight,
                             kinds=None if args.loss == "auto" else (args.loss,)),
        quant_params=args.quant_params, time_budget_s=args.time_budget, labels_key=args.labels_key,
        eval_data=args.eval, force=args.force, val_data=args.val, lr_per_step=args.lr_per_step,
        freeze_scales_last=args.freeze_scales_last, train_weights=not args.fixed_weights,
        weight_lr=args.weight_lr, fidelity=args.fidelity)
    rep = qat(args.model, args.data, args.output, options=options,
              progress=Progress(enabled=not args.quiet and not args.json))
    if args.report:
        from pathlib import Path

        from .artifact import write_json

        write_json(Path(args.report), rep)
    if args.json:
        print_json(rep)
        return 0
    tr = rep["training"]
    print(f"{rep['model']} -> {rep['output']}: {rep['layers_int8']} layers int8, "
          f"{sum(1 for h in tr['history'] if h['epoch'] > 0)} epochs on {rep['samples']} samples in {tr['seconds']:.0f} s"
          + (" (stopped by the time budget)" if tr["stopped_by_budget"] else ""))
    print(f"  post-training: {_figures(rep['post_training'])}")
    print(f"  QAT:           {_figures(rep['qat'])}")
    if rep.get("gap_closed") is not None:
        print(f"  gap to float closed: {100 * rep['gap_closed']:.0f}%  (evaluated on {rep['eval']})")
    return 0


# optc.train.distill.KINDS (a test keeps them equal; importing it here would load numpy for `optc --help`)
LOSS_KINDS = ("kl", "kl-probs", "mse", "mse-probs")


def add_commands(add) -> None:
    q = add_training_command(
        add, "qat", cmd_qat,
        "quantization-aware training: optc's int8 quantization, then fake-quantized training "
        "(learned step sizes) to match the float model on unlabelled inputs (labels optional); "
        "writes the QDQ model `optc compile` integerizes",
        model="float ONNX model (one input)",
        data=("INPUTS.npz", "training inputs keyed by input name (or 'input'); also calibrates"))
    q.add_argument("-o", "--output", required=True, metavar="OUT.onnx", help="QDQ model to write")
    q.add_argument("--labels-key", metavar="KEY",
                   help="label array in --data: mix cross-entropy into the loss (default: label-free)")
    q.add_argument("--label-weight", type=float, default=0.5,
                   help="weight of the cross-entropy when --labels-key is given (default 0.5)")
    q.add_argument("--epochs", type=int, default=5, help="epochs (default 5)")
    q.add_argument("--lr", type=float, default=3e-3,
                   help="Adam learning rate in quantization steps per update: weights move lr x their "
                        "step, scales and biases lr/10 of their size; cosine to 0 (default 0.003)")
    q.add_argument("--batch-size", type=int, default=32, help="batch size (default 32)")
    q.add_argument("--temperature", type=float, default=2.0, help="distillation temperature (default 2)")
    q.add_argument("--loss", choices=("auto",) + LOSS_KINDS, default="auto",
                   help="loss on the outputs: auto (default) = KL for class scores [N, C], MSE on the "
                        "probabilities for per-step scores [N, T, C] (a CTC recognizer), MSE otherwise; "
                        "kl / mse / mse-probs (MSE after a softmax) force one for every output")
    q.add_argument("--val", metavar="VAL.npz",
                   help="held-out inputs (not trained on, not the --eval set): the epoch with the best "
                        "fidelity on them is kept, the untrained model included (default: the last epoch)")
    q.add_argument("--fidelity", choices=("auto", "sqnr"), default="auto",
                   help="per-epoch fidelity (and what --val picks the epoch by): auto (default) = top-1 "
                        "agreement for class scores, SQNR otherwise; sqnr = SQNR in dB always")
    q.add_argument("--lr-per-step", action="store_true",
                   help="cosine learning rate over updates instead of epochs")
    q.add_argument("--freeze-scales-last", action="store_true",
                   help="activation step sizes fixed in the last epoch")
    q.add_argument("--weight-lr", type=float, metavar="LR",
                   help="learning rate of the weights in quantization steps per update (default: --lr)")
    q.add_argument("--fixed-weights", action="store_true",
                   help="train step sizes and biases only (weight codes change only where a step size moved)")
    q.add_argument("--seed", type=int, default=0, help="seed (default 0); a seed gives one result")
    q.add_argument("--time-budget", type=float, metavar="S",
                   help="stop training after the epoch in which S seconds are used up")
    q.add_argument("--eval", metavar="DATA.npz",
                   help="measure before/after on these inputs (labels: accuracy too); default: --data")
    q.add_argument("--quant-params", default="", metavar="TEXT",
                   help="quantize pass parameters, e.g. 'observer=percentile;symmetric' (see optc passes)")
    q.add_argument("--report", metavar="FILE.json", help="write the JSON report here")
    q.add_argument("-f", "--force", action="store_true", help="overwrite OUT.onnx")
    q.add_argument("--json", action="store_true", help="print the report as JSON")
