"""``skanomaly export``: a saved model as an ONNX graph with a JSON model card."""


def add_parser(commands):
    """Add the ``export`` command to ``commands`` (argparse subparsers)."""
    export = commands.add_parser(
        "export",
        help="export a saved model to ONNX, with a JSON model card",
        description="Export a saved model to an ONNX graph from the raw input "
        "(uint8 images, or float64 rows; any batch size) to anomaly_score "
        "(-score_samples: higher = more anomalous) and, for detectors with "
        "anomaly maps, anomaly_map. The model card OUTPUT.json beside it "
        "records the input, the outputs and the threshold: a sample is an "
        "anomaly when anomaly_score > -offset_; and the calibration (scheme, "
        "number of samples and their anomaly scores, from which a deployment "
        "computes conformal p-values). Needs the onnx extra: pip "
        "install 'skanomaly[onnx]'.",
    )
    export.add_argument("model", help="model file written by skanomaly fit")
    export.add_argument(
        "-o", "--output", required=True, help="ONNX file to write (e.g. model.onnx)"
    )
    export.add_argument(
        "--force",
        action="store_true",
        help="overwrite OUTPUT and its model card if they exist",
    )
    export.add_argument(
        "--no-calibration-scores",
        action="store_true",
        help="leave the calibration scores (at most 5,000 numbers) out of the "
        "model card; it still records the scheme and their number",
    )
    export.set_defaults(func=run)
    return export


def run(args):
    from ...export import export_onnx, model_card_path
    from ...persistence import load
    from .outputs import _check_outputs, _escaped

    outputs = [("-o", args.output), ("the model card", model_card_path(args.output))]
    _check_outputs([("model", args.model)], outputs)
    detector = load(args.model, device="cpu")
    card = export_onnx(
        detector,
        args.output,
        force=args.force,
        calibration_scores=not args.no_calibration_scores,
    )
    outputs = ", ".join(output["name"] for output in card["outputs"])
    shape = ", ".join(map(str, card["input"]["shape"]))
    print(
        f"Exported {type(detector).__name__} to {_escaped(args.output)} (input "
        f"{card['input']['dtype']} ({shape}); outputs {outputs}); model card "
        f"{_escaped(model_card_path(args.output))}."
    )
    return 0
