"""Open an HTML file in headless Chromium: what rendered, and a screenshot.

The page is copied next to the original (same folder, so relative links
would resolve the same) with a script added at the end of its body. After
the load event the script writes a JSON verdict into an attribute of
``<html>``: every ``<img>`` that failed to decode (not ``complete`` or
``naturalWidth == 0``), the ids of the ``<section>`` elements with their
rendered heights, and the page height. ``--dump-dom`` prints the DOM after
the load event, so the verdict is read from Chromium's standard output.
"""

import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

CHROMIUM = next(
    (
        shutil.which(name)
        for name in ("chromium", "chromium-browser", "google-chrome")
        if shutil.which(name)
    ),
    None,
)

_FLAGS = [
    "--headless",
    "--no-sandbox",  # CI runs as root
    "--disable-gpu",
    "--disable-dev-shm-usage",  # small /dev/shm in containers
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--hide-scrollbars",
    "--virtual-time-budget=10000",
]

_VERDICT = """<script>(function () {
  function verdict() {
    var images = Array.prototype.slice.call(document.images);
    var broken = images.filter(function (i) {
      return !(i.complete && i.naturalWidth > 0);
    });
    var sections = {};
    document.querySelectorAll("section[id]").forEach(function (s) {
      sections[s.id] = s.getBoundingClientRect().height;
    });
    document.documentElement.setAttribute("data-verdict", JSON.stringify({
      images: images.length,
      broken: broken.map(function (i) { return i.alt || i.src.slice(0, 40); }),
      widths: images.map(function (i) { return i.naturalWidth; }),
      sections: sections,
      height: document.documentElement.scrollHeight
    }));
  }
  if (document.readyState === "complete") verdict();
  else window.addEventListener("load", verdict);
})();</script>"""


def render(path, *, screenshot=None, size=(1280, 3000), timeout=120):
    """Load ``path`` in Chromium; return the verdict dict (see the module doc)."""
    path = Path(path).resolve()
    page = path.read_text(encoding="utf-8")
    end = page.lower().rfind("</body>")
    page = page[:end] + _VERDICT + page[end:] if end >= 0 else page + _VERDICT
    handle, probe = tempfile.mkstemp(dir=path.parent, prefix=".probe-", suffix=".html")
    with os.fdopen(handle, "w", encoding="utf-8") as file:
        file.write(page)
    command = [CHROMIUM, *_FLAGS, "--dump-dom", f"--window-size={size[0]},{size[1]}"]
    if screenshot is not None:
        command.append(f"--screenshot={Path(screenshot).resolve()}")
    try:
        with tempfile.TemporaryDirectory() as profile:
            result = subprocess.run(
                [*command, f"--user-data-dir={profile}", Path(probe).as_uri()],
                capture_output=True,
                text=True,
                timeout=timeout,
            )
    finally:
        os.remove(probe)
    found = re.search(r'data-verdict="([^"]*)"', result.stdout)
    if found is None:
        raise RuntimeError(
            f"Chromium gave no verdict (exit {result.returncode}): "
            f"{result.stderr[-800:]}"
        )
    return json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
