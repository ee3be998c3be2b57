"""Sphinx configuration for skanomaly's documentation.

Build with ``make -C docs html`` (add ``SPHINXOPTS=-W --keep-going`` to fail
on warnings, as CI does). Nothing is fetched from the network: no
intersphinx, formulas are written as MathML (``_ext/mathml.py``), and the
PyData theme ships its fonts and scripts.

Two pages are written here before Sphinx reads the sources (both ignored by
git):

- ``api.rst``: the API reference, one autosummary table per section listing
  every name of the modules' ``__all__``. A module that does not import is
  left out with a message, so one unfinished module cannot break the build.
- ``_generated/benchmarks/*.md``: one page per ``benchmarks/RESULTS_*.md``,
  headed by the command that regenerates it (from its script's docstring).
"""

import importlib
import inspect
import os
import re
import sys
import warnings
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(DOCS / "_ext"))

# The gallery runs in this process. Its small networks train fastest on one
# thread (more threads mostly wait on each other on a shared CI machine).
os.environ.setdefault("OMP_NUM_THREADS", "1")
warnings.filterwarnings("ignore", category=DeprecationWarning, module="skorch")
warnings.filterwarnings(
    "ignore", message="Matplotlib is currently using agg", category=UserWarning
)

import skanomaly  # noqa: E402

# -- Project -----------------------------------------------------------------

project = "skanomaly"
author = "the skanomaly developers"
copyright = "the skanomaly developers, BSD-3-Clause"  # noqa: A001
release = skanomaly.__version__
version = re.sub(r"\.dev.*$", "", release)

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "numpydoc",
    "sphinx_gallery.gen_gallery",
    "myst_parser",
    "mathml",
]

templates_path = ["_templates"]
exclude_patterns = ["_build", "_templates", "**.ipynb_checkpoints"]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
default_role = "literal"
html_math_renderer = "mathml"

# -- autodoc / autosummary / numpydoc ----------------------------------------

autosummary_generate = True
autodoc_typehints = "none"
autodoc_default_options = {"member-order": "groupwise"}
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_attributes_as_param_list = True

# -- sphinx-gallery ----------------------------------------------------------

sphinx_gallery_conf = {
    "examples_dirs": str(ROOT / "examples" / "gallery"),
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",
    "ignore_pattern": r"__init__\.py",
    "doc_module": ("skanomaly",),
    "backreferences_dir": "generated/backreferences",
    "reference_url": {"skanomaly": None},
    "remove_config_comments": True,
    "min_reported_time": 1,
    "abort_on_example_error": True,
    "only_warn_on_example_error": False,
    "show_memory": False,
}

# -- HTML --------------------------------------------------------------------

html_theme = "pydata_sphinx_theme"
html_title = f"skanomaly {release}"
html_static_path = ["_static"]
html_css_files = ["custom.css"]
html_show_sourcelink = False
html_theme_options = {
    "navbar_align": "left",
    "show_toc_level": 2,
    "navigation_with_keys": False,
    "header_links_before_dropdown": 6,
    # the benchmark pages are added below without it: their tables are wide
    "secondary_sidebar_items": {
        "**": ["page-toc", "sg_download_links", "sg_launcher_links"],
    },
    "footer_start": ["copyright"],
    "footer_end": ["sphinx-version", "theme-version"],
}
# pages without sub-pages: no empty "Section Navigation" column
html_sidebars = {"index": [], "getting_started": [], "plugins": []}

# -- MyST (benchmark tables are markdown) ------------------------------------

myst_enable_extensions = ["colon_fence"]
myst_heading_anchors = 3
# The benchmark files are written for GitHub: their headings may start at
# any level and their links point into the repository.
suppress_warnings = ["myst.header", "myst.xref_missing"]

# -- API reference, generated from __all__ -----------------------------------

# (title, module, intro). Top-level names (``skanomaly.__all__``) are listed
# under the section of the module that defines them ("skanomaly" gathers the
# detector and transformer classes), so they are documented as
# ``skanomaly.<name>``; the rest of a module's ``__all__`` follows under the
# module's own path.
API_SECTIONS = [
    (
        "Detectors",
        "skanomaly:detectors",
        "Outlier detectors with the scikit-learn API (`fit`, `score_samples`, "
        "`decision_function`, `predict`).",
    ),
    (
        "Feature extractors",
        "skanomaly:transformers",
        "Transformers that turn images into features for any estimator.",
    ),
    (
        "Pretrained backbones",
        "skanomaly.nn.backbones",
        "timm backbones as frozen feature extractors: their levels, pooled or "
        "as patch grids, and their preprocessing.",
    ),
    (
        "Pretrained weights",
        "skanomaly.weights",
        "Where a backbone's weights come from and how they are checked: "
        "packaged, hub, local file (:doc:`user_guide/weights`).",
    ),
    (
        "Registry",
        "skanomaly.registry",
        "Finding detectors by name, built-in and plugins alike (:doc:`plugins`).",
    ),
    (
        "Persistence",
        "skanomaly.persistence",
        "Saving and loading fitted detectors (:doc:`user_guide/persistence`).",
    ),
    (
        "Reports",
        "skanomaly.reporting",
        "A self-contained HTML report of a detector on data "
        "(:doc:`user_guide/export`).",
    ),
    (
        "ONNX export",
        "skanomaly.export",
        "Fitted detectors as ONNX graphs with a model card (:doc:`user_guide/export`).",
    ),
    (
        "Base classes and tags",
        "skanomaly.detectors.base",
        "What every detector, built-in or plugin, derives from, and what it "
        "declares about itself (:doc:`plugins`).",
    ),
    (
        "Bases of trained detectors",
        "skanomaly.detectors.torch_base",
        "Scaling, seeding, the skorch net and batched scoring, for detectors "
        "trained with skorch.",
    ),
    (
        "Bases of GAN detectors",
        "skanomaly.detectors.gan_base",
        "The adversarial net and the parameters every GAN detector shares.",
    ),
    (
        "Metrics",
        "skanomaly.metrics",
        "Scorers that take the anomaly class as positive and check the label "
        "convention (:doc:`user_guide/contract`).",
    ),
    (
        "Labels",
        "skanomaly.labels",
        "The two label conventions (1 = anomaly; +1 inlier / -1 outlier) and "
        "the one rule by which every part of skanomaly reads labels.",
    ),
    (
        "Calibration",
        "skanomaly.conformal",
        "Conformal thresholds and p-values, and false discovery rate control "
        "(:doc:`user_guide/calibration`).",
    ),
    (
        "Gaussians",
        "skanomaly.gaussian",
        "Leave-one-out distances of the fitted Gaussians, in closed form.",
    ),
    (
        "Model selection",
        "skanomaly.model_selection",
        "Cross-validation for novelty detection (:doc:`model_selection`).",
    ),
    (
        "Datasets",
        "skanomaly.app.datasets",
        "Image folders, the MVTec AD layout and the embedded digits, as arrays.",
    ),
    (
        "Benchmark",
        "skanomaly.app.benchmark",
        "What ``skanomaly benchmark`` runs, as functions (:doc:`benchmarks`).",
    ),
    (
        "Testing",
        "skanomaly.testing",
        "Checks a detector should pass in its own test suite (:doc:`plugins`).",
    ),
]

# Top-level names documented in another section.
_DOCUMENTED_ELSEWHERE = {"BaseDetector", "DetectorTags"}


def _import(module_name):
    try:
        return importlib.import_module(module_name)
    except Exception as exc:  # an unfinished module must not break the docs
        print(f"[api] leaving out {module_name}: {type(exc).__name__}: {exc}")
        return None


def _documentable(module, name):
    """'class', 'function' or None (constants, or a name that fails to load)."""
    try:
        obj = getattr(module, name)
    except Exception as exc:
        print(f"[api] leaving out {module.__name__}.{name}: {type(exc).__name__}")
        return None, None
    if inspect.isclass(obj):
        return obj, "class"
    if inspect.isfunction(inspect.unwrap(obj)):  # functools.cache wrappers too
        return obj, "function"
    return obj, None


def _top_level():
    top = []
    for name in skanomaly.__all__:
        if name in _DOCUMENTED_ELSEWHERE:
            continue
        obj, what = _documentable(skanomaly, name)
        if what is not None:
            top.append((name, what, obj))
    return top


def _section_entries(spec, top):
    """[(module path, [(name, 'class' or 'function'), ...]), ...] of a section."""
    if spec.startswith("skanomaly:"):
        group = spec.split(":")[1]
        wanted = [
            (name, what)
            for name, what, obj in top
            if what == "class"
            and getattr(obj, "__module__", "").startswith("skanomaly.")
            and hasattr(obj, "transform") == (group == "transformers")
        ]
        return [("skanomaly", wanted)] if wanted else []
    module = _import(spec)
    if module is None:
        return []
    exported = [(n, w) for n, w, obj in top if obj.__module__ == spec]
    exported_objs = {id(obj) for n, w, obj in top if obj.__module__ == spec}
    rest = []
    for name in getattr(module, "__all__", []):
        obj, what = _documentable(module, name)
        if what is not None and id(obj) not in exported_objs:
            rest.append((name, what))
    entries = []
    if exported:
        entries.append(("skanomaly", exported))
    if rest:
        entries.append((spec, rest))
    return entries


def write_api_page(path):
    lines = [
        ".. This page is written by conf.py from the modules' __all__.",
        "",
        "API reference",
        "=============",
        "",
        "Every public name, with the docstring it has in the code. The Examples "
        "sections run as doctests in CI.",
        "",
    ]
    top = _top_level()
    for title, spec, intro in API_SECTIONS:
        entries = _section_entries(spec, top)
        if not entries:
            continue
        lines += [title, "-" * len(title), "", intro, ""]
        if not spec.startswith("skanomaly:"):
            # the module's docstring: an overview, and names that are not
            # classes or functions (e.g. the scorer objects of metrics)
            lines += [f".. automodule:: {spec}", "   :no-members:", ""]
        for module_name, names in entries:
            lines += [f".. currentmodule:: {module_name}", ""]
            for group in ("class", "function"):
                members = [name for name, what in names if what == group]
                if members:
                    lines += [
                        ".. autosummary::",
                        "   :toctree: generated/",
                        "",
                        *[f"   {name}" for name in members],
                        "",
                    ]
    path.write_text("\n".join(lines), encoding="utf-8")


# -- Benchmark pages, one per results file -----------------------------------


def _benchmark_scripts(results, text):
    """Scripts that wrote ``results``: named in it, else of the same stem."""
    named = re.findall(r"benchmarks[/.](\w+)(?:\.py)?", text)
    stem = re.sub(r"^RESULTS_", "", results.stem)
    scripts = []
    for name in [*named, stem]:
        script = ROOT / "benchmarks" / f"{name}.py"
        if script.is_file() and script not in scripts:
            scripts.append(script)
        if scripts and name == stem:
            break
    if not scripts:
        for script in sorted((ROOT / "benchmarks").glob("*.py")):
            if results.name in script.read_text(encoding="utf-8"):
                scripts.append(script)
    return scripts


def _regenerate_command(script):
    """The first literal block of a script's docstring that runs python."""
    text = script.read_text(encoding="utf-8")
    for block in re.findall(r"::\n\n((?:    .*\n?|\n)+)", text):
        lines = [line[4:] for line in block.rstrip().splitlines()]
        if any("python" in line for line in lines):
            return "\n".join(lines)
    return None


def write_benchmark_pages(folder):
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.md"):
        old.unlink()
    pages = []
    results_files = sorted((ROOT / "benchmarks").glob("RESULTS_*.md"))
    for results in results_files:
        text = results.read_text(encoding="utf-8")
        lines = text.splitlines()
        first = next((i for i, ln in enumerate(lines) if ln.strip()), 0)
        heading = re.match(r"#\s+(.*)", lines[first]) if lines else None
        title = heading.group(1).strip() if heading else results.stem
        relative = os.path.relpath(results, folder).replace(os.sep, "/")
        page = [f"# {title}", ""]
        scripts = _benchmark_scripts(results, text)
        where = f"From `benchmarks/{results.name}`"
        if scripts:
            names = ", ".join(f"`benchmarks/{script.name}`" for script in scripts)
            where += f", written by {names}"
        command = _regenerate_command(scripts[0]) if scripts else None
        if re.search(r"^\s*`*(python|pip) ", text, re.M):
            page += [f"{where}. Each table gives the command that produced it.", ""]
        elif command:
            page += [f"{where}. Regenerate it with:", ""]
            page += ["```bash", command, "```", ""]
        else:
            page += [f"{where}; see the script's docstring for its options.", ""]
        if not re.search(r"machine|\bcpu|\bgpu|cores?\b|nvidia", text, re.I):
            page += ["*This results file does not say which machine it ran on.*", ""]
        page += [
            f"```{{include}} {relative}",
            f":start-line: {first + 1}" if heading else ":heading-offset: 1",
            "```",
            "",
        ]
        (folder / f"{results.stem.lower()}.md").write_text(
            "\n".join(page), encoding="utf-8"
        )
        pages.append(f"_generated/benchmarks/{results.stem.lower()}")
    toc = folder.parent / "benchmark_toc.rst.inc"
    if pages:
        body = [".. toctree::", "   :maxdepth: 1", "", *[f"   {p}" for p in pages]]
    else:
        body = ["No results file has been committed to ``benchmarks/`` yet."]
    toc.write_text("\n".join(body) + "\n", encoding="utf-8")
    return pages


# autosummary rewrites its pages on every build but never deletes one; clear
# them so that a renamed or removed name leaves no orphan page behind.
for _stale in (DOCS / "generated").glob("*.rst"):
    _stale.unlink()
write_api_page(DOCS / "api.rst")
for _page in write_benchmark_pages(DOCS / "_generated" / "benchmarks"):
    html_theme_options["secondary_sidebar_items"][_page] = []


# -- Docstring touch-up ------------------------------------------------------

_SHAPE = re.compile(r"(shape \()([^)]*)(\))")
_TRAILING_UNDERSCORE = re.compile(r"(?<![`\w])([A-Za-z]\w*_)(?![\w`])")


def _quote_fitted_names_in_shapes(app, what, name, obj, options, lines):
    """Quote names like ``n_features_in_`` inside ``shape (...)``.

    Docstrings write ``ndarray of shape (n_features_in_,)``; in reST a word
    ending with ``_`` is a hyperlink reference, which fails the build.
    """
    for i, line in enumerate(lines):
        if "shape (" in line:
            lines[i] = _SHAPE.sub(
                lambda m: m[1] + _TRAILING_UNDERSCORE.sub(r"`\1`", m[2]) + m[3], line
            )


def _skip_scikit_learn_members(app, what, name, obj, skip, options):
    """Leave out methods inherited from scikit-learn (get_params, routing...)
    and from torch (``nn.Module``'s, e.g. of ``PooledFeatures``).

    They are documented by those libraries, and their docstrings point to
    labels of their own documentation (or are not numpydoc).
    """
    if what == "class" and (getattr(obj, "__module__", None) or "").startswith(
        ("sklearn.", "torch.")
    ):
        return True
    return None


def setup(app):
    # before numpydoc (priority 500) turns the sections into reST
    app.connect("autodoc-process-docstring", _quote_fitted_names_in_shapes, 100)
    app.connect("autodoc-skip-member", _skip_scikit_learn_members)
