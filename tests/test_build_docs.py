"""The static docs build (tools/build_docs.py): one page per notebook, a sidebar that resolves, results shown, nothing
loaded from the network. Built with `execute=False` (nbdev's processing without running `show_doc`: no notebook code
runs), so the whole site takes seconds; `tools/test.sh` runs nbdev's `proc_nbs()` for the executing path."""
import re, sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import build_docs  # noqa: E402


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site") / "_docs"
    build_docs.build(out, execute=False, verbose=False)
    return out, {p.name: p.read_text(encoding="utf-8") for p in out.glob("*.html")}


def test_a_page_per_notebook(site):
    out, pages = site
    nbs = sorted(p.name for p in (ROOT / "nbs").glob("*.ipynb"))
    expected = {re.sub(r"^\d+[a-zA-Z0-9]*_", "", n.lower())[:-len(".ipynb")] + ".html" for n in nbs}
    assert "index.html" in pages
    assert set(pages) == expected
    assert not [p for p in out.parent.iterdir() if p.name.startswith("._docs")]     # no temp folder left over


def test_sidebar_in_nbdev_order_and_resolves(site):
    out, pages = site
    order = [build_docs.nbpath2html(p).name for p in build_docs.chapters()]
    assert order[0] == "index.html" and len(order) == len(pages)
    for name, text in pages.items():
        nav = re.search(r'<nav class="sidebar">(.*?)</nav>', text, re.S)
        assert nav, f"{name}: no sidebar"
        links = re.findall(r'<li><a href="([^"]+)"', nav.group(1))
        assert links == order, f"{name}: sidebar order"
        assert f'<a href="{name}" class=active' in nav.group(1)
    for name, text in pages.items():                                          # every local page link exists
        for href in re.findall(r'href="([^"#:]+\.html)(?:#[^"]*)?"', text):
            assert (out / href).exists(), f"{name} links to missing {href}"


def test_results_and_titles_shown(site):
    _, pages = site
    assert any("<table" in t for t in pages.values())
    assert any(re.search(r'<img[^>]+src="data:image/png;base64,[A-Za-z0-9+/]{100}', t) for t in pages.values())
    assert "<h1 class=\"title\">Tutorial: a real K562 CRISPRi screen</h1>" in pages["tutorial_tapseq.html"]
    assert re.search(r'<img[^>]+data:image/png', pages["plotting.html"])
    assert not any("#| export" in t or "#| hide" in t for t in pages.values())          # directives are not shown


def test_nothing_loaded_from_the_network(site):
    _, pages = site
    for name, text in pages.items():
        assert not re.search(r'<script[^>]*\bsrc=["\']?(https?:)?//', text, re.I), name
        assert not re.search(r'<link[^>]*\bhref=["\']?(https?:)?//', text, re.I), name
        assert not re.search(r'<(img|iframe)[^>]*\bsrc=["\']?(https?:)?//', text, re.I), name
        assert not re.search(r'@import|url\(\s*["\']?(https?:)?//', text, re.I), name
