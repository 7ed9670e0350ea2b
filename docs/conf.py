"""Sphinx configuration: Markdown pages and a notebook (MyST-NB), numpydoc docstrings, a
gallery of the examples (sphinx-gallery), the pydata theme.

Build: ``pip install -e ".[docs]" && sphinx-build -W -b html docs docs/_build/html``. The
gallery runs every ``examples/plot_*.py`` and the notebook is executed at each build, so a
build also checks that they run. Nothing is downloaded (no intersphinx).
"""

import shutil
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent))  # the checkout's skdbn, installed or not

from skdbn import __version__  # noqa: E402

project = "skdbn"
author = "the skdbn developers"
copyright = "2026, the skdbn developers"
release = version = __version__

extensions = [
    "myst_nb",
    "numpydoc",
    "sphinx.ext.autodoc",
    "sphinx_gallery.gen_gallery",
]
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = ["_build", "**.ipynb_checkpoints", "auto_examples/*.ipynb",
                    "auto_examples/*.py", "auto_examples/*.zip", "auto_examples/*.md5"]
suppress_warnings = ["config.cache"]  # sphinx-gallery's settings hold functions

numpydoc_show_class_members = False
numpydoc_xref_param_type = False
autodoc_typehints = "none"

# The notebook in examples/ is copied next to the pages and executed at every build.
_NOTEBOOKS = HERE / "notebooks"
_NOTEBOOKS.mkdir(exist_ok=True)
for notebook in (HERE.parent / "examples").glob("*.ipynb"):
    shutil.copyfile(notebook, _NOTEBOOKS / notebook.name)
nb_execution_mode = "force"
nb_execution_raise_on_error = True
nb_execution_timeout = 300
nb_merge_streams = True

sphinx_gallery_conf = {
    "examples_dirs": "../examples",
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",
    "ignore_pattern": r"\.ipynb$",
    "within_subsection_order": "FileNameSortKey",
    "download_all_examples": False,
    "remove_config_comments": True,
    "show_memory": False,
    "abort_on_example_error": True,
    "min_reported_time": 0,
    "capture_repr": (),  # a Display returned by the last line is drawn, not printed
}

html_theme = "pydata_sphinx_theme"
html_title = f"skdbn {release}"
html_theme_options = {
    "navbar_align": "left",
    "header_links_before_dropdown": 6,
    "show_toc_level": 2,
    "navigation_with_keys": False,
    "secondary_sidebar_items": ["page-toc"],
}
html_sidebars = {"**": ["sidebar-nav-bs"]}
html_static_path = []
