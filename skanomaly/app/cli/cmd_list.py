"""``skanomaly list``: the registered detectors, with their plugin package."""


def add_parser(commands):
    """Add the ``list`` command to ``commands`` (argparse subparsers)."""
    listing = commands.add_parser(
        "list",
        help="list the detectors found, with their plugin package",
        description="List the registered detectors (built-in and plugins) with "
        "their class and the package that provides them.",
    )
    listing.set_defaults(func=run)
    return listing


def run(args):
    from ...registry import detector_entry_points, get_detector, list_detectors

    names = list_detectors()
    if not names:
        print("No detectors found.")
        return 0
    entry_points = detector_entry_points()
    rows = [("detector", "class", "package")]
    for name in names:
        cls = get_detector(name)
        dist = getattr(entry_points[name], "dist", None)
        package = dist.name if dist is not None else "unknown"
        rows.append((name, f"{cls.__module__}.{cls.__qualname__}", package))
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    for row in rows:
        print(f"{row[0].ljust(widths[0])}  {row[1].ljust(widths[1])}  {row[2]}")
    return 0
