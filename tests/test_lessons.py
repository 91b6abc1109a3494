"""The lessons read as lessons, checked from outside (what a reviewer would otherwise count by hand).

- Shape: every lesson has one `## Checks` section and ends with `## What we learned`; before the checks, at least three
  teaching cells for every cell that proves something (asserts), so the idea comes first and the proof after.
- No lab diary: lesson prose states today's facts; dates, issue numbers and machine load belong on the measurements
  page (benchmarks/README.md), not in a lesson.
- Saved outputs are today's: every saved `show_doc` card equals what the library renders now.
- Cross-references hold: every lesson a lesson names exists, and a name said to be "above" or "below" is defined there.
- Short cells, short lines: no lesson code cell over 60 lines, no library line over 140 characters (`__all__` aside).

Each checker has a self-check that it can fail: a checker that finds nothing proves nothing.
"""
from __future__ import annotations
import ast, importlib, json, re, warnings
from pathlib import Path
import pytest

REPO = Path(__file__).resolve().parents[1]
NBS = REPO/'nbs'
LESSONS = sorted(p for p in NBS.glob('*.ipynb') if p.name != 'index.ipynb')
CHECKS, SUMMARY = '## Checks', '## What we learned'
MAX_CELL_LINES, MAX_LINE = 60, 140


def cells(path: Path) -> list[dict]:
    nb = json.loads(path.read_text())
    return [dict(c, source=''.join(c['source']) if isinstance(c['source'], list) else c['source']) for c in nb['cells']]


def directives(src: str) -> dict:
    return {m.group(1).split()[0]: m.group(1) for l in src.splitlines() if (m := re.match(r'^\s*#\|\s*(\S.*)$', l))}


# ---- the shape of a lesson -----------------------------------------------------------------------------------------
_re_proof = re.compile(r'^\s*(assert\b|test_(eq|ne|close|fail|is|shuffled|stdout|warns|eq_type)\b)', re.M)

def is_proof(c: dict) -> bool:
    "A code cell that asserts something."
    return c['cell_type'] == 'code' and bool(_re_proof.search(c['source']))


def shape_problems(cs: list[dict]) -> list[str]:
    "What is wrong with a lesson's shape (empty: nothing)."
    heads = [i for i, c in enumerate(cs) if c['cell_type'] == 'markdown' and c['source'].lstrip().startswith(CHECKS)
             and c['source'].lstrip()[len(CHECKS):len(CHECKS) + 1] in ('', '\n', ' ')]
    out = []
    if len(heads) != 1: return [f"{len(heads)} '{CHECKS}' sections (one is wanted)"]
    md = [i for i, c in enumerate(cs) if c['cell_type'] == 'markdown']
    last = cs[md[-1]]['source'].lstrip() if md else ''
    if not last.startswith(SUMMARY): out.append(f"the last Markdown cell is not '{SUMMARY}'")
    summary = md[-1] if md else len(cs)
    if summary < heads[0]: out.append(f"'{SUMMARY}' comes before '{CHECKS}'")
    if any(is_proof(c) for c in cs[summary + 1:]): out.append(f"cells that assert come after '{SUMMARY}'")
    before = [c for c in cs[:heads[0]] if c['cell_type'] in ('code', 'markdown')
              and not {'hide', 'default_exp'} & directives(c['source']).keys()]
    proof = sum(map(is_proof, before)); teach = len(before) - proof
    if teach < 3 * proof: out.append(f"before '{CHECKS}': {teach} teaching cells for {proof} proof cells (3:1 wanted)")
    return out


@pytest.mark.parametrize('nb', LESSONS, ids=lambda p: p.stem)
def test_lesson_shape(nb):
    assert not shape_problems(cells(nb)), shape_problems(cells(nb))


def test_the_shape_check_can_fail():
    md = lambda s: dict(cell_type='markdown', source=s)
    code = lambda s: dict(cell_type='code', source=s)
    good = [md('# T'), code('x = 1'), md('text'), code('y = 2'), code('assert x == 1'), md('more'), code('z = 3'),
            md('## Checks\nparity'), code('test_eq(x, 1)'), md('## What we learned\n- x')]
    assert shape_problems(good) == []
    assert shape_problems(good[:-1])                                        # no closing summary
    assert shape_problems([c for c in good if not c['source'].startswith('## Checks')])   # no checks section
    assert shape_problems(good[:1] + [code('assert 1')] * 3 + good[7:])     # proof drowns the build-up


# ---- no lab diary in the lessons ------------------------------------------------------------------------------------
_MONTHS = r'(?:January|February|March|April|May|June|July|August|September|October|November|December)'
HISTORY = [
    (r'\b20\d\d-\d\d-\d\d\b', 'a date'),
    (rf'\b\d{{1,2}} {_MONTHS} 20\d\d\b|\b{_MONTHS} \d{{1,2}},? 20\d\d\b', 'a date'),
    (r'\b[Ii]ssues? #?\d+', 'an issue number'),
    (r'\bload average\b|\bload of \d', 'machine load'),
    (r'\b(busy|quiet|shared|loaded|idle)\s+(build\s+)?machine', 'a busy/quiet/shared machine'),
    (r"\banother engineer'?s?\b|\bother (engineers|jobs|sessions)\b", 'who else was using the machine'),
    (r'\b(superseded|earlier measurement|previously measured|used to (take|be))\b', 'how a figure changed'),
]


_re_elsewhere = re.compile(r'\b(diffusers|transformers|pytorch|torch|github|peft|kohya)\b', re.I)   # another project's issue

def history_in(text: str) -> list[str]:
    "The history patterns found in a piece of lesson prose: ['a date: 2026-11-23', ...] (another project's issue is a citation)."
    return [f"{what}: {m.group(0)!r}" for pat, what in HISTORY for m in re.finditer(pat, text)
            if not (what == 'an issue number' and _re_elsewhere.search(text[max(0, m.start() - 60):m.start()]))]


@pytest.mark.parametrize('nb', sorted(NBS.glob('*.ipynb')), ids=lambda p: p.stem)
def test_no_lab_diary(nb):
    found = [f"cell {i}: {h}" for i, c in enumerate(cells(nb)) if c['cell_type'] == 'markdown' for h in history_in(c['source'])]
    assert not found, f"{nb.name} tells history (it belongs in benchmarks/README.md): {found}"


def test_the_history_check_can_fail():
    assert history_in("Measured on 2026-11-23 on the course's shared build machine, load average about 14.") == [
        "a date: '2026-11-23'", "machine load: 'load average'", "a busy/quiet/shared machine: 'shared build machine'"]
    assert history_in("Issue 17 asks for a faster toy; on a quiet machine it took 5 minutes (superseded).")
    assert history_in("the toy draws the asked colour 100% of the time, in 310x the reference workload") == []
    assert history_in("as diffusers' train_text_to_image does (its issue #5654)") == []       # a citation, not our history


# ---- saved outputs are today's: show_doc cards ------------------------------------------------------------------------
def _card_text(md: str) -> str:
    """What a show_doc card states: its title, its signature (names, types, defaults; without the `# comments`, which
    fastcore finds for a class in the library but not for one defined in a notebook, and without layout) and its text.
    The source link is left out (it depends on where the package is installed)."""
    md = re.sub(r'^\[source\]\([^)]*\)(\{[^}]*\})?\s*$', '', md, flags=re.M)
    def signature(m):
        code = '\n'.join(re.sub(r'\s+#\s.*$', '', l) for l in m.group(1).splitlines())
        return 'SIGNATURE ' + re.sub(r',\)', ')', re.sub(r'\s+', '', code))
    md = re.sub(r'```python\n(.*?)```', signature, md, flags=re.S)
    return '\n'.join(l.rstrip() for l in md.splitlines() if l.strip() and l.strip() != '---')


def stale_cards(path: Path) -> list[str]:
    "The `show_doc` cells of a notebook whose saved card differs from the card the library renders now."
    from nbdev.showdoc import show_doc
    cs = cells(path)
    mod = next((directives(c['source'])['default_exp'].split()[1] for c in cs if 'default_exp' in directives(c['source'])), None)
    spaces = [vars(importlib.import_module(f'sd_scratch.{mod}'))] if mod else []
    spaces += [vars(importlib.import_module(f'sd_scratch.{p.stem}')) for p in sorted((REPO/'sd_scratch').glob('[a-z]*.py'))]
    out = []
    for i, c in enumerate(cs):
        m = re.fullmatch(r'\s*show_doc\(([\w.]+)(?:,\s*name=([\'"])([\w.]+)\2)?\)\s*;?\s*', c['source']) if c['cell_type'] == 'code' else None
        if not m: continue
        saved = [''.join(o['data']['text/markdown']) for o in c.get('outputs', []) if 'text/markdown' in o.get('data', {})]
        if not saved: out.append(f"cell {i} {m.group(1)}: no saved card (run the notebook)"); continue
        obj = next((eval(m.group(1), dict(ns)) for ns in spaces if m.group(1).split('.')[0] in ns), None)
        if obj is None: out.append(f"cell {i}: {m.group(1)} is not in the library"); continue
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            live = show_doc(obj, name=m.group(3)) if m.group(3) else show_doc(obj)
        if _card_text(saved[0]) != _card_text(live._repr_markdown_()):
            out.append(f"cell {i}: the saved card of {m.group(1)} is not what the library renders now")
    return out


@pytest.mark.parametrize('nb', LESSONS, ids=lambda p: p.stem)
def test_show_doc_cards_are_fresh(nb):
    pytest.importorskip('nbdev')
    assert not stale_cards(nb), stale_cards(nb)


def test_the_card_check_can_fail(tmp_path):
    pytest.importorskip('nbdev')
    from nbdev.showdoc import show_doc
    from sd_scratch.core import atomic_write
    card = show_doc(atomic_write)._repr_markdown_()
    def nb_with(md):
        nb = dict(cells=[dict(cell_type='code', source='#| default_exp core', outputs=[]),
                         dict(cell_type='code', source='show_doc(atomic_write)', outputs=[dict(data={'text/markdown': md})])])
        (tmp_path/'x.ipynb').write_text(json.dumps(nb)); return tmp_path/'x.ipynb'
    assert stale_cards(nb_with(card)) == []
    assert stale_cards(nb_with(card.replace('overwrite', 'clobber')))      # an old signature is caught
    assert stale_cards(nb_with(card.replace('=True', '=False')))            # and an old default
    assert stale_cards(nb_with(re.sub(r'\s+#\s.*', '', card))) == []        # not the comments (a notebook's dataclass lacks them)


# ---- cross-references hold ---------------------------------------------------------------------------------------
def lesson_stems() -> set: return {p.stem for p in NBS.glob('*.ipynb')}


def _numbers() -> dict:
    "'07c' -> '07c_recipes': the number each lesson is known by in prose."
    return {s.split('_')[0]: s for s in lesson_stems() if s != 'index'}


def defined_names(cs: list[dict]) -> dict:
    "name -> index of the cell that first defines it (a def or a class), in one notebook."
    out = {}
    for i, c in enumerate(cs):
        if c['cell_type'] != 'code': continue
        src = '\n'.join(l for l in c['source'].splitlines() if not l.lstrip().startswith(('#|', '%', '!')))
        try: tree = ast.parse(src)
        except SyntaxError: continue
        for node in tree.body:                       # (not plain variables: `toy` may be a variable and a recipe's name)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)): out.setdefault(node.name, i)
    return out


def crossref_problems(cs: list[dict], stems: set | None = None) -> list[str]:
    "Lessons named in prose that do not exist, and names said to be above / below that are not defined there."
    stems = lesson_stems() if stems is None else stems
    numbers = {s.split('_')[0]: s for s in stems if s != 'index'}
    defs, out = defined_names(cs), []
    for i, c in enumerate(cs):
        if c['cell_type'] != 'markdown': continue
        text = re.sub(r'```.*?```', '', c['source'], flags=re.S)
        for m in re.finditer(r'\b(?:[Ll]essons?|[Nn]otebooks?)\s+((?:\d\d[a-z]?(?:,\s*|\s+and\s+|\s*/\s*|\s+or\s+)?)+)', text):
            for num in re.findall(r'\d\d[a-z]?', m.group(1)):
                if num not in numbers: out.append(f"cell {i}: lesson {num} does not exist")
        for m in re.finditer(r'\b(\d\d[a-z]?_[a-z0-9_]+)\b(\.\w+)?', text):   # a notebook's name (not an image's, 07_x.png)
            if m.group(2) not in (None, '.ipynb') or m.group(1) in stems: continue
            num = m.group(1).split('_')[0]
            out.append(f"cell {i}: {m.group(1)} is not a notebook" + (f" (lesson {num} is {numbers[num]})" if num in numbers else ''))
        for sentence in re.split(r'(?<=[.;:!?])\s+', text):
            where = re.findall(r'\b(above|below)\b', sentence)
            if len(set(where)) != 1: continue
            for name in re.findall(r'`([A-Za-z_]\w*)(?:\(\))?`', sentence):
                if name not in defs: continue
                if where[0] == 'above' and defs[name] > i: out.append(f"cell {i}: `{name}` is said to be above but is defined below")
                if where[0] == 'below' and defs[name] < i: out.append(f"cell {i}: `{name}` is said to be below but is defined above")
    return out


@pytest.mark.parametrize('nb', sorted(NBS.glob('*.ipynb')), ids=lambda p: p.stem)
def test_cross_references(nb):
    assert not crossref_problems(cells(nb)), crossref_problems(cells(nb))


def test_the_crossref_check_can_fail():
    md = lambda s: dict(cell_type='markdown', source=s)
    code = lambda s: dict(cell_type='code', source=s)
    stems = {'04_unet', '07c_recipes', 'index'}
    assert crossref_problems([md('As lesson 04 showed; see 07c_recipes.'), code('def f(): pass'), md('`f` above.')], stems) == []
    assert crossref_problems([md('As lesson 12 showed.')], stems) == ['cell 0: lesson 12 does not exist']
    assert crossref_problems([md('See 07c_training.')], stems)
    assert crossref_problems([md('`f`, defined below, ...'), code('def f(): pass'), md('and `f` below.')], stems) == [
        'cell 2: `f` is said to be below but is defined above']


# ---- short cells, short lines ------------------------------------------------------------------------------------
def long_cells(cs: list[dict]) -> list[str]:
    return [f"cell {i}: {n} lines" for i, c in enumerate(cs)
            if c['cell_type'] == 'code' and (n := len(c['source'].splitlines())) > MAX_CELL_LINES]


@pytest.mark.parametrize('nb', sorted(NBS.glob('*.ipynb')), ids=lambda p: p.stem)
def test_no_long_code_cells(nb):
    assert not long_cells(cells(nb)), f"{nb.name}: code cells over {MAX_CELL_LINES} lines: {long_cells(cells(nb))}"


def long_lines(text: str) -> list[int]:
    "Line numbers over MAX_LINE characters, outside `__all__`."
    out, in_all = [], False
    for n, l in enumerate(text.splitlines(), 1):
        if l.startswith('__all__'): in_all = True
        if len(l) > MAX_LINE and not in_all: out.append(n)
        if in_all and l.rstrip().endswith(']'): in_all = False
    return out


def test_no_long_library_lines():
    bad = {p.name: long_lines(p.read_text()) for p in sorted((REPO/'sd_scratch').glob('*.py')) if not p.name.startswith('_')}
    bad = {k: v for k, v in bad.items() if v}
    assert not bad, f"lines over {MAX_LINE} characters (write them shorter in the notebook): {bad}"


def test_the_length_checks_can_fail():
    assert long_cells([dict(cell_type='code', source='x = 1\n' * (MAX_CELL_LINES + 1))]) == [f'cell 0: {MAX_CELL_LINES + 1} lines']
    assert long_lines("__all__ = ['" + 'a' * 200 + "']\nx = 1\n" + 'y' * (MAX_LINE + 1)) == [3]
