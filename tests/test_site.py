"""The course website (docs/build_site.py), opened page by page in a real browser, offline.

Serves the built site on 127.0.0.1 under a sub-path (/sd_scratch/, as GitHub Pages serves a project site, so a link
that only works at the server root fails here) and opens every page in Debian's `chromium` through `playwright`, the
same launch as tests/test_browser.py. Every request that leaves 127.0.0.1 is blocked and recorded: the machine has no
internet, and a page that needs a CDN fails the test. Checks, on every page:
- no console error, no uncaught exception, no failed or 4xx/5xx request, no request to another host;
- every image loaded; every internal link (and its #anchor) leads to a page of the site that exists;
- every piece of math that the page marks is typeset by MathJax (an `mjx-container`), none with a TeX error;
- no leftover `#|` directive, no raw widget JSON, no hidden cell's code;
and for the course as a whole:
- the navigation lists every lesson of nbs/*.ipynb in sorted order, each with its number and its first heading;
- each exported public function and class has its show_doc card on its lesson's page, with a [source] link that leads
  to the lines defining it on the site's page of the module (`src_<module>.html`), and no page mentions example.invalid;
- the measurements page (benchmarks/README.md) and the source pages are in the navigation and pass the same checks;
- a widget is replaced by a note that says to open the notebook; the search box finds a word.
A second test, without a browser, feeds cells with each nbdev / Quarto option (`hide`, `include: false`, `echo:
false`, `output: false`, `hide_line`) through the builder and checks what reaches the page.
Screenshots of three pages (home, 05_ddpm_ddim, 04_unet) are kept for a person to look at, in tmp/site_screenshots/
(ignored by git); the test prints where.

Uses the site in $SD_SCRATCH_SITE when set (.ci/run builds `_site/` first); otherwise it builds one into a temporary
folder with `python docs/build_site.py --out DIR`. Skipped without Chromium or playwright, unless
SD_SCRATCH_REQUIRE_BROWSER=1. By hand: `python tests/test_site.py` (same checks, prints the screenshot folder).
"""
from __future__ import annotations
import ast, functools, http.server, json, os, re, subprocess, sys, threading, urllib.error, urllib.parse, urllib.request
from pathlib import Path
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_browser import CHROMIUM, CHROMIUM_ARGS, require_browser   # noqa: E402  the one Chromium launch of this repo

REPO = Path(__file__).resolve().parents[1]
PREFIX = '/sd_scratch/'
SHOTS = REPO/'tmp'/'site_screenshots'
SCREENSHOT_PAGES = ['index.html', '05_ddpm_ddim.html', '04_unet.html']


# ---- what the notebooks say the site must hold (read here, independently of the builder) -------------------------
def _cells(nb_path: Path) -> list[dict]:
    nb = json.loads(nb_path.read_text(encoding='utf-8'))
    return [dict(c, source=''.join(c['source']) if isinstance(c['source'], list) else c['source']) for c in nb['cells']]


def _directives(src: str) -> set[str]:
    out = set()
    for line in src.splitlines():
        m = re.match(r'\s*#\|\s*([\w-]+)', line)
        if not m: break
        out.add(m.group(1))
    return out


@functools.lru_cache(None)
def _widget_makers() -> frozenset:
    "Exported functions (any notebook) whose code imports ipywidgets."
    out = set()
    for p in (REPO/'nbs').glob('*.ipynb'):
        for c in _cells(p):
            if c['cell_type'] == 'code' and '#| export' in c['source'] and 'ipywidgets' in c['source']:
                for node in ast.parse(c['source']).body:
                    if isinstance(node, ast.FunctionDef) and 'ipywidgets' in ast.unparse(node): out.add(node.name)
    return frozenset(out)


def _shows_widget(src: str) -> bool:
    "A cell saved without outputs that ends with a widget maker's result (`explorer = token_explorer(tok)` then `explorer`)."
    try: body = ast.parse(src).body
    except SyntaxError: return False
    if not body or not isinstance(body[-1], ast.Expr): return False
    calls = {n.targets[0].id: n.value for n in body if isinstance(n, ast.Assign) and isinstance(n.targets[0], ast.Name)}
    v = body[-1].value
    v = calls.get(v.id, v) if isinstance(v, ast.Name) else v
    return isinstance(v, ast.Call) and getattr(v.func, 'id', None) in _widget_makers()


def lessons() -> list[dict]:
    out = []
    for p in sorted((REPO/'nbs').glob('*.ipynb')):
        if p.stem == 'index' or p.name.startswith(('_', '.')): continue
        cells = _cells(p)
        title = next(m.group(1) for c in cells if c['cell_type'] == 'markdown'
                     for m in [re.search(r'^#{1,6}\s+(.+?)\s*$', c['source'], re.M)] if m)
        exported, hidden = [], []
        for c in cells:
            if c['cell_type'] != 'code': continue
            d = _directives(c['source'])
            body = '\n'.join(l for l in c['source'].splitlines() if not l.lstrip().startswith('#|')).strip()
            if 'hide' in d and len(body) > 40: hidden.append(body)
            if d & {'export', 'exports'} and 'hide' not in d:
                for node in ast.parse(body).body:
                    if isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)) and not node.name.startswith('_'):
                        patched = [a.annotation.id for a in node.args.args[:1] if isinstance(getattr(a, 'annotation', None), ast.Name)] \
                            if any('patch' in (getattr(d_, 'id', ''), getattr(getattr(d_, 'func', None), 'id', ''))   # @patch, @patch(as_prop=True)
                                   for d_ in node.decorator_list) else []
                        exported.append(f'{patched[0]}.{node.name}' if patched else node.name)
        widgets = sum('application/vnd.jupyter.widget-view+json' in o.get('data', {}) for c in cells for o in c.get('outputs', []))
        widgets += sum(1 for c in cells if c['cell_type'] == 'code' and not c.get('outputs') and _shows_widget(c['source']))
        out.append(dict(stem=p.stem, page=f'{p.stem}.html', number=p.stem.split('_')[0],
                        title=re.sub(r'[`*]', '', title).strip(), exported=exported, hidden=hidden, widgets=widgets))
    return out


# ---- the site, served ----------------------------------------------------------------------------------------------
class Handler(http.server.SimpleHTTPRequestHandler):
    "The site under PREFIX only, as a project site is served; everything else is a 404."
    def translate_path(self, path):
        p = urllib.parse.urlsplit(path).path
        if not p.startswith(PREFIX): return str(Path(self.directory)/'__outside_the_site__')
        return super().translate_path('/' + p[len(PREFIX):])
    def log_message(self, *a): pass


class Server:
    def __init__(self, root: Path):
        self.httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), functools.partial(Handler, directory=str(root)))
        self.url = f'http://127.0.0.1:{self.httpd.server_address[1]}{PREFIX}'
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
    def close(self): self.httpd.shutdown(); self.httpd.server_close()


def built_site(tmp: Path) -> Path:
    if os.environ.get('SD_SCRATCH_SITE'): return Path(os.environ['SD_SCRATCH_SITE']).resolve()
    out = tmp/'site'
    subprocess.run([sys.executable, str(REPO/'docs'/'build_site.py'), '--out', str(out), '--quiet'], check=True, cwd=REPO)
    return out


# ---- one page in the browser ---------------------------------------------------------------------------------------
PAGE_FACTS = """async () => {
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) await MathJax.startup.promise;
  const imgs = Array.from(document.images).map(i => ({src: i.currentSrc || i.src, ok: i.complete && i.naturalWidth > 0}));
  const links = Array.from(document.querySelectorAll('a[href]')).map(a => a.href);
  const code = Array.from(document.querySelectorAll('article pre')).map(p => p.innerText);
  const nav = Array.from(document.querySelectorAll('nav.md-nav--primary a.md-nav__link[href]'))
                   .map(a => ({href: a.href, text: a.innerText.trim()}));
  return {imgs, links, code, nav, ids: Array.from(document.querySelectorAll('[id]')).map(e => e.id),
          math: document.querySelectorAll('article .arithmatex').length,
          typeset: document.querySelectorAll('article .arithmatex mjx-container').length,
          mathErrors: document.querySelectorAll('mjx-merror, [data-mjx-error]').length,
          text: document.querySelector('article').innerText};
}"""


class Visit:
    "Open pages in one browser context that blocks and records everything not on 127.0.0.1."
    def __init__(self, browser, base: str):
        self.base, self.external, self.bad, self.console = base, [], [], []
        self.context = browser.new_context(viewport={'width': 1400, 'height': 1000})
        self.context.route('**/*', self._route)

    def _route(self, route):
        host = urllib.parse.urlsplit(route.request.url).hostname
        if host in ('127.0.0.1', None) or route.request.url.startswith(('data:', 'blob:')): route.continue_()
        else: self.external.append(route.request.url); route.abort()

    def open(self, name: str):
        page = self.context.new_page()
        errs, bad = [], []
        page.on('console', lambda m: errs.append(f'{m.type}: {m.text}') if m.type == 'error' else None)
        page.on('pageerror', lambda e: errs.append(f'uncaught: {e}'))
        page.on('requestfailed', lambda r: bad.append(f'{r.url} ({r.failure})'))
        page.on('response', lambda r: bad.append(f'{r.url} -> {r.status}') if r.status >= 400 else None)
        page.goto(self.base + name, wait_until='load')
        facts = page.evaluate(PAGE_FACTS)
        page.wait_for_timeout(100)
        facts.update(console=errs, bad=bad, page=page)
        return facts


@pytest.fixture(scope='module')
def site(tmp_path_factory):
    require_browser()
    from playwright.sync_api import sync_playwright
    root = built_site(tmp_path_factory.mktemp('site'))
    assert (root/'index.html').exists(), f"no site at {root}: run python docs/build_site.py"
    server = Server(root)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        visit = Visit(browser, server.url)
        try: yield root, server, visit
        finally:
            visit.context.close(); browser.close(); server.close()


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as r: return r.status
    except urllib.error.HTTPError as e: return e.code


def _check_page(root: Path, server: Server, visit: Visit, name: str) -> dict:
    f = visit.open(name)
    problems = [f'console/page error: {e}' for e in f['console']] + [f'failed request: {b}' for b in f['bad']]
    problems += [f"image not loaded: {i['src']}" for i in f['imgs'] if not i['ok']]
    for href in sorted(set(f['links'])):
        if not href.startswith(server.url.rsplit(PREFIX, 1)[0]): continue        # external links are not followed
        url, _, frag = href.partition('#')
        if _status(url) != 200: problems.append(f'broken link: {href}'); continue
        if frag and url.endswith('.html'):
            target = (root/urllib.parse.urlsplit(url).path[len(PREFIX):]).read_text(encoding='utf-8')
            if f'id="{urllib.parse.unquote(frag)}"' not in target: problems.append(f'link to a missing anchor: {href}')
    if f['typeset'] < f['math']: problems.append(f"math not typeset: {f['typeset']} of {f['math']}")
    if f['mathErrors']: problems.append(f"{f['mathErrors']} TeX errors")
    directive_lines = [l for block in f['code'] for l in block.splitlines() if l.lstrip().startswith('#|')]
    if directive_lines: problems.append(f'#| directives left in code: {directive_lines[:3]}')
    if re.search(r'application/vnd\.jupyter\.widget|"model_id"', f['text']): problems.append('raw widget JSON on the page')
    return dict(f, problems=problems)


def test_every_page_offline_and_whole(site):
    root, server, visit = site
    extra = sorted(p.name for p in root.glob('src_*.html')) + (['measurements.html'] if (REPO/'benchmarks'/'README.md').exists() else [])
    pages = ['index.html'] + [l['page'] for l in lessons()] + extra
    problems, facts = {}, {}
    for name in pages:
        f = _check_page(root, server, visit, name)
        facts[name] = f
        if f['problems']: problems[name] = f['problems'][:12]
        if name not in SCREENSHOT_PAGES: f['page'].close()
    if visit.external: problems['(all pages)'] = [f'asked another host (no internet here): {u}' for u in sorted(set(visit.external))[:10]]
    assert not problems, json.dumps(problems, indent=1)
    assert facts['05_ddpm_ddim.html']['typeset'] >= 5, "05_ddpm_ddim's equations are not typeset"

    # the navigation: every lesson, in course order, with its number and its title
    nav = [(urllib.parse.urlsplit(n['href']).path.rsplit('/', 1)[-1], n['text']) for n in facts['index.html']['nav']]
    nav_pages = [p for p, _ in nav if p.endswith('.html') and p != 'index.html' and p not in extra]
    assert nav_pages == [l['page'] for l in lessons()], f"navigation {nav_pages} != lessons in nbs/"
    assert set(extra) <= {p for p, _ in nav}, f"the measurements page and the source pages are in the navigation: {extra}"
    for l in lessons():
        text = dict(nav)[l['page']]
        assert text.startswith(l['number']) and l['title'] in text, f"nav entry for {l['stem']}: {text!r}"

    # no link on any page leads to a placeholder host (settings.ini's example.invalid once sat on every card)
    dead = [n for n in pages if 'example.invalid' in (root/n).read_text(encoding='utf-8')]
    assert not dead, f"pages that mention example.invalid: {dead}"

    # show_doc cards (each with a [source] link to the lines that define it), hidden cells, widgets
    for l in lessons():
        f = facts[l['page']]
        missing = [n for n in l['exported'] if 'doc-' + n.replace('.', '-') not in f['ids']]
        assert not missing, f"{l['page']}: no show_doc card for {missing}"
        html = (root/l['page']).read_text(encoding='utf-8')
        cards, linked = html.count('class="doc-card"'), len(re.findall(r'<a href="src_\w+\.html#src-[\w-]+">source</a>', html))
        assert linked >= cards, f"{l['page']}: {cards} show_doc cards, {linked} [source] links to the library's source pages"
        code = '\n'.join(f['code'])
        shown_hidden = [h[:80] for h in l['hidden'] if h in code]
        assert not shown_hidden, f"{l['page']}: hidden cells shown: {shown_hidden}"
        if l['widgets']:
            assert f['text'].count('Interactive widget') >= l['widgets'] and 'JupyterLab' in f['text'], \
                f"{l['page']}: a widget is not replaced by its note"
    assert any(l['widgets'] for l in lessons()), "no notebook shows a widget any more: the widget check tests nothing"

    # the search box, offline
    page = facts['index.html']['page']
    page.locator('input.md-search__input').click()             # the header's search box (a wide window)
    page.keyboard.type('DDIM', delay=30)                         # typed: the theme searches on key events
    page.wait_for_selector('.md-search-result__item', timeout=15_000)
    assert page.locator('.md-search-result__item').count() > 0
    page.keyboard.press('Escape')

    # three screenshots for a person: the top of each page and the first figure / equation / show_doc card below it
    SHOTS.mkdir(parents=True, exist_ok=True)
    for name in SCREENSHOT_PAGES:
        page = facts[name]['page']
        stem = name[:-5]
        page.evaluate('window.scrollTo(0, 0)'); page.wait_for_timeout(300)
        page.screenshot(path=str(SHOTS/f'{stem}.png'))
        for sel, tag in (('article .arithmatex mjx-container[display]', 'math'), ('article img.nb-figure', 'figure'),
                         ('article .doc-card', 'doc')):
            if page.locator(sel).count():
                page.locator(sel).first.scroll_into_view_if_needed(); page.evaluate('window.scrollBy(0, 300)')
                page.wait_for_timeout(300)                             # let the page paint after the jump
                page.screenshot(path=str(SHOTS/f'{stem}_{tag}.png'))
        page.close()
    print(f"\nsite checked: {len(pages)} pages; screenshots for a person to look at: {SHOTS}")


def test_cell_options_on_the_page():
    "nbdev / Quarto cell options as the page shows them (no browser needed): what is hidden, what is shown."
    sys.path.insert(0, str(REPO/'docs'))
    import build_site
    class Stub: git_url, widget_makers, shown, docs, by_stem, doc_index = '', set(), {'x': set()}, None, {}, {}
    page = build_site.Page(dict(stem='x', nb={'cells': []}, path=REPO/'nbs'/'x.ipynb', md='x.md', home=False,
                                number='', title='x'), Stub())
    printed = {'output_type': 'stream', 'name': 'stdout', 'text': 'printed\n'}
    widget = {'output_type': 'display_data', 'metadata': {},
              'data': {'application/vnd.jupyter.widget-view+json': {'model_id': 'abc'}, 'text/plain': 'VBox()'}}
    def page_of(src, *outs): return '\n\n'.join(page.code_cell({'cell_type': 'code', 'source': src, 'outputs': list(outs)}))
    assert page_of('#| hide\nsecret = 1', printed) == ''
    assert page_of('#| include: false\nsecret = 1', printed) == ''
    assert page_of('#| default_exp core\nsecret = 1') == ''
    shown = page_of('#| echo: false\nsecret = 1', printed); assert 'secret' not in shown and 'printed' in shown
    shown = page_of('#| output: false\nvisible = 1', printed); assert 'visible' in shown and 'printed' not in shown
    shown = page_of('a = 1\nb = 2 #| hide_line\nc = 3'); assert 'a = 1' in shown and 'c = 3' in shown and 'b = 2' not in shown
    shown = page_of('#| eval: false\n#|  slow\nx = 1'); assert '#|' not in shown and 'x = 1' in shown
    shown = page_of('show_doc(foo)', {'output_type': 'display_data', 'metadata': {}, 'data': {'text/markdown': '---\n\n### foo\n\n*doc*'}})
    assert 'show_doc(' not in shown and '### foo { #doc-foo' in shown
    shown = page_of('w', widget); assert 'Interactive widget' in shown and 'model_id' not in shown and 'abc' not in shown


if __name__ == '__main__':                  # python tests/test_site.py: the same test, with its prints
    sys.exit(pytest.main([__file__, '-q', '-s', '-p', 'no:cacheprovider']))
