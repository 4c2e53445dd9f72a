#!/usr/bin/env python3
"""Check a version's report.html in headless Chromium.

Usage::

    python scripts/check_report_browser.py STORE/versions/000001/report.html \\
        [--screenshot report.png] [--chromium /usr/bin/chromium]

Chromium runs twice, each time with a new temporary profile and no network use:

1. A harness page loads the report in an iframe. After the load event it records
   which images decoded (``naturalWidth > 0``), the rendered size of both charts,
   the rows of each required table and the section ids. It also records the
   scripts on the page and every resource the report fetched. ``--dump-dom``
   prints the harness with that record. The harness needs
   ``--allow-file-access-from-files`` to read the iframe's document, and the
   report itself runs no script.
2. ``--screenshot`` renders the report alone at 1280 x 4000 pixels. The PNG must
   not be blank and must contain the blue of the class-balance bars.

Exit status: 0 when every check passes, 1 when a check fails, 2 when Chromium is
missing or does not produce output.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from PIL import Image, ImageStat

DEFAULT_CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--hide-scrollbars",
    "--mute-audio",
)
TIMEOUT_S = 120
# Virtual time that Chromium lets pass before it dumps the DOM or takes the
# screenshot; data: images decode well within it.
VIRTUAL_TIME_MS = 10_000
SCREEN_WIDTH = 1280
SCREEN_HEIGHT = 4000

REQUIRED_SECTIONS = (
    "header",
    "class-balance",
    "imbalance",
    "normalization",
    "samples",
    "quarantine",
    "skipped",
    "refresh",
    "diff",
)
REQUIRED_TABLES = (
    "version-fields",
    "class-counts",
    "imbalance-metrics",
    "normalization-table",
    "refresh-counters",
)
CHARTS = ("class-balance-chart", "channel-histograms-chart")
# matplotlib's first colour (tab:blue), used for the training bars of the chart.
CHART_BLUE = (31, 119, 180)
COLOR_TOLERANCE = 12
MIN_CHART_PIXELS = 200

HARNESS = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>report check</title></head><body>
<pre id="result">pending</pre>
<iframe id="report" src="{src}" style="width:{width}px;height:{height}px"></iframe>
<script>
window.addEventListener("load", function () {{
  var out = {{}};
  try {{
    var frame = document.getElementById("report");
    var doc = frame.contentDocument;
    var images = Array.prototype.slice.call(doc.images);
    out.images = images.map(function (image) {{
      var box = image.getBoundingClientRect();
      return {{
        id: image.id,
        alt: image.alt,
        scheme: image.getAttribute("src").slice(0, 22),
        decoded: image.complete && image.naturalWidth > 0,
        natural_width: image.naturalWidth,
        width: box.width
      }};
    }});
    out.sections = Array.prototype.map.call(
      doc.querySelectorAll("section[id], header[id]"),
      function (element) {{ return element.id; }});
    out.tables = {{}};
    Array.prototype.forEach.call(doc.querySelectorAll("table[id]"), function (t) {{
      out.tables[t.id] = t.tBodies.length ? t.tBodies[0].rows.length : 0;
    }});
    out.scripts = doc.scripts.length;
    out.resources = frame.contentWindow.performance
      .getEntriesByType("resource")
      .map(function (entry) {{ return entry.name; }});
    out.title = doc.title;
  }} catch (error) {{
    out.error = String(error);
  }}
  document.getElementById("result").textContent = JSON.stringify(out);
}});
</script>
</body></html>
"""


def run_chromium(chromium: str, arguments: list[str], profile: Path) -> str:
    """Run Chromium with the fixed flags and a profile folder; return its stdout.

    Chromium starts helper processes, so it runs in its own process group and the
    whole group is killed when it exceeds TIMEOUT_S.
    """
    command = [
        chromium,
        *CHROMIUM_FLAGS,
        f"--user-data-dir={profile}",
        f"--virtual-time-budget={VIRTUAL_TIME_MS}",
        *arguments,
    ]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise RuntimeError(
            f"chromium timed out after {TIMEOUT_S} s: {' '.join(command)}"
        ) from None
    if process.returncode != 0:
        raise RuntimeError(
            f"chromium exited with status {process.returncode}: {stderr[-2000:]}"
        )
    return stdout


def read_harness_result(dom: str) -> dict[str, Any]:
    """Return the JSON record the harness page wrote into its ``result`` element."""
    start_tag = '<pre id="result">'
    start = dom.find(start_tag)
    end = dom.find("</pre>", start)
    if start < 0 or end < 0:
        raise RuntimeError(f"the dumped DOM has no result element: {dom[:500]!r}")
    text = html.unescape(dom[start + len(start_tag) : end])
    if text == "pending":
        raise RuntimeError(
            "the harness never ran its load handler; the report did not finish "
            f"loading within {VIRTUAL_TIME_MS} ms of virtual time"
        )
    return json.loads(text)


def check_dom(result: dict[str, Any]) -> list[str]:
    """Return the failed checks of the harness record."""
    if "error" in result:
        return [f"the harness could not read the report: {result['error']}"]
    failures = []
    for section in REQUIRED_SECTIONS:
        if section not in result["sections"]:
            failures.append(f"section {section!r} is missing")
    for table in REQUIRED_TABLES:
        rows = result["tables"].get(table)
        if rows is None:
            failures.append(f"table {table!r} is missing")
        elif rows == 0:
            failures.append(f"table {table!r} has no rows")
    images = result["images"]
    if len(images) < len(CHARTS):
        failures.append(f"the report has {len(images)} images; expected the charts")
    for image in images:
        label = image["id"] or image["alt"]
        if not image["decoded"]:
            failures.append(f"image {label!r} did not decode")
        if image["scheme"] != "data:image/png;base64,":
            failures.append(f"image {label!r} is not a PNG data URI: {image['scheme']}")
    by_id = {image["id"]: image for image in images if image["id"]}
    for chart in CHARTS:
        image = by_id.get(chart)
        if image is None:
            failures.append(f"chart {chart!r} is missing")
        elif image["natural_width"] < 100 or image["width"] < 100:
            failures.append(
                f"chart {chart!r} is {image['natural_width']} pixels wide and drawn "
                f"{image['width']:.0f} pixels wide; expected at least 100"
            )
    if result["scripts"]:
        failures.append(f"the report contains {result['scripts']} script elements")
    for resource in result["resources"]:
        failures.append(f"the report fetched a resource: {resource}")
    return failures


def check_screenshot(path: Path) -> list[str]:
    """Return the failed checks of the screenshot: blank page or no chart bars."""
    with Image.open(path) as shot:
        image = shot.convert("RGB")
    failures = []
    spread = ImageStat.Stat(image.convert("L")).stddev[0]
    if spread < 5.0:
        failures.append(f"the screenshot looks blank (grey-level stddev {spread:.1f})")
    red, green, blue = (channel.load() for channel in image.split())
    width, height = image.size
    chart_pixels = 0
    for y in range(0, height, 2):
        for x in range(0, width, 2):
            if (
                abs(red[x, y] - CHART_BLUE[0]) <= COLOR_TOLERANCE
                and abs(green[x, y] - CHART_BLUE[1]) <= COLOR_TOLERANCE
                and abs(blue[x, y] - CHART_BLUE[2]) <= COLOR_TOLERANCE
            ):
                chart_pixels += 1
    if chart_pixels < MIN_CHART_PIXELS:
        failures.append(
            f"the screenshot has {chart_pixels} sampled pixels of the chart "
            f"blue; expected at least {MIN_CHART_PIXELS}, so the class-balance "
            "chart was not painted"
        )
    return failures


def check_report(report: Path, chromium: str, screenshot: Path | None) -> list[str]:
    """Run both Chromium passes over ``report`` and return every failed check."""
    uri = report.resolve().as_uri()
    with tempfile.TemporaryDirectory(prefix="report-check-") as folder:
        work = Path(folder)
        harness = work / "harness.html"
        harness.write_text(
            HARNESS.format(
                src=html.escape(uri, quote=True),
                width=SCREEN_WIDTH,
                height=SCREEN_HEIGHT,
            ),
            encoding="utf-8",
        )
        dom = run_chromium(
            chromium,
            ["--allow-file-access-from-files", "--dump-dom", harness.as_uri()],
            work / "profile-dom",
        )
        result = read_harness_result(dom)
        failures = check_dom(result)

        shot = screenshot or work / "screenshot.png"
        shot.parent.mkdir(parents=True, exist_ok=True)
        run_chromium(
            chromium,
            [
                f"--window-size={SCREEN_WIDTH},{SCREEN_HEIGHT}",
                f"--screenshot={shot}",
                uri,
            ],
            work / "profile-screenshot",
        )
        if not shot.is_file():
            raise RuntimeError(f"chromium wrote no screenshot to {shot}")
        failures += check_screenshot(shot)
    decoded = sum(1 for image in result["images"] if image["decoded"])
    print(
        f"{report}: {decoded}/{len(result['images'])} images decoded, "
        f"{len(result['tables'])} tables, {len(result['sections'])} sections"
    )
    return failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("report", type=Path, help="report.html to check")
    parser.add_argument(
        "--screenshot",
        type=Path,
        default=None,
        help="where to keep the 1280 x 4000 screenshot (default: a temporary file)",
    )
    parser.add_argument(
        "--chromium",
        default=DEFAULT_CHROMIUM,
        help=f"Chromium executable (default: {DEFAULT_CHROMIUM})",
    )
    args = parser.parse_args(argv)
    if not args.report.is_file():
        print(f"report {args.report} not found", file=sys.stderr)
        return 2
    if not Path(args.chromium).is_file():
        print(
            f"chromium not found at {args.chromium}; install it with "
            "`apt-get install -y --no-install-recommends chromium` or pass --chromium",
            file=sys.stderr,
        )
        return 2
    try:
        failures = check_report(args.report, args.chromium, args.screenshot)
    except (RuntimeError, OSError, json.JSONDecodeError) as error:
        print(f"browser check could not run: {error}", file=sys.stderr)
        return 2
    for failure in failures:
        print(f"FAIL: {failure}")
    if failures:
        return 1
    print("OK: every browser check passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
