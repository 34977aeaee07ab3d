"""``optc quant-debug``: per-layer quantization error (a thin layer over optc.quant_debug)."""

from __future__ import annotations

from . import DEFAULT_PIPELINE


def cmd_quant_debug(args) -> int:
    from .cli import _print_json
    from .frontend import parse_shape_args
    from .quant_debug import quant_debug

    res = quant_debug(args.model, args.calib, eval_data=args.eval, params=args.passes_args or "",
                      passes=args.pre, input_shapes=parse_shape_args(args.input_shape or []),
                      samples=args.samples, isolated=not args.no_isolated)
    if args.json:
        _print_json(res)
        return 0

    def f(x):
        return "   -  " if x is None else f"{x:6.1f}"

    print(f"{res['model']}: {res['pipeline']}")
    print(f"  {res['samples']} samples from {res['data']}; output SQNR "
          + ", ".join(f"{k} {f(v).strip()} dB" for k, v in res["outputs"].items())
          + f"; top-1 agreement {100 * res['top1_agreement']:.2f}%")
    if "accuracy" in res:
        a = res["accuracy"]
        print(f"  top-1 {100 * a['top1_quantized']:.2f}% vs {100 * a['top1_float']:.2f}% float "
              f"({a['drop_points']:+.2f} points drop)")
    iso = any("isolated_sqnr_db" in e for e in res["layers"])
    drop = any("isolated_drop_points" in e for e in res["layers"])
    w = max([len(e["name"]) for e in res["layers"]] + [5])  # whole names: exclude= patterns match them
    print(f"  {'layer':{w}} {'op':6} {'bits':>4} {'w SQNR':>7} {'in SQNR':>7} {'out SQNR':>8} {'drop':>6}"
          + (f" {'alone':>7}" if iso else "") + (f" {'alone top-1':>11}" if drop else ""))
    for e in res["layers"]:
        line = (f"  {e['name']:{w}} {e['op']:6} {e['weight_bits']:>4} {f(e['weight_sqnr_db']):>7} "
                f"{f(e['input_sqnr_db']):>7} {f(e['sqnr_db']):>8} {f(e['sqnr_drop_db']):>6}")
        if iso:
            line += f" {f(e.get('isolated_sqnr_db')):>7}"
        if drop:
            line += f" {e['isolated_drop_points']:>+10.2f}p"
        print(line)
    print("  (SQNR in dB vs the float model; 'drop' = in - out: what the layer adds; "
          "'alone' = only this layer quantized)")
    if res.get("float_layers"):
        print(f"  left in float: {', '.join(res['float_layers'])}")
    if res.get("most_sensitive"):
        print(f"  most sensitive: {', '.join(res['most_sensitive'][:3])}")
    return 0


def add_commands(add) -> None:
    q = add("quant-debug", cmd_quant_debug,
            "quantize a model and list per-layer quantization error (SQNR of each layer's output "
            "vs the float model) to see where accuracy is lost")
    q.add_argument("model", help="ONNX model file")
    q.add_argument("--calib", required=True, metavar="DATA.npz", help="calibration data (arrays keyed by input name)")
    q.add_argument("--eval", metavar="DATA.npz", help="data to measure on (with 'label': top-1 figures); "
                   "default: the calibration data")
    q.add_argument("--passes-args", metavar="K=V;...", help="quantize pass parameters, e.g. "
                   "'weight-bits=4;observer=entropy;exclude=/classifier/*' (see `optc passes`)")
    q.add_argument("--pre", default=DEFAULT_PIPELINE, metavar="PIPELINE",
                   help=f"cleanup passes before quantize (default {DEFAULT_PIPELINE!r})")
    q.add_argument("--input-shape", action="append", metavar="NAME=D0,D1,...",
                   help="bind an input's shape (default: dynamic dims from the data, batch 1)")
    q.add_argument("--samples", type=int, default=128, help="samples to measure on (default 128)")
    q.add_argument("--no-isolated", action="store_true", help="skip the one-layer-at-a-time measurements")
    q.add_argument("--json", action="store_true", help="print as JSON")
