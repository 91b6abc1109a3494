"""Build the course as a static website from the notebooks as committed: `python docs/build_site.py`.

Nothing is executed and nothing is fetched: each notebook in nbs/ is turned into a Markdown page from its saved outputs,
then MkDocs (the Material theme, pip-only) renders the pages into `_site/` (ignored by git). Open `_site/index.html`, or
serve the folder (`python -m http.server -d _site`) to use the search box.

- The home page comes from nbs/index.ipynb; every other nbs/*.ipynb (sorted, so a new 07c_*.ipynb just appears) is one
  lesson, named in the navigation by its number (the file name up to the first `_`) and its first Markdown heading.
- Cells follow nbdev's directives: `#| hide`, `#| default_exp` and `#| include: false` cells are left out,
  `#| echo: false` shows only the outputs, `#| output: false` only the code, `#| hide_line` drops that line, and no
  `#|` line reaches the page. `show_doc(...)` cells show their saved output without the call.
- Every public function and class that an `#| export` cell defines gets its `show_doc` card right after the cell, as
  nbdev's own docs do, with a [source] link to the lines that define it on the site's page of the module's source
  (`src_<module>.html`: the library as nbdev_export writes it) (rendered by importing the library, which `nbdev_export` generated from these notebooks; the
  notebooks themselves are not run). Backticked names in the text link to their card, on any page, and a
  backticked lesson name (`04_unet`) to its page.
- Figures are written next to the pages; links to other notebooks and to files of the repo (images/) are rewritten to
  the site's pages and copies; math is typeset in the browser by a MathJax 3 served from the site itself (the
  `django-static-mathjax` wheel ships its files), never from a CDN.
- A live ipywidget cannot run on a static page: where a notebook shows one, the page says so and names the notebook.
- benchmarks/README.md, the measurements page (figures, the machines they came from and their history, kept out of the
  lessons), is a page of the site too, after the lessons.

`--out DIR` writes elsewhere; `--keep-src DIR` keeps the generated Markdown and mkdocs.yml for inspection.
"""
from __future__ import annotations
import argparse, ast, base64, configparser, importlib, json, re, shutil, sys, tempfile, time, warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
MEASUREMENTS = REPO/'benchmarks'/'README.md'   # the measurements page: figures, the machines they came from, their history
WIDGET_MIME = 'application/vnd.jupyter.widget-view+json'
_re_ansi = re.compile(r'\x1B(?:[@-Z\\-_]|\[[0-?]*[ -/]*[@-~])')
_re_directive = re.compile(r'^\s*#\|\s?(.*)$')
_re_heading = re.compile(r'^#{1,6}\s+(.+?)\s*#*\s*$', re.M)


def settings() -> configparser.SectionProxy:
    cfg = configparser.ConfigParser(); cfg.read(REPO/'settings.ini')
    return cfg['DEFAULT']


# ---- notebooks ---------------------------------------------------------------------------------------------------
def read_nb(path: Path) -> dict:
    nb = json.loads(path.read_text(encoding='utf-8'))
    for c in nb['cells']:
        if isinstance(c.get('source'), list): c['source'] = ''.join(c['source'])
    return nb


def directives(src: str) -> tuple[dict, str]:
    "nbdev/Quarto `#|` lines at the top of a cell -> ({name: value}, the source without them)."
    d, lines = {}, src.splitlines()
    while lines and (m := _re_directive.match(lines[0])):
        text = m.group(1).strip(); lines.pop(0)
        if not text: continue
        if ':' in text.split()[0]: k, _, v = text.partition(':'); d[k.strip()] = v.strip()
        else: k, *rest = text.split(maxsplit=1); d[k] = rest[0] if rest else ''
    return d, '\n'.join(lines)


def lesson_number(stem: str) -> str:
    m = re.match(r'^(\d+[a-z]?)_', stem)
    return m.group(1) if m else ''


def first_heading(nb: dict, default: str) -> str:
    for c in nb['cells']:
        if c['cell_type'] == 'markdown' and (m := _re_heading.search(c['source'])):
            return re.sub(r'[`*]', '', m.group(1)).strip()
    return default


def discover(nbs: Path) -> list[dict]:
    "index.ipynb first (the home page), then every other notebook in sorted order."
    pages = []
    for p in sorted(nbs.glob('*.ipynb')):
        if p.name.startswith(('_', '.')): continue
        nb = read_nb(p)
        home = p.stem == 'index'
        pages.append(dict(path=p, stem=p.stem, nb=nb, md='index.md' if home else f'{p.stem}.md', home=home,
                          number=lesson_number(p.stem), title=first_heading(nb, p.stem)))
    pages.sort(key=lambda pg: not pg['home'])                   # stable: lessons keep their sorted order
    return pages


def nav_label(page: dict) -> str:
    if page['home']: return 'Home'
    return f"{page['number']} · {page['title']}" if page['number'] else page['title']


def default_exp(nb: dict) -> str | None:
    for c in nb['cells']:
        if c['cell_type'] == 'code' and 'default_exp' in (d := directives(c['source'])[0]): return d['default_exp'].split()[0]
    return None


def _patch_name(node) -> str | None:
    "`@patch def f(self:Cls)` -> 'Cls.f' (as nbdev names patched methods)."
    decos = [getattr(d, 'id', getattr(getattr(d, 'func', None), 'id', None)) for d in node.decorator_list]
    if not any(n in ('patch', 'patch_to') for n in decos) or not node.args.args: return None
    ann = node.args.args[0].annotation
    if isinstance(ann, ast.Name): return f'{ann.id}.{node.name}'
    return None


def exported_names(src: str) -> list[str]:
    "Public top-level functions and classes a cell defines: what nbdev gives a show_doc card."
    try: tree = ast.parse(src)
    except SyntaxError: return []
    out = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and not node.name.startswith('_'):
            out.append((_patch_name(node) if not isinstance(node, ast.ClassDef) else None) or node.name)
    return out


def widget_makers(src: str) -> set[str]:
    "Functions an export cell defines that build ipywidgets (they import it): what they return is a live widget."
    try: tree = ast.parse(src)
    except SyntaxError: return set()
    return {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and 'ipywidgets' in ast.unparse(n)}


def displays_widget(src: str, makers: set[str]) -> bool:
    "Does the cell end by displaying what a widget maker returned (`maker(...)`, or `x = maker(...)` then `x`)?"
    try: tree = ast.parse(src)
    except SyntaxError: return False
    if not tree.body or not isinstance(tree.body[-1], ast.Expr): return False
    def made(v) -> bool:
        return isinstance(v, ast.Call) and getattr(v.func, 'id', getattr(v.func, 'attr', None)) in makers
    last, bound = tree.body[-1].value, {t.id for n in tree.body if isinstance(n, ast.Assign) and made(n.value)
                                       for t in n.targets if isinstance(t, ast.Name)}
    return made(last) or (isinstance(last, ast.Name) and last.id in bound)


def shown_doc_name(src: str) -> str | None:
    "The name in an explicit `show_doc(Name)` / `show_doc(Cls.meth)` cell."
    m = re.match(r'\s*show_doc\(\s*([\w.]+)', src)
    return m.group(1) if m else None


def anchor(name: str) -> str: return 'doc-' + name.replace('.', '-')


# ---- show_doc cards ---------------------------------------------------------------------------------------------
class Docs:
    "Render show_doc cards from the library the notebooks export (imported, never the notebooks run)."
    def __init__(self, lib_name: str, git_url: str, sources: 'Sources | None' = None):
        self.lib, self.git_url, self.mods, self.sources = lib_name, git_url, {}, sources

    def card(self, module: str, name: str) -> str:
        from nbdev.showdoc import show_doc
        if module not in self.mods:
            self.mods[module] = vars(importlib.import_module(f'{self.lib}.{module}'))
        obj = eval(name, dict(self.mods[module]))                 # a dotted name found in the module: Cls.method
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            md = show_doc(obj, name=name)._repr_markdown_()
        return with_source_link(md, self.sources.link(obj) if self.sources else None)

    def link(self, module: str | None, name: str) -> str | None:
        "Where `name` (as a lesson's `show_doc(name)` cell names it) is defined on the site's source pages."
        if not (module and self.sources): return None
        if module not in self.mods:
            try: self.mods[module] = vars(importlib.import_module(f'{self.lib}.{module}'))
            except ImportError: return None
        try: obj = eval(name, dict(self.mods[module]))
        except Exception: return None
        return self.sources.link(obj)


def with_source_link(md: str, link: str | None) -> str:
    "A show_doc card whose [source] link (if any) is replaced by `link` (none if None)."
    md = re.sub(r'^\[source\]\([^)]*\)(\{[^}]*\})?\s*$', '', md, flags=re.M)
    return md if link is None else f'[source]({link})\n\n' + md


class Sources:
    """The library's modules as pages of the site (`src_<module>.md`), cut at every top-level definition, so a show_doc
    card's [source] link can lead to the lines that define the name: `sd_scratch/*.py` as nbdev_export writes them."""
    def __init__(self, lib_name: str, lessons: dict):
        self.lib, self.pkg = lib_name, REPO/lib_name
        self.mods = sorted(p.stem for p in self.pkg.glob('*.py') if not p.stem.startswith('_'))
        self.lessons = lessons                                    # module -> the lesson page that exports it
        self.chunks = {m: self._chunks(self.pkg/f'{m}.py') for m in self.mods}

    @staticmethod
    def _chunks(path: Path) -> list[tuple[int, int, str | None]]:
        "(first line, last line, the name it defines or None) of each top-level piece of a module, in order."
        text = path.read_text(encoding='utf-8')
        tree, n = ast.parse(text), len(text.splitlines())
        starts = []
        for node in tree.body:
            first = min([node.lineno] + [d.lineno for d in getattr(node, 'decorator_list', [])])
            name = None
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = (_patch_name(node) if not isinstance(node, ast.ClassDef) else None) or node.name
            starts.append((first, name))
        out, prev = [], 1
        for (first, name), nxt in zip(starts, starts[1:] + [(n + 1, None)]):
            if name is None: continue
            if first > prev: out.append((prev, first - 1, None))
            out.append((first, nxt[0] - 1, name)); prev = nxt[0]
        if prev <= n: out.append((prev, n, None))
        return out

    @staticmethod
    def page(mod: str) -> str: return f'src_{mod}.md'

    @staticmethod
    def anchor(name: str) -> str: return 'src-' + name.replace('.', '-')

    def link(self, obj) -> str | None:
        "`src_<module>.md#src-<name>` for the definition that holds `obj`'s first line (None for what is not ours)."
        import inspect
        try:
            if isinstance(obj, property): obj = obj.fget          # a property's card leads to its getter
            obj = inspect.unwrap(obj)                             # a @contextmanager's function, not contextlib's wrapper
            f, line = Path(inspect.getsourcefile(obj)).resolve(), inspect.getsourcelines(obj)[1]
        except (TypeError, OSError): return None
        if f.parent != self.pkg.resolve() or f.stem not in self.chunks: return None
        for first, last, name in self.chunks[f.stem]:
            if name and first <= line <= last: return f'{self.page(f.stem)}#{self.anchor(name)}'
        return self.page(f.stem)

    def markdown(self, mod: str) -> str:
        lines = (self.pkg/f'{mod}.py').read_text(encoding='utf-8').splitlines()
        lesson = self.lessons.get(mod)
        head = [f'---\ntitle: "sd_scratch.{mod}"\n---\n', f'# `sd_scratch/{mod}.py`\n',
                'The module as `nbdev_export` writes it' + (f' from lesson [{lesson[:-3]}]({lesson})' if lesson else '') +
                ': to change it, edit the notebook, not this file. Each definition below is what a `[source]` link on a '
                'lesson page leads to.\n']
        parts = []
        for first, last, name in self.chunks[mod]:
            code = '\n'.join(l for l in lines[first - 1:last] if not l.lstrip().startswith('#|')).strip('\n')   # (a notebook directive)
            if not code.strip(): continue
            if name: parts.append(f'### `{name}` {{ #{self.anchor(name)} }}\n')
            parts.append(fence(code, 'python'))
        return '\n'.join(head) + '\n' + '\n\n'.join(parts) + '\n'


def fix_doc_markdown(md: str, name: str | None, git_url: str) -> str:
    "A show_doc card in Markdown -> the site's: an id on its heading, Quarto's link attributes dropped."
    # Quarto link attributes {target=... style=...}: the source link opens in place; a placeholder host is dropped
    md = re.sub(r'(\[source\]\([^)]*\))\{[^}]*\}', r'\1', md)
    md = re.sub(r'^\[source\]\((?!src_)[^)]*\)\s*$', '', md, flags=re.M)   # only links to the site's own source pages
    md = re.sub(r'^---\s*$', '', md, count=1, flags=re.M)      # nbdev's leading rule (a setext trap in Markdown)
    if name:
        md = re.sub(r'^(#{2,4})\s+(\S+)\s*$', lambda m: f'{m.group(1)} {m.group(2)} {{ #{anchor(name)} .doc-title }}',
                    md, count=1, flags=re.M)
    return f'<div class="doc-card" markdown>\n\n{md.strip()}\n\n</div>'


# ---- one notebook -> one Markdown page ---------------------------------------------------------------------------
def fence(text: str, lang: str = '', cls: str = '') -> str:
    ticks = '`' * max(3, max((len(m) for m in re.findall(r'`{3,}', text)), default=0) + 1)
    attrs = f'{{ .{lang or "text"}{" ." + cls if cls else ""} }}' if cls else lang
    return f'{ticks}{attrs}\n{text.rstrip()}\n{ticks}'


def clean_stream(text: str) -> str:
    "ANSI colours out, progress bars (carriage returns) reduced to their last state."
    text = _re_ansi.sub('', text)
    return '\n'.join(line.rsplit('\r', 1)[-1] for line in text.split('\n'))


def fix_lists(md: str) -> str:
    "CommonMark (Jupyter) nests a list under 2-3 spaces; Python-Markdown needs 4. Blank line before a list, too."
    out, in_code = [], False
    for line in md.split('\n'):
        if line.lstrip().startswith(('```', '~~~')): in_code = not in_code
        if not in_code:
            if m := re.match(r'^( {2,3})([-*+]|\d+\.) ', line): line = '    ' + line[len(m.group(1)):]
            if re.match(r'^([-*+]|\d+\.) ', line) and out and out[-1].strip() and not re.match(r'^\s*([-*+]|\d+\.) |^\s', out[-1]):
                out.append('')
        out.append(line)
    return '\n'.join(out)


class Page:
    def __init__(self, page: dict, site: 'Site'):
        self.p, self.site, self.stem = page, site, page['stem']
        self.files = f"{self.stem}_files"
        self.module = default_exp(page['nb'])
        self.n_img = 0

    # links and images in Markdown: notebooks -> pages, repo files -> copies in the site
    def _target(self, url: str) -> str:
        if re.match(r'^[a-z][a-z0-9+.-]*:|^#|^/', url, re.I) or not url.strip(): return url
        path, hash_ = (url.split('#', 1) + [''])[:2]
        for base in (self.p['path'].parent, REPO):
            f = (base/path).resolve()
            if f.exists() and REPO in f.parents: break
        else: return url
        if f.suffix == '.ipynb' and f.stem in self.site.by_stem:
            return self.site.by_stem[f.stem]['md'] + (f'#{hash_}' if hash_ else '')
        if f == MEASUREMENTS.resolve(): return 'measurements.md' + (f'#{hash_}' if hash_ else '')
        rel = f.relative_to(REPO).as_posix()
        self.site.copy_file(f, rel)
        return rel + (f'#{hash_}' if hash_ else '')

    def rewrite_links(self, md: str) -> str:
        md = re.sub(r'(!?\[[^\]]*\]\()([^)\s]+)((?:\s+"[^"]*")?\))', lambda m: m.group(1) + self._target(m.group(2)) + m.group(3), md)
        return re.sub(r'((?:src|href)=")([^"]+)(")', lambda m: m.group(1) + self._target(m.group(2)) + m.group(3), md)

    def linkify(self, md: str) -> str:
        "`Name` -> a link to Name's show_doc card (nbdev does the same with its doc links)."
        def sub(m):
            name = m.group(2)
            if m.group(1) or name not in self.site.doc_index: return m.group(0)
            page, anc = self.site.doc_index[name]
            href = f'#{anc}' if page == self.p['md'] else f'{page}#{anc}'
            return f'[`{name}{m.group(3) or ""}`]({href})'
        def lesson(m):                                           # `04_unet` -> that lesson's page
            if m.group(1) or m.group(2) not in self.site.by_stem or m.group(2) == self.stem: return m.group(0)
            return f'[`{m.group(2)}`]({self.site.by_stem[m.group(2)]["md"]})'
        out, in_code = [], False
        for line in md.split('\n'):
            if line.lstrip().startswith(('```', '~~~')): in_code = not in_code
            if not in_code and not line.lstrip().startswith('#'):
                line = re.sub(r'(\[)?`([A-Za-z_][\w.]*)(\(\))?`', sub, line)
                line = re.sub(r'(\[)?`(\w+)`', lesson, line)
            out.append(line)
        return '\n'.join(out)

    def save(self, data: str | bytes, ext: str) -> str:
        self.n_img += 1
        name = f'{self.files}/fig{self.n_img:03d}.{ext}'
        (self.site.src/name).parent.mkdir(parents=True, exist_ok=True)
        (self.site.src/name).write_bytes(data if isinstance(data, bytes) else data.encode())
        return name

    def output(self, o: dict, shown_name: str | None) -> str:
        t = o['output_type']
        if t == 'stream':
            return fence(clean_stream(''.join(o['text'])), 'text', 'nb-output' + (' nb-stderr' if o.get('name') == 'stderr' else ''))
        if t == 'error':
            return fence(_re_ansi.sub('', '\n'.join(o.get('traceback') or [f"{o['ename']}: {o['evalue']}"])), 'text', 'nb-output nb-error')
        data = {k: ''.join(v) if isinstance(v, list) else v for k, v in o.get('data', {}).items()}
        if WIDGET_MIME in data: return self.widget_note()
        if 'text/markdown' in data:
            md = data['text/markdown']
            if shown_name and self.site.docs: md = with_source_link(md, self.site.docs.link(self.module, shown_name))
            if shown_name or md.lstrip().startswith('---'): return fix_doc_markdown(md, shown_name, self.site.git_url)
            return self.rewrite_links(md)
        for mime, ext in (('image/png', 'png'), ('image/jpeg', 'jpg'), ('image/gif', 'gif')):
            if mime in data:
                alt = 'figure' if 'text/plain' not in data else re.sub(r'[\[\]<>]', '', data['text/plain'])[:80]
                return f'![{alt}]({self.save(base64.b64decode(data[mime]), ext)}){{ .nb-figure }}'
        if 'image/svg+xml' in data: return f'![figure]({self.save(data["image/svg+xml"], "svg")}){{ .nb-figure }}'
        if 'text/html' in data:
            html = re.sub(r'<script.*?</script>', '', data['text/html'], flags=re.S)
            return f'<div class="nb-output nb-html">\n{html.strip()}\n</div>'
        if 'text/latex' in data: return data['text/latex']
        if 'text/plain' in data: return fence(_re_ansi.sub('', data['text/plain']), 'text', 'nb-output')
        return ''

    def widget_note(self) -> str:
        return (f'!!! note "Interactive widget"\n\n    A live widget stands here in the notebook: open '
                f'`nbs/{self.p["path"].name}` in JupyterLab and run it to use this widget.')

    def code_cell(self, c: dict) -> list[str]:
        d, src = directives(c['source'])
        if {'hide', 'default_exp'} & d.keys() or d.get('include', '').lower() == 'false': return []
        src = '\n'.join(l for l in src.splitlines() if not re.search(r'#\|\s*hide_line\s*$', l)).strip('\n')
        doc_name = shown_doc_name(src)
        parts = []
        if src.strip() and d.get('echo', '').lower() != 'false' and not doc_name: parts.append(fence(src, 'python'))
        if d.get('output', '').lower() != 'false':
            outs = c.get('outputs', [])
            if doc_name and not outs and self.module:               # a show_doc cell saved without its output
                parts.append(fix_doc_markdown(self.site.docs.card(self.module, doc_name), doc_name, self.site.git_url))
            parts += [s for o in outs if (s := self.output(o, doc_name))]
            # a widget saved without its output (notebooks are often committed so) still gets its note
            if not any(WIDGET_MIME in o.get('data', {}) for o in outs) and displays_widget(src, self.site.widget_makers):
                parts.append(self.widget_note())
        if self.module and {'export', 'exports'} & d.keys():
            for name in exported_names(src):
                if name not in self.site.shown[self.stem]:
                    parts.append(fix_doc_markdown(self.site.docs.card(self.module, name), name, self.site.git_url))
        return parts

    def markdown(self) -> str:
        nb, parts = self.p['nb'], []
        for c in nb['cells']:
            if c['cell_type'] == 'markdown':
                d, src = directives(c['source'])
                if 'hide' in d: continue
                for name, att in (c.get('attachments') or {}).items():
                    mime, b64 = next(iter(att.items()))
                    src = src.replace(f'attachment:{name}', self.save(base64.b64decode(b64), mime.split('/')[-1].split('+')[0]))
                parts.append(self.linkify(self.rewrite_links(fix_lists(src))))
            elif c['cell_type'] == 'code':
                parts += self.code_cell(c)
            elif c['cell_type'] == 'raw' and c.get('metadata', {}).get('format', '') in ('text/markdown', 'text/html'):
                parts.append(c['source'])
        head = f'---\ntitle: {json.dumps(nav_label(self.p))}\n---\n\n' if self.p['number'] else ''   # the tab's title
        return head + '\n\n'.join(parts) + '\n'


class Site:
    def __init__(self, src: Path):
        s = settings()
        self.src, self.git_url = src, s.get('git_url', '')
        self.lib = s.get('lib_name', 'sd_scratch')
        self.pages = discover(REPO/s.get('nbs_path', 'nbs'))
        self.by_stem = {p['stem']: p for p in self.pages}
        lessons = {m: p['md'] for p in self.pages if (m := default_exp(p['nb']))}
        self.sources = Sources(self.lib, lessons)
        self.docs = Docs(self.lib, self.git_url, self.sources)
        self.copied: set[str] = set()
        # every name that gets a show_doc card, and on which page: backticked names link to it from anywhere
        self.doc_index, self.shown, self.widget_makers = {}, {}, set()
        for p in self.pages:
            shown = set()
            for c in p['nb']['cells']:
                if c['cell_type'] != 'code': continue
                d, src = directives(c['source'])
                if (n := shown_doc_name(src)) and not {'hide'} & d.keys(): shown.add(n)
            self.shown[p['stem']] = shown
            names = set(shown)
            if default_exp(p['nb']):
                for c in p['nb']['cells']:
                    d, src = directives(c['source']) if c['cell_type'] == 'code' else ({}, '')
                    if {'export', 'exports'} & d.keys() and 'hide' not in d: names.update(exported_names(src))
                    if {'export', 'exports', 'exporti'} & d.keys(): self.widget_makers |= widget_makers(src)
            for n in names: self.doc_index.setdefault(n, (p['md'], anchor(n)))

    def copy_file(self, f: Path, rel: str):
        if rel in self.copied: return
        self.copied.add(rel); (self.src/rel).parent.mkdir(parents=True, exist_ok=True); shutil.copy2(f, self.src/rel)

    def write(self):
        for p in self.pages: (self.src/p['md']).write_text(Page(p, self).markdown(), encoding='utf-8')
        for m in self.sources.mods: (self.src/self.sources.page(m)).write_text(self.sources.markdown(m), encoding='utf-8')
        if MEASUREMENTS.exists(): (self.src/'measurements.md').write_text(self.measurements(), encoding='utf-8')
        shutil.copytree(HERE/'assets', self.src/'assets')
        mathjax_assets(self.src/'assets'/'mathjax')

    def measurements(self) -> str:
        "benchmarks/README.md as a page: its links to benchmark files lead to copies in the site, to notebooks to their pages."
        def target(m):
            url = m.group(2)
            if re.match(r'^[a-z][a-z0-9+.-]*:|^#', url, re.I): return m.group(0)
            f = (MEASUREMENTS.parent/url.split('#')[0]).resolve()
            if f.suffix == '.ipynb' and f.stem in self.by_stem: return m.group(1) + self.by_stem[f.stem]['md'] + ')'
            if f.exists() and REPO in f.parents and f.suffix != '.md':
                rel = f.relative_to(REPO).as_posix(); self.copy_file(f, rel); return m.group(1) + rel + ')'
            return m.group(0)
        md = MEASUREMENTS.read_text(encoding='utf-8')
        return '---\ntitle: "Measurements"\n---\n\n' + re.sub(r'(\[[^\]]*\]\()([^)\s]+)\)', target, md)

    def nav(self) -> list:
        out = [{nav_label(p): p['md']} for p in self.pages]
        if MEASUREMENTS.exists(): out.append({'Measurements': 'measurements.md'})
        return out + [{'Library source': [{f'sd_scratch.{m}': self.sources.page(m)} for m in self.sources.mods]}]


def mathjax_assets(dest: Path):
    "MathJax 3 (tex-svg: no web fonts to load), its TeX extensions (loaded on demand) and menu, from the pip package."
    try: import mathjax
    except ImportError: sys.exit("MathJax is missing: pip install django-static-mathjax (in the [dev] extras)")
    es5 = Path(mathjax.__file__).parent/'static'/'mathjax'/'es5'
    dest.mkdir(parents=True)
    shutil.copy2(es5/'tex-svg.js', dest); shutil.copy2(es5.parent/'LICENSE', dest/'LICENSE')
    for sub in ('input/tex/extensions', 'a11y', 'ui'): shutil.copytree(es5/sub, dest/sub)


def build(out: Path, keep_src: Path | None = None, quiet: bool = False) -> Path:
    from mkdocs.commands.build import build as mkdocs_build
    from mkdocs.config import load_config
    import logging, yaml
    t0 = time.time()
    # MkDocs empties its output folder first: never point it at a folder that holds anything but an earlier site
    if out.exists() and any(out.iterdir()) and not (out/'search'/'search_index.json').exists():
        sys.exit(f"{out} holds files that are not a site built here; not overwriting it (choose another --out)")
    tmp = Path(tempfile.mkdtemp(prefix='sd_scratch_site_'))
    try:
        src = tmp/'docs'; src.mkdir()
        site = Site(src); site.write()
        cfg = yaml.safe_load((HERE/'mkdocs.yml').read_text())
        cfg.update(nav=site.nav(), docs_dir=str(src), site_dir=str(out.resolve()))
        (tmp/'mkdocs.yml').write_text(yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True))
        logging.getLogger('mkdocs').setLevel(logging.WARNING if quiet else logging.INFO)
        if not logging.getLogger().handlers: logging.basicConfig(format='%(levelname)s %(message)s')
        config = load_config(str(tmp/'mkdocs.yml'), strict=True)
        mkdocs_build(config)
        if keep_src:
            if keep_src.exists(): shutil.rmtree(keep_src)
            shutil.copytree(tmp, keep_src)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    lessons = sum(not p['home'] for p in site.pages)
    print(f"site: {out} ({lessons} lessons + home) built in {time.time() - t0:.1f} s; open {out/'index.html'}"
          f" or serve it: python -m http.server -d {out}")
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split('\n\n', 1)[1])
    ap.add_argument('--out', type=Path, default=REPO/'_site', help='folder the site is written to (default: _site/)')
    ap.add_argument('--keep-src', type=Path, default=None, help='also keep the generated Markdown and mkdocs.yml here')
    ap.add_argument('--quiet', action='store_true', help="only MkDocs' warnings")
    a = ap.parse_args(argv)
    build(a.out, a.keep_src, a.quiet)


if __name__ == '__main__': main()
