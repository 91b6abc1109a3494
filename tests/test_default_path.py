"""The Run All path of the notebooks that have `#| slow` cells.

CI runs every cell of a notebook with slow cells once, under `nbdev_test --flags slow`, instead of once without the flag
and again with it: the slow pass runs every default cell too. What that pass cannot see is the path a learner's Run All
takes, where each long cell is skipped (`core.long_cells` says so and returns False): a later cell that reads a name only
a long cell defines would fail there. This test finds such names statically in every notebook, and shows that it can fail.
"""
import ast, builtins, json, re
from pathlib import Path
import pytest

NBS = Path(__file__).resolve().parent.parent/'nbs'

def cells(path):
    "(kind, source) of each code cell: kind 'skip' for eval: false / notest cells, 'slow' for slow cells, else 'default'."
    out = []
    for c in json.loads(Path(path).read_text())['cells']:
        if c['cell_type'] != 'code': continue
        src = ''.join(c['source'])
        dirs = {m.group(1) for m in re.finditer(r'^#\|\s*([\w:-]+)', src, re.M)}
        evalf = re.search(r'^#\|\s*eval:\s*false', src, re.M | re.I)
        kind = 'skip' if evalf or 'notest' in dirs or 'cuda' in dirs else 'slow' if 'slow' in dirs else 'default'
        out.append((kind, src))
    return out

def parse(src):
    "The cell as Python: IPython magics and shell lines become `pass`."
    lines = ['pass' if l.lstrip().startswith(('%', '!')) else l for l in src.splitlines()]
    return ast.parse('\n'.join(lines))

def bound(tree):
    "Names a cell binds at any depth: assignments, loop/with targets, defs, classes, imports, except-as, walrus."
    names = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.Name) and isinstance(n.ctx, (ast.Store, ast.Del)): names.add(n.id)
        elif isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)): names.add(n.name)
        elif isinstance(n, (ast.Import, ast.ImportFrom)):
            for a in n.names: names.add((a.asname or a.name).split('.')[0])
        elif isinstance(n, ast.ExceptHandler) and n.name: names.add(n.name)
        elif isinstance(n, ast.arg): names.add(n.arg)
    return names

def loaded(tree): return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}

def slow_only_names(path):
    "[(cell number, name)] for each default cell that reads a name bound so far only by slow cells."
    seen_default, seen_slow, problems = set(dir(builtins)) | {'get_ipython', 'display'}, set(), []
    for i, (kind, src) in enumerate(cells(path)):
        if kind == 'skip': continue
        tree = parse(src)
        if kind == 'slow': seen_slow |= bound(tree); continue
        for name in sorted(loaded(tree) - bound(tree) - seen_default):
            if name in seen_slow: problems.append((i, name))
        seen_default |= bound(tree)
    return problems

SLOW_NBS = sorted(p.name for p in NBS.glob('*.ipynb') if any(k == 'slow' for k, _ in cells(p)))

def test_there_are_notebooks_with_slow_cells(): assert len(SLOW_NBS) >= 5, SLOW_NBS

@pytest.mark.parametrize('nb', SLOW_NBS)
def test_run_all_never_reads_a_name_only_a_long_cell_defines(nb):
    assert slow_only_names(NBS/nb) == [], f"{nb}: these default cells read names only a #| slow cell defines (cell, name)"

def test_the_check_can_fail(tmp_path):
    def code(src): return dict(cell_type='code', source=src, metadata={}, outputs=[], execution_count=None)
    nb = dict(cells=[code('a = 1'), code("#| slow\nif long_cells(False, 'x'):\n    b = a + 1"), code('print(a, b)')])
    (tmp_path/'t.ipynb').write_text(json.dumps(nb))
    assert slow_only_names(tmp_path/'t.ipynb') == [(2, 'b')]
    nb['cells'].insert(2, code('b = 0'))                       # defined on the default path too: fine
    (tmp_path/'t.ipynb').write_text(json.dumps(nb))
    assert slow_only_names(tmp_path/'t.ipynb') == []
