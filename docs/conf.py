"""Sphinx configuration: Markdown pages (MyST) and numpydoc docstrings."""

project = "skdbn"
extensions = ["myst_parser", "sphinx.ext.autodoc", "numpydoc"]
source_suffix = {".md": "markdown"}
exclude_patterns = ["_build"]
numpydoc_show_class_members = False
html_theme = "alabaster"
