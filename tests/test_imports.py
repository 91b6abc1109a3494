"""The house rule of the course, checked from outside: the import graph of `sd_scratch` follows the lessons.

Each module is exported by one notebook (its header says which); notebooks run in the order of their file names. A module
may import what an earlier lesson exported, never a later one, and an import inside a function counts too, so the
graph has no circle. Every module also stays one idea: under about 700 lines.
"""
import ast, re
from pathlib import Path

PKG = Path(__file__).resolve().parents[1]/'sd_scratch'


def _lessons() -> dict:
    "module name -> its notebook's file name (e.g. 'train' -> '07c_recipes.ipynb')."
    out = {}
    for p in PKG.glob('*.py'):
        m = re.search(r"File to edit: \.\./nbs/(\S+\.ipynb)", p.read_text())
        if m: out[p.stem] = m.group(1)
    return out


def _imports(path: Path) -> set:
    "Every sd_scratch module a file imports, at any depth (inside functions too)."
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            mod = node.module or ''
            if node.level == 1: found.add(mod.split('.')[0] if mod else None)
            elif mod.startswith('sd_scratch.'): found.add(mod.split('.')[1])
            elif mod == 'sd_scratch': found.update(a.name for a in node.names)
            if node.level == 1 and not mod: found.update(a.name for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name.split('.')[1] for a in node.names if a.name.startswith('sd_scratch.'))
    return {m for m in found if m}


def test_every_module_has_a_lesson():
    lessons = _lessons()
    modules = {p.stem for p in PKG.glob('*.py') if not p.stem.startswith('_')}
    assert modules == set(lessons), modules ^ set(lessons)


def test_no_module_imports_a_later_lesson():
    lessons = _lessons()
    bad = []
    for mod, nb in lessons.items():
        for dep in _imports(PKG/f'{mod}.py'):
            if dep not in lessons: continue                      # e.g. _modidx
            if dep != mod and lessons[dep] >= nb: bad.append(f"{mod} ({nb}) imports {dep} ({lessons[dep]})")
    assert not bad, bad


def test_modules_are_one_idea():
    long = {p.name: n for p in PKG.glob('*.py') if not p.name.startswith('_') and (n := len(p.read_text().splitlines())) > 720}
    assert not long, long


def test_the_checker_can_fail(tmp_path):
    "The import scan finds imports inside functions and relative ones (a checker that finds nothing proves nothing)."
    p = tmp_path/'m.py'
    p.write_text("from .core import x\ndef f():\n    from sd_scratch.lora import load_lora\n    import sd_scratch.train\n")
    assert _imports(p) == {'core', 'lora', 'train'}


def test_later_lessons_methods_are_there_whatever_is_imported_first():
    "A fresh interpreter that imports only the pipeline gets 07b's `load_lora` (the package imports the modules that patch)."
    import subprocess, sys
    code = ("from sd_scratch.pipeline import StableDiffusion\n"
            "sd = StableDiffusion.from_pretrained('toy'); sd.load_lora('data/toy_star_lora.safetensors', scale=0.5); sd.unload_lora()\n"
            "print('ok')")
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=PKG.parent, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == 'ok', r.stderr[-2000:]


def test_later_lessons_recipes_are_there_whatever_is_imported_first():
    "A fresh interpreter that imports only lesson 07c's module knows 07f's and 07g's recipes (the package imports their modules)."
    import subprocess, sys
    code = "from sd_scratch.train import RECIPES, load_run_config\nprint(load_run_config('inpaint_toy').model, load_run_config('control_toy').model)"
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=PKG.parent, timeout=300)
    assert r.returncode == 0 and r.stdout.split() == ['inpainting_unet', 'controlnet'], r.stderr
