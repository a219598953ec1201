"""mkdocs hooks: the site's home page is README.md, and docstrings' Sphinx roles render as code.

The README links to ``docs/x.md`` (right on GitHub); on the site those pages sit next to the
home page, so the prefix is dropped. Guide pages link back to ``../README.md``, which on the site
is ``index.md``. Links are still checked by ``mkdocs build --strict``.
"""
import re
from pathlib import Path

_ROLE = re.compile(r":(?:func|class|meth|mod|attr|data|exc|obj|const):(<code>)~?")


def on_page_markdown(markdown, page, config, files):
    if page.file.src_uri == "index.md":
        readme = Path(config["config_file_path"]).parent / "README.md"
        markdown = readme.read_text(encoding="utf-8").replace("](docs/", "](")
    return markdown.replace("](../README.md", "](index.md")


def on_page_content(html, page, config, files):
    return _ROLE.sub(r"\1", html) if page.file.src_uri.startswith("api/") else html
