"""Check the built documentation as a reader sees it, in a headless Chromium.

Takes screenshots of the front page and of one gallery page, saves them next to the build
(``<build>/screenshots/*.png``, the artefacts of a CI run) and checks that:

- every page has the navigation (the top bar and the sidebar of the table of contents) and
  links to the user guide, the examples and the API reference;
- the gallery page holds the plots its example drew, and the browser drew them: the
  screenshot shows matplotlib's colours;
- neither screenshot is blank;
- the API page has the anchor that the estimator's HTML repr links to.

Run after ``sphinx-build -b html docs docs/_build/html``:
``python docs/check_site.py docs/_build/html``. Chromium comes from the system's packages
(``apt-get install chromium``); it runs with no network access, on ``file://`` pages.
"""

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

PAGES = {  # screenshot name: (page, window height)
    "front": ("index.html", 1000),
    "gallery": ("auto_examples/plot_digits.html", 2600),
}
NAVIGATION = ("bd-header", "bd-sidebar-primary")
LINKS = ("user_guide.html", "auto_examples/index.html", "api.html")
# matplotlib's first colours (C0 blue, C1 orange, C3 red) as drawn in a plot's lines.
PLOT_COLOURS = np.array([[31, 119, 180], [255, 127, 14], [214, 39, 40]])


def chromium():
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    raise SystemExit("no Chromium found: apt-get install chromium")


def screenshot(browser, page, png, height):
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             "--no-first-run", f"--user-data-dir={profile}", "--allow-file-access-from-files",
             f"--window-size=1280,{height}", f"--screenshot={png}", page.as_uri()],
            check=True, capture_output=True, timeout=120)
    return np.asarray(Image.open(png).convert("RGB")).astype(int)


def check_page(html_file, build):
    html = html_file.read_text(encoding="utf-8")
    targets = {(html_file.parent / href.split("#")[0]).resolve()
               for href in re.findall(r'href="([^"#][^"]*)"', html) if "://" not in href}
    missing = [name for name in NAVIGATION if name not in html]
    missing += [link for link in LINKS if (build / link).resolve() not in targets]
    if missing:
        raise SystemExit(f"{html_file.name}: no {', '.join(missing)} (navigation)")
    return html


def check_plots(html_file, html):
    images = re.findall(r'<img[^>]+src="([^"]+sphx_glr_[^"]+\.png)"', html)
    if not images:
        raise SystemExit(f"{html_file.name}: no plot of the example")
    for source in images:
        if not (html_file.parent / source).is_file():
            raise SystemExit(f"{html_file.name}: the plot {source} is missing")
    return len(images)


def coloured_share(pixels):
    """Share of pixels that are not near-white."""
    return float(np.mean(pixels.min(axis=2) < 235))


def plot_colour_pixels(pixels):
    distance = np.abs(pixels[:, :, None, :] - PLOT_COLOURS[None, None]).sum(axis=3)
    return int((distance.min(axis=2) < 30).sum())


def check_repr_link(build):
    """The page and anchor that the estimator's HTML repr links to exist in this build."""
    from skdbn import DistributedDBN

    link = DistributedDBN()._get_doc_link()
    page, anchor = link.rsplit("/", 1)[1].split("#", 1)
    if f'id="{anchor}"' not in (build / page).read_text(encoding="utf-8"):
        raise SystemExit(f"the HTML repr links to {link}, which this build does not have")
    print(f"HTML repr link: {page}#{anchor} found")


def main(build):
    build = Path(build).resolve()
    check_repr_link(build)
    shots = build / "screenshots"
    shots.mkdir(exist_ok=True)
    browser = chromium()
    for name, (page, height) in PAGES.items():
        html_file = build / page
        html = check_page(html_file, build)
        pixels = screenshot(browser, html_file, shots / f"{name}.png", height)
        share = coloured_share(pixels)
        if share < 0.02:
            raise SystemExit(f"{name}: the screenshot is blank ({share:.1%} drawn)")
        report = f"{name}: {page}, navigation found, {share:.1%} of the screenshot drawn"
        if name == "gallery":
            n_plots = check_plots(html_file, html)
            coloured = plot_colour_pixels(pixels)
            if coloured < 200:
                raise SystemExit(f"{name}: no plot visible in the screenshot ({coloured} "
                                 "pixels of matplotlib's colours)")
            report += f", {n_plots} plots, {coloured} pixels of plot colours"
        print(report)
    print(f"screenshots in {shots}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "docs/_build/html")
