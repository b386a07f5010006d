#!/usr/bin/env python
"""Build the docs as static HTML without quarto: every notebook with its stored outputs, one page per chapter.

    python tools/build_docs.py [--out _docs]      # then open _docs/index.html

Each notebook in nbs/ goes through nbdev's own docs processing (`FilterDefaults`, what `proc_nbs` / `nbdev-docs`
run: `#| hide` cells removed, `show_doc` cells executed unless `--no-exec`, title and description from the first
markdown cell),
then is rendered here: markdown with markdown-it (tables; TeX kept as text), code with Pygments, stored outputs as
they are (PNG figures inline as base64, HTML tables, markdown). Every page has a sidebar in nbdev's sidebar order
(index first) and local CSS only: no script, stylesheet or font from the network. Page names are nbdev's (numeric
prefix dropped: `70_tutorial_tapseq.ipynb` -> `tutorial_tapseq.html`) and links to the hosted docs are made local.
Pages go to a temp folder that then replaces `--out`. Where quarto is installed, `nbdev-docs` is the full build.
"""
from __future__ import annotations
import argparse, contextlib, html, io, os, re, shutil, tempfile, warnings
from pathlib import Path

import yaml
from fastcore.nbio import read_nb
from markdown_it import MarkdownIt
from mdit_py_plugins.anchors import anchors_plugin
from mdit_py_plugins.dollarmath import dollarmath_plugin
from nbdev.config import get_config, nbpath2html
from nbdev.processors import FilterDefaults, exec_show_docs
from nbdev.quarto import nbdev_sidebar
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import PythonLexer, get_lexer_by_name
from pygments.util import ClassNotFound

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT / "nbs"
PANDOC_ATTRS = re.compile(r"\{target=\"_blank\"[^}\n]*\}")     # quarto link attributes nbdev adds to `[source](...)`
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _slug(s: str) -> str:
    "Heading id as nbdev links expect it (`SCCVAE.train` -> `sccvae.train`, `The loss` -> `the-loss`)."
    return re.sub(r"[^\w.\- ]", "", s.lower()).strip().replace(" ", "-")


SYMBOLS = dict(Delta="Δ", delta="δ", pi="π", kappa="κ", sigma="σ", mu="μ", varepsilon="ε", theta="θ",
               eta="η", tau="τ", alpha="α", beta="β", gamma="γ", ell="ℓ", to="→", times="×", sim="∼", cdot="·",
               lVert="‖", rVert="‖", lvert="|", rvert="|", mid="|", sum="Σ", top="⊤", sqrt="√", circ="∘", neq="≠",
               le="≤", lesssim="≲", approx="≈", dots="…", qquad="  ", quad=" ", big="", log="log", max="max", min="min",
               exp="exp", tanh="tanh") | {"lambda": "λ"}
ACCENTS = {"hat": "\u0302", "tilde": "\u0303", "bar": "\u0304", "overline": "\u0305"}


def tex(s: str, opts: dict | None = None) -> str:
    "Readable HTML for the TeX in the notebooks (no MathJax offline): symbols, sub/superscripts, fractions, accents."
    s = html.escape(s, quote=False)
    s = re.sub(r"\\([A-Za-z]+)(?![A-Za-z])", lambda m: SYMBOLS.get(m[1], m[0]), s)
    s = re.sub(r"\\(hat|tilde|bar|overline)\s*([^\s{\\])", lambda m: m[2] + ACCENTS[m[1]], s)   # \hat x
    arg = r"\{([^{}]*)\}"
    frac = lambda m: "/".join(x if re.fullmatch(r"\w+", x) else f"({x})" for x in (m[1], m[2]))
    for _ in range(5):                                           # innermost braces first
        s = re.sub(r"\\t?frac" + arg + arg, frac, s)
        s = re.sub(r"\\(hat|tilde|bar|overline)" + arg, lambda m: m[2] + ACCENTS[m[1]], s)
        s = re.sub(r"\\(?:text|mathrm|operatorname|mathbf|mathbb|mathcal|texttt)" + arg, r"\1", s)
        s = re.sub(r"_" + arg, r"<sub>\1</sub>", s)
        s = re.sub(r"\^" + arg, r"<sup>\1</sup>", s)
    s = re.sub(r"_(\\?[\w.]|[^\s<\\])", r"<sub>\1</sub>", s)
    s = re.sub(r"\^(\\?[\w]|[^\s<\\])", r"<sup>\1</sup>", s)
    return s.replace("{", "").replace("}", "").replace("\\,", " ").replace("\\", "")


def _fence(code: str, lang: str, attrs) -> str:
    "Pygments for fenced code in markdown that names its language; '' leaves markdown-it's plain <pre><code>."
    try: lexer = get_lexer_by_name(lang)
    except ClassNotFound: return ""
    return f'<pre class="highlight"><code>{highlight(code, lexer, HtmlFormatter(nowrap=True))}</code></pre>'


FMT = HtmlFormatter()
MD = (MarkdownIt("commonmark", {"html": True, "highlight": _fence}).enable(["table", "strikethrough"])
      .use(dollarmath_plugin, renderer=tex).use(anchors_plugin, min_level=1, max_level=4, slug_func=_slug))

CSS = """
body { margin: 0; font: 15px/1.55 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #212529; }
nav.sidebar { position: fixed; top: 0; bottom: 0; left: 0; width: 250px; overflow-y: auto; padding: 1rem;
  box-sizing: border-box; background: #f6f7f9; border-right: 1px solid #dee2e6; font-size: 14px; }
nav.sidebar .site { display: block; font-weight: 700; font-size: 18px; margin-bottom: .75rem; color: #212529; }
nav.sidebar ol { list-style: none; padding: 0; margin: 0; }
nav.sidebar a { display: block; padding: 2px 6px; border-radius: 4px; color: #2c5aa0; text-decoration: none; }
nav.sidebar a:hover { background: #e9ecef; }
nav.sidebar a.active { background: #2c5aa0; color: #fff; }
main { margin-left: 250px; padding: 1.5rem 2.5rem 4rem; max-width: 1050px; }
h1.title { margin-bottom: .25rem; }
p.description { font-style: italic; font-size: 120%; opacity: .75; margin-top: 0; }
a { color: #2c5aa0; }
pre, code { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 13px; }
:not(pre) > code { background: #f1f3f5; padding: 1px 4px; border-radius: 3px; }
.math { font-family: "STIX Two Math", "Latin Modern Math", Cambria, "Times New Roman", serif; font-size: 105%; }
div.math { text-align: center; margin: .6rem 0; }
pre { background: #f6f8fa; border: 1px solid #e1e4e8; border-radius: 4px; padding: .6rem .8rem; overflow-x: auto; }
.highlight pre { line-height: 1.4; }
.input pre { margin: 1rem 0 .3rem; }
.output { overflow-x: auto; margin-bottom: .6rem; }
.output pre.text { margin: 0 0 0 .8rem; padding: .2rem .8rem; background: none; border: none; border-left: 2px solid lightsalmon;
  border-radius: 0; white-space: pre-wrap; }
.output img { max-width: 100%; height: auto; }
.output.markdown { margin-top: 1.2rem; }
.output.markdown > hr:first-child + p { float: right; margin: .4rem 0 0; font-size: smaller; }   /* show_doc's source link */
table { border-collapse: collapse; margin: .6rem 0; font-size: 13px; }
th, td { border: 1px solid #dee2e6; padding: 3px 8px; vertical-align: top; }
th { background: #f1f3f5; }
table.dataframe td, table.dataframe th { text-align: right; }
blockquote { margin: .5rem 0; padding: .1rem 1rem; border-left: 3px solid #ced4da; color: #495057; }
"""


def chapters(nbs: Path = NBS) -> list[Path]:
    "Notebooks in the order of nbdev's generated `sidebar.yml` (index first), read from `nbdev_sidebar` itself."
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf): nbdev_sidebar(path=str(nbs), printit=True, force=True)
    def _flat(items):
        for o in items:
            if isinstance(o, dict): yield from _flat([o["href"]] if "href" in o else []); yield from _flat(o.get("contents", []))
            else: yield o
    names = _flat(yaml.safe_load(buf.getvalue())["website"]["sidebar"]["contents"])
    return [nbs / n for n in names if n.endswith(".ipynb")]


def _text(x) -> str: return "".join(x) if isinstance(x, list) else (x or "")


def _output(o: dict) -> str:
    "One stored output as HTML: PNG > HTML > markdown > plain text; streams and errors as text."
    d, kind = o.get("data", {}), "text"
    if o["output_type"] == "stream": inner = f'<pre class="text">{html.escape(_text(o["text"]))}</pre>'
    elif o["output_type"] == "error": inner = f'<pre class="text">{html.escape(ANSI.sub("", chr(10).join(o["traceback"])))}</pre>'
    elif "image/png" in d: kind, inner = "png", f'<img alt="figure" src="data:image/png;base64,{_text(d["image/png"]).strip()}">'
    elif "text/html" in d: kind, inner = "html", _text(d["text/html"])
    elif "text/markdown" in d: kind, inner = "markdown", MD.render(PANDOC_ATTRS.sub("", _text(d["text/markdown"])))
    else: inner = f'<pre class="text">{html.escape(_text(d.get("text/plain", "")))}</pre>'
    return f'<div class="output {kind}">{inner}</div>'


def _cell(c) -> str:
    "One processed cell as HTML, applying quarto's `echo` / `output` / `include` cell options."
    src = _text(c.source)
    if c.cell_type == "markdown": return MD.render(PANDOC_ATTRS.sub("", src))
    if c.cell_type != "code": return ""
    head = re.match(r"(#\|.*\n?)*", src).group()
    opts = {k.strip(): v.strip() for k, _, v in (l[2:].partition(":") for l in head.splitlines())}
    if opts.get("include") == "false": return ""
    code = src[len(head):].strip()
    parts = [f'<div class="input">{highlight(code, PythonLexer(), FMT)}</div>'] if code and opts.get("echo") != "false" else []
    if opts.get("output") != "false": parts += map(_output, c.get("outputs", []))
    return "\n".join(parts)


class StoredOutputs(FilterDefaults):
    "nbdev's docs processors without `exec_show_docs`: pages show the `show_doc` outputs stored in the notebooks."
    def base_procs(self): return [p for p in super().base_procs() if p is not exec_show_docs]


def render(path: Path, execute: bool = True) -> tuple[str, str, str]:
    "nbdev's docs processing of one notebook (`execute=False`: no `show_doc` run), then HTML -> (title, description, body)."
    nb = read_nb(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                        # nbdev's style hints (nbdev-docs prints them too)
        (FilterDefaults if execute else StoredOutputs)()(nb)
    fm, cells = {}, list(nb.cells)
    if cells and cells[0].cell_type == "raw":                  # the frontmatter nbdev made from `# Title` + `> description`
        m = re.match(r"\s*---\n(.*?)\n---", _text(cells.pop(0).source), re.S)
        fm = yaml.safe_load(m.group(1)) if m else {}
    return fm.get("title", path.stem), fm.get("description", ""), "\n".join(map(_cell, cells))


def _page(title: str, desc: str, body: str, nav: str) -> str:
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title>
<style>{CSS}{FMT.get_style_defs(".highlight")}</style>
</head><body>
{nav}
<main>
<h1 class="title">{html.escape(title)}</h1>
{f'<p class="description">{html.escape(desc)}</p>' if desc else ''}
{body}
</main>
</body></html>
"""


def build(out: Path = ROOT / "_docs", nbs: Path = NBS, execute: bool = True, verbose: bool = True) -> list[Path]:
    "Render every chapter into `out` (replaced as a whole, via a temp folder and a rename); returns the pages."
    out, cwd, in_test = Path(out).resolve(), os.getcwd(), os.environ.get("IN_TEST")
    os.chdir(ROOT)                                              # nbdev reads pyproject.toml from the working folder
    os.environ["IN_TEST"] = "1"                                 # as nbdev's docs driver: no progress bars
    try:
        cfg = get_config()
        host = f"{cfg.doc_host}/{cfg.doc_baseurl.strip('/')}".rstrip("/") + "/"
        pages = [(nbpath2html(p).name, *render(p, execute)) for p in chapters(Path(nbs))]
    finally:
        os.chdir(cwd)
        if in_test is None: del os.environ["IN_TEST"]
        else: os.environ["IN_TEST"] = in_test
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for name, title, desc, body in pages:
            links = "\n".join(f'<li><a href="{n}"{" class=active" if n == name else ""}>{html.escape(t)}</a></li>'
                              for n, t, *_ in pages)
            nav = f'<nav class="sidebar"><a class="site" href="index.html">{html.escape(cfg.title)}</a><ol>\n{links}\n</ol></nav>'
            body = body.replace(f'href="{host}', 'href="')          # links to the hosted docs -> the local pages
            (tmp / name).write_text(_page(title, desc, body, nav), encoding="utf-8")
        old = out.with_name(tmp.name + ".old")
        if out.exists(): out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True); raise
    written = [out / n for n, *_ in pages]
    if verbose:
        for w in written: print(f"wrote {w} ({w.stat().st_size // 1024} KiB)")
    return written


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "_docs"), help="output folder (replaced as a whole; default _docs)")
    ap.add_argument("--no-exec", action="store_true",
                    help="do not run the show_doc cells (nbdev does): show the outputs stored in the notebooks; faster")
    a = ap.parse_args(argv)
    out = build(Path(a.out), execute=not a.no_exec)[0].parent
    print(f"open {out / 'index.html'}")
    if shutil.which("quarto"): print("quarto is installed: `nbdev-docs` is the full build (navbar, search, TOC).")


if __name__ == "__main__": main()
