"""The HTML report in a real browser: headless Chromium loads report/index.html from disk, every
image decodes, the tables and the heatmap have a size on the page, and a screenshot is saved.

The page is checked as it is: a copy of index.html beside it gets one script appended that writes
what the browser found into the page once everything has loaded, and `--dump-dom` prints it."""
import html
import json
import re
import shutil
import subprocess

import pytest

from pbgan_core.api import Model

from .conftest import FACADES, needs_data
from .test_eval_report import two_tasks  # noqa: F401  (the module-scoped two-task model)

BROWSER = next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome")
                if shutil.which(name)), None)
needs_browser = pytest.mark.skipif(BROWSER is None, reason="no headless Chromium installed (CI installs the "
                                   "chromium package: apt-get install chromium)")

PROBE = """<script>
window.addEventListener("load", () => {
  const size = (el) => { const r = el.getBoundingClientRect(); return [Math.round(r.width), Math.round(r.height)]; };
  const found = {
    images: [...document.images].map((img) => ({src: img.getAttribute("src"), alt: img.alt,
      loaded: img.complete && img.naturalWidth > 0, natural: [img.naturalWidth, img.naturalHeight], shown: size(img)})),
    tables: [...document.querySelectorAll("table")].map((t) => ({rows: t.rows.length, shown: size(t)})),
    protocol: (document.getElementById("protocol") || {}).textContent || "",
  };
  const out = document.createElement("pre");
  out.id = "probe";
  out.textContent = JSON.stringify(found);
  document.body.appendChild(out);
});
</script>"""


def chromium(*args: str) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
             "--virtual-time-budget=10000"]
    return subprocess.run([BROWSER, *flags, *args], capture_output=True, text=True, timeout=120)


def probe(page) -> dict:
    done = chromium("--dump-dom", page.as_uri())
    match = re.search(r'<pre id="probe">(.*?)</pre>', done.stdout, re.S)
    assert match, f"the page did not finish loading in Chromium: {done.stderr[-2000:]}"
    return json.loads(html.unescape(match.group(1)))


@needs_browser
@needs_data(FACADES)
def test_report_renders_in_headless_chromium(two_tasks, tmp_path):  # noqa: F811
    index = Model.open(two_tasks).report(tmp_path / "report", samples=2)
    probe_page = index.with_name("probe.html")
    probe_page.write_text(index.read_text().replace("</body>", PROBE + "</body>"))

    found = probe(probe_page)

    sources = {img["src"] for img in found["images"]}
    assert {"matrix-ssim.png", "params.png"} <= sources
    assert {f"condition, output, target of {name}" for name in ("facades", "shoes")} <= {img["alt"] for img in found["images"]}
    for img in found["images"]:
        assert img["loaded"], f"{img['src']} did not load"
        assert img["shown"][0] > 0 and img["shown"][1] > 0, f"{img['src']} takes no room on the page"
    heatmap = next(img for img in found["images"] if img["src"] == "matrix-ssim.png")
    assert heatmap["natural"][0] > 100 and heatmap["natural"][1] > 60
    strips = [img for img in found["images"] if img["alt"].startswith("condition, output, target of")]
    assert all(img["natural"] == [3 * 128, 22 + 2 * 128] for img in strips)  # labelled cond | out | target, 4x
    assert len(found["tables"]) >= 2
    assert all(t["rows"] >= 2 and t["shown"][0] > 0 and t["shown"][1] > 0 for t in found["tables"])
    assert "Test-time protocol: eval" in found["protocol"]

    shot = tmp_path / "report.png"
    chromium(f"--screenshot={shot}", "--window-size=1200,1600", index.as_uri())
    assert shot.exists() and shot.stat().st_size > 10_000

    (index.parent / "params.png").unlink()  # the probe sees a broken image
    assert not next(img for img in probe(probe_page)["images"] if img["src"] == "params.png")["loaded"]
