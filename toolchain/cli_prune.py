"""``optc prune-scan``, ``optc prune-finetune`` and ``optc prune-train``: thin CLI layers over
:func:`optc.prune_scan.scan`, :func:`optc.train.finetune.prune_finetune` and
:func:`optc.train.gates.prune_train`."""

from __future__ import annotations

import sys

from .cli_common import add_channel_multiple, add_training_command, print_json


def _progress(args):
    from .progress import Progress

    return Progress(enabled=not args.quiet and not getattr(args, "json", False))


def _floats(text: str) -> list[float]:
    from .errors import UsageError

    try:
        return [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise UsageError(f"--ratios {text!r}: expected numbers separated by commas, e.g. 0.25,0.5,0.75") from None


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _multiple(args) -> int:
    """``--multiple``, or by default the fp32 SIMD lanes of ``--target`` (8 on AVX2, 16 on
    AVX-512, 4 on NEON; 1 for targets without a SIMD width), as ``optc compile`` rounds
    ``prune``: kept channel counts stay on the vectorized schedules."""
    if args.multiple is not None:
        return args.multiple
    from optc.backends import get_backend

    from .targets import get_target

    target = get_target(args.target)
    return int(get_backend(target.backend).target_facts(target).get("channel_multiple", 1))


def cmd_prune_scan(args) -> int:
    from .frontend import parse_shape_args
    from .prune_scan import PruneSettings, ScanBudget, scan

    res = scan(args.model, args.eval, input_shapes=parse_shape_args(args.input_shape or []),
               ratios=_floats(args.ratios),
               settings=PruneSettings(args.criterion, _multiple(args), args.min_channels),
               budget=ScanBudget(args.target_flops, args.max_accuracy_drop), eval_limit=args.eval_limit,
               progress=_progress(args))
    if args.json:
        print_json(res)
        return 0
    base = res["baseline"]
    metric = res["eval"]["metric"]
    print(f"{res['model']}: {metric} {base['metric']:.2f}% on {res['eval']['samples']} samples "
          f"({res['eval']['metric_note']}), {base['flops']:,} FLOPs, criterion {res['criterion']}")
    width = max([len(r["group"]) for r in res["rows"]] + [5])
    print(f"  {'group':{width}} {'C':>5} {'ratio':>6} {'kept':>5} {'FLOPs':>7} {metric:>8} {'drop':>7}")
    for r in res["rows"]:
        print(f"  {r['group']:{width}} {r['channels']:>5} {r['ratio']:>6.2f} {r['kept']:>5} "
              f"{_pct(r['flops_fraction']):>7} {r['metric']:>7.2f}% {r['drop_points']:>+7.2f}"
              + ("  chance level" if r.get("at_chance") else ""))
    for s in res["skipped"]:
        print(f"  skipped {s['name']} ({s['channels']} channels): {s['reason']}")
    p = res["proposal"]
    target = "none" if p["target_flops"] is None else f"{_pct(p['target_flops'])} of the FLOPs"
    print(f"proposal (target {target}, budget {p['max_accuracy_drop']:g} points):")
    if p["pipeline"]:
        print(f"  --passes '{p['pipeline']}'")
        print(f"  measured: {_pct(p['flops_fraction'])} of the FLOPs, {metric} {p['metric']:.2f}% "
              f"({p['drop_points']:+.2f} points drop)")
    if "note" in p:
        print(f"  note: {p['note']}")
    for note in res.get("notes", []):
        print(f"optc: warning: {note}", file=sys.stderr)
    return 0


def cmd_prune_finetune(args) -> int:
    from .errors import BudgetError
    from .train import TrainConfig
    from .train.finetune import Evaluation, prune_finetune

    config = TrainConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, seed=args.seed,
                         weight_decay=args.weight_decay)
    evaluation = (Evaluation(args.eval, limit=args.eval_limit, max_accuracy_drop=args.max_accuracy_drop)
                  if args.eval is not None else None)
    rep = prune_finetune(args.model, args.passes, args.train, args.output, evaluation=evaluation,
                         config=config, force=args.force, progress=_progress(args))
    if args.json:
        print_json(rep)
    else:
        metric = rep.get("eval", {}).get("metric")
        print(f"{rep['model']} -> {rep['output']} (passes {rep['passes']}, {args.epochs} epochs on {args.train})")
        print(f"  {'':10} {'params':>10} {'FLOPs':>14} {'ONNX bytes':>11}" + (f" {metric:>8}" if metric else ""))
        for key in ("original", "pruned", "finetuned"):
            e = rep[key]
            flops = f"{e['flops']:,}" if e["flops"] is not None else "-"
            line = f"  {key:10} {e['params']:>10,} {flops:>14} {e['onnx_bytes']:>11,}"
            if metric:
                line += f" {e[metric]:>7.2f}%"
            print(line)
        if metric:
            print(f"  drop: {rep['drop_points_pruned']:+.2f} points after pruning, "
                  f"{rep['drop_points']:+.2f} after fine-tuning")
    if rep.get("budget_passed") is False:
        import sys

        print(f"optc: error: {metric} after fine-tuning is {rep['drop_points']:.2f} points below the original "
              f"(budget {rep['max_accuracy_drop']:g}); {rep['output']} was written", file=sys.stderr)
        return BudgetError.exit_code
    return 0


def _print_prune_train(rep: dict, args) -> None:
    metric = rep.get("eval", {}).get("metric")
    g = rep["gates"]
    tr = rep["training"]
    print(f"{rep['model']} -> {rep['output']} (target {_pct(rep['target_flops'])} of the FLOPs, "
          f"{len(tr['history'])} epochs in {tr['seconds']:.1f} s on {args.data})")
    print(f"  gates: {g['gates']}, exactly 0: {_pct(g['fraction_zero'])}, exactly 1: {_pct(g['fraction_one'])}; "
          f"FLOPs kept by the trained gates {_pct(g['flops_ratio_after_training'])}"
          + (f"; rounded to multiples of {g['multiple']}: {g['opened_for_multiple']} opened, "
             f"{g['closed_to_reach_target']} closed" if "multiple" in g else
             f", {g['closed_to_reach_target']} more closed to reach the target" if g["closed_to_reach_target"] else ""))
    print(f"  {'':10} {'params':>10} {'FLOPs':>14} {'ONNX bytes':>11}" + (f" {metric:>8}" if metric else ""))
    for key in ("original", "pruned", "finetuned"):
        if key not in rep:
            continue
        e = rep[key]
        flops = f"{e['flops']:,}" if e["flops"] is not None else "-"
        line = f"  {key:10} {e['params']:>10,} {flops:>14} {e['onnx_bytes']:>11,}"
        print(line + (f" {e[metric]:>7.2f}%" if metric else ""))
    if "flops_ratio" in rep:
        print(f"  FLOPs: {_pct(rep['flops_ratio'])} of the original ({1 / rep['flops_ratio']:.2f}x fewer)"
              + (f"; {metric} drop {rep['drop_points']:+.2f} points" if metric else ""))


def cmd_prune_train(args) -> int:
    from .errors import UsageError
    from .train import TrainConfig
    from .train.distill import Distillation
    from .train.finetune import Evaluation
    from .train.gates import GateConfig, prune_train

    if args.max_accuracy_drop is not None and args.eval is None:
        raise UsageError("--max-accuracy-drop needs --eval")
    config = TrainConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, seed=args.seed)
    gates = GateConfig(args.target_flops, penalty=args.penalty, gate_lr=args.gate_lr,
                       finetune_epochs=args.finetune_epochs, multiple=_multiple(args),
                       distill=Distillation(temperature=args.temperature, label_weight=args.label_weight),
                       time_budget_s=args.time_budget)
    evaluation = (Evaluation(args.eval, limit=args.eval_limit, max_accuracy_drop=args.max_accuracy_drop)
                  if args.eval is not None else None)
    rep = prune_train(args.model, args.data, args.output, gates=gates, config=config,
                      evaluation=evaluation, force=args.force, progress=_progress(args))
    if args.json:
        print_json(rep)
    else:
        _print_prune_train(rep, args)
    if rep.get("budget_passed") is False:
        from .errors import BudgetError

        print(f"optc: error: {rep['eval']['metric']} is {rep['drop_points']:.2f} points below the original "
              f"(budget {rep['max_accuracy_drop']:g}); {rep['output']} was written", file=sys.stderr)
        return BudgetError.exit_code
    return 0


def _add_prune_train(add) -> None:
    t = add_training_command(
        add, "prune-train", cmd_prune_train,
        "learned structured pruning: train hard-concrete channel gates with the model (distillation "
        "from the original, labels optional) toward a FLOPs target, remove the closed channels, write "
        "a smaller dense ONNX model and report FLOPs, params, accuracy and gate statistics",
        model="ONNX model file (one input)",
        data=("TRAIN.npz", "training inputs (keyed by input name or 'input'); labels ('label') optional"))
    t.add_argument("--target-flops", required=True, type=float, metavar="R",
                   help="FLOPs to keep, as a fraction of the original (0.4 = keep 40%%)")
    t.add_argument("-o", "--output", required=True, metavar="OUT.onnx", help="pruned model to write")
    t.add_argument("--eval", metavar="DATA.npz", help="evaluation data (accuracy with labels, else fidelity)")
    t.add_argument("--eval-limit", type=int, metavar="N", help="evaluate on the first N samples only")
    t.add_argument("--epochs", type=int, default=30, help="training epochs (default 30)")
    t.add_argument("--lr", type=float, default=3e-3,
                   help="Adam learning rate of the weights, cosine to 0 (default 3e-3)")
    t.add_argument("--gate-lr", type=float, default=0.1, help="Adam learning rate of the gates (default 0.1)")
    t.add_argument("--penalty", type=float, default=20.0,
                   help="weight of the FLOPs penalty relu(expected ratio - target), ramped up over the "
                        "first 30%% of the steps (default 20)")
    t.add_argument("--label-weight", type=float, default=0.5,
                   help="cross-entropy weight when the data has labels, 0..1 (default 0.5; 0 = distillation only)")
    t.add_argument("--temperature", type=float, default=2.0, help="distillation temperature (default 2)")
    t.add_argument("--finetune-epochs", type=int, default=0,
                   help="distillation fine-tune of the pruned model afterwards (default 0)")
    add_channel_multiple(t)
    t.add_argument("--batch-size", type=int, default=64, help="batch size (default 64)")
    t.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    t.add_argument("--time-budget", type=float, metavar="S",
                   help="stop training after the epoch in which S seconds are used up")
    t.add_argument("--max-accuracy-drop", type=float, metavar="POINTS",
                   help="exit with code 6 if the result loses more than this (needs --eval)")
    t.add_argument("-f", "--force", action="store_true", help="overwrite OUT.onnx")
    t.add_argument("--json", action="store_true", help="print the report as JSON")


def add_commands(add) -> None:
    shape_help = "bind an input's shape, e.g. input=1,3,224,224 (repeatable); needed for dynamic dims"
    s = add("prune-scan", cmd_prune_scan,
            "pruning sensitivity: prune each channel group alone at several ratios, measure accuracy "
            "(fidelity without labels) with onnxruntime, propose per-layer ratios for a FLOP target")
    s.add_argument("model", help="ONNX model file")
    s.add_argument("--eval", required=True, metavar="DATA.npz",
                   help="evaluation data: input arrays (keyed by input name) and optionally 'label'")
    s.add_argument("--input-shape", action="append", metavar="NAME=D0,D1,...", help=shape_help)
    s.add_argument("--ratios", default="0.25,0.5,0.75", help="ratios to try per group (default 0.25,0.5,0.75)")
    s.add_argument("--criterion", default="l1", help="l1, l2, bn-scale or random (default l1)")
    s.add_argument("--target-flops", type=float, metavar="F",
                   help="FLOPs the proposal should reach, as a fraction of the original (0.5 = half); "
                        "default: as much as the budget allows")
    s.add_argument("--max-accuracy-drop", type=float, default=1.0, metavar="POINTS",
                   help="accuracy budget in percentage points (default 1)")
    s.add_argument("--eval-limit", type=int, metavar="N", help="evaluate on the first N samples only")
    add_channel_multiple(s)
    s.add_argument("--min-channels", type=int, default=1, help="channels every group keeps (default 1)")
    s.add_argument("--json", action="store_true", help="print the scan as JSON")

    f = add("prune-finetune", cmd_prune_finetune,
            "run a pruning pipeline, fine-tune the result with torch (labels, or distillation from the "
            "original without them), write ONNX, "
            "and report params, FLOPs, size and accuracy before/after")
    f.add_argument("model", help="ONNX model file")
    f.add_argument("--passes", required=True, help="pipeline text, e.g. 'prune<ratio=0.5>'")
    f.add_argument("--train", required=True, metavar="DATA.npz",
                   help="training data: input array and 'label'; without labels the pruned model is "
                        "distilled from the original")
    f.add_argument("--eval", metavar="DATA.npz", help="evaluation data (input array and 'label')")
    f.add_argument("-o", "--output", required=True, metavar="OUT.onnx", help="fine-tuned model to write")
    f.add_argument("--epochs", type=int, default=10, help="fine-tuning epochs (default 10)")
    f.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate, cosine to 0 (default 1e-3)")
    f.add_argument("--batch-size", type=int, default=64, help="batch size (default 64)")
    f.add_argument("--weight-decay", type=float, default=0.0, help="Adam weight decay (default 0)")
    f.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    f.add_argument("--max-accuracy-drop", type=float, metavar="POINTS",
                   help="exit with code 6 if the fine-tuned model loses more than this (needs --eval)")
    f.add_argument("--eval-limit", type=int, metavar="N", help="evaluate on the first N samples only")
    f.add_argument("-f", "--force", action="store_true", help="overwrite OUT.onnx")
    f.add_argument("--json", action="store_true", help="print the report as JSON")
    _add_prune_train(add)
