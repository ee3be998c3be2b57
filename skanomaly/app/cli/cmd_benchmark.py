"""``skanomaly benchmark``: the main job, every detector on a one-class benchmark."""

import time

from .options import _int_list, _name_list, _positive_int, _show_progress


def add_parser(commands):
    """Add the ``benchmark`` command to ``commands`` (argparse subparsers)."""
    from ..benchmark import DEFAULT_EPOCHS, DEFAULT_NORMAL_CLASSES

    bench = commands.add_parser(
        "benchmark",
        help="train every detector on a one-class benchmark and compare AUROC",
        description="The main job: train each registered detector with small "
        "settings and print detector, AUROC, fit and score seconds. The "
        "default data is embedded (scikit-learn digits, one-class: for each "
        "normal digit train on half of its samples and test on the other half "
        "plus all other digits).",
    )
    bench.add_argument(
        "--detectors",
        type=_name_list,
        default=None,
        metavar="A,B",
        help="comma-separated detector names (default: all registered, except "
        "ones whose pretrained weights would need a download)",
    )
    bench.add_argument(
        "--epochs",
        type=_positive_int,
        default=DEFAULT_EPOCHS,
        help="max_epochs of detectors that train in epochs (default: each "
        "detector's own, 'auto': enough optimizer steps for the data)",
    )
    bench.add_argument(
        "--data",
        default=None,
        metavar="PATH",
        help="an MVTec-style category folder (train/good, test/<defect>) or a "
        "folder of categories, instead of the embedded digits",
    )
    bench.add_argument(
        "--image-size",
        type=_positive_int,
        default=64,
        help="image size for --data (default: 64)",
    )
    bench.add_argument(
        "--normal-classes",
        type=_int_list,
        default=list(DEFAULT_NORMAL_CLASSES),
        metavar="0,1,2",
        help="normal digits of the embedded benchmark (default: "
        f"{','.join(map(str, DEFAULT_NORMAL_CLASSES))})",
    )
    bench.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    bench.add_argument(
        "--threads",
        type=_positive_int,
        default=1,
        help="torch CPU threads (default: 1; the benchmark's models are tiny and "
        "more threads mostly add synchronisation)",
    )
    bench.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bar (it is shown only when stderr is a terminal)",
    )
    bench.add_argument(
        "--allow-failures",
        action="store_true",
        help="exit with status 0 even if a detector failed",
    )
    bench.set_defaults(func=run)
    return bench


def run(args):
    from ..benchmark import describe_benchmark, format_results, run_benchmark

    normal_classes = args.normal_classes
    bad = [c for c in normal_classes if not 0 <= c <= 9]
    if bad or not normal_classes:
        raise ValueError(f"--normal-classes must be digits 0..9; got {bad or 'none'}.")
    start = time.perf_counter()
    results = run_benchmark(
        args.detectors,
        epochs=args.epochs,
        data=args.data,
        normal_classes=normal_classes,
        image_size=args.image_size,
        seed=args.seed,
        threads=args.threads,
        progress=not args.no_progress and _show_progress(),
    )
    print(
        describe_benchmark(
            args.data,
            normal_classes=normal_classes,
            epochs=args.epochs,
            seed=args.seed,
            image_size=args.image_size,
        )
    )
    print(format_results(results))
    print(f"total: {time.perf_counter() - start:.0f} s")
    return 0 if all(r.status != "failed" for r in results) or args.allow_failures else 1
