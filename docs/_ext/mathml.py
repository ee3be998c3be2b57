"""Render ``:math:`` and ``.. math::`` as MathML when the HTML is written.

MathJax, Sphinx's default, is a script the browser fetches from a CDN when a
page is opened, so formulas stay raw TeX offline. Browsers render MathML
natively, and docutils ships a LaTeX-to-MathML converter, so this renderer
needs no JavaScript and no network at build or reading time.
"""

import html

from docutils import nodes
from docutils.utils.math import MathError, latex2mathml
from sphinx.util import logging

logger = logging.getLogger(__name__)


def _to_mathml(latex, display, node):
    try:
        mathml = latex2mathml.tex2mathml(latex, as_block=display)
    except MathError as exc:
        # a warning (an error under -W) with the source line, not a crash
        logger.warning("cannot render math %r: %s", latex, exc, location=node)
        return f"<code>{html.escape(latex)}</code>"
    return mathml.replace("\n", "")


def visit_math(self, node):
    self.body.append(self.starttag(node, "span", "", CLASS="math notranslate"))
    self.body.append(_to_mathml(node.astext(), False, node) + "</span>")
    raise nodes.SkipNode


def visit_displaymath(self, node):
    self.body.append(self.starttag(node, "div", CLASS="math notranslate"))
    for part in node.astext().split("\n\n"):
        if part.strip():
            self.body.append(_to_mathml(part, True, node))
    self.body.append("</div>\n")
    raise nodes.SkipNode


def setup(app):
    app.add_html_math_renderer("mathml", (visit_math, None), (visit_displaymath, None))
    return {"parallel_read_safe": True, "parallel_write_safe": True}
