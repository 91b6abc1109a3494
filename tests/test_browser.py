"""Run All in a real JupyterLab, driven through headless Chromium, as a learner would press it.

`nbdev_test` runs notebooks with its own executor and skips `slow` and `cuda` cells; JupyterLab knows nothing of
those flags and renders widgets in a browser. This test starts `jupyter lab` on a free local port, opens notebooks in
Debian's `chromium` (driven by `playwright` through `executable_path`: playwright's own browser download is not
reachable here), runs all cells and checks:
- the notebook opens straight into its kernel (no "Select Kernel" dialog: the notebooks carry kernelspec metadata);
- every code cell ran and none has an error output;
- every widget the notebook displays is drawn by the browser (no "Error displaying widget");
- nothing was written into the copied repo's tracked files.

Needs `apt-get install chromium` and `pip install playwright` (.ci/run does both). Where they are missing the test is
skipped, unless SD_SCRATCH_REQUIRE_BROWSER=1 (set by .ci/run), which makes a missing browser a failure.
Run one notebook by hand: `python tests/test_browser.py 06b_widgets.ipynb`.
"""
from __future__ import annotations
import json, os, shutil, socket, subprocess, sys, time, urllib.request
from pathlib import Path
import pytest

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which('chromium') or '/usr/bin/chromium'
NOTEBOOKS = ['01_clip.ipynb', '05_ddpm_ddim.ipynb', '06_cfg.ipynb', '06b_widgets.ipynb', '08_ddp.ipynb']
CHROMIUM_ARGS = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
                 '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage']


def _missing() -> str | None:
    if not Path(CHROMIUM).exists(): return f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    try: import playwright.sync_api  # noqa: F401
    except ImportError: return "playwright is not installed (pip install playwright)"
    return None


def require_browser():
    "Skip a browser test where Chromium or playwright is missing; fail instead under SD_SCRATCH_REQUIRE_BROWSER=1 (CI)."
    why = _missing()
    if why and os.environ.get('SD_SCRATCH_REQUIRE_BROWSER') == '1': pytest.fail(why)
    if why: pytest.skip(why)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


class Lab:
    "A JupyterLab server on a free local port, serving a copy of the notebooks, with every cell kept in the page."
    def __init__(self, root: Path):
        self.root, self.port = root, _free_port()
        shutil.copytree(REPO/'nbs', root/'nbs', ignore=shutil.ignore_patterns('.ipynb_checkpoints', '_proc'))
        shutil.copytree(REPO/'images', root/'images')
        (root/'benchmarks').mkdir()
        for f in (REPO/'benchmarks').glob('*.json'): shutil.copy(f, root/'benchmarks')  # the figures lessons read
        settings = root/'lab-settings'/'@jupyterlab'/'notebook-extension'
        settings.mkdir(parents=True)
        # JupyterLab 4 draws only the cells in view; 'none' puts every cell (and its outputs) in the page
        (settings/'tracker.jupyterlab-settings').write_text(json.dumps({'windowingMode': 'none'}))
        env = {k: v for k, v in os.environ.items() if k not in ('IN_TEST', 'OMP_NUM_THREADS', 'MPLBACKEND')}  # a learner's shell
        # ... on a machine of its own. CI runs this beside another lane on the other core: a kernel at torch's default of one
        # thread per core then fights that lane for it, and OpenMP's waiting makes a Run All many times slower (06 took 1,017 s
        # instead of minutes). SD_SCRATCH_LAB_THREADS caps the kernels' threads there; a learner's machine is not shared.
        if os.environ.get('SD_SCRATCH_LAB_THREADS'): env['OMP_NUM_THREADS'] = os.environ['SD_SCRATCH_LAB_THREADS']
        env.update(JUPYTERLAB_SETTINGS_DIR=str(root/'lab-settings'), JUPYTER_RUNTIME_DIR=str(root/'runtime'),
                   HOME=str(root/'home'), PYTHONUNBUFFERED='1')
        (root/'home').mkdir()
        self.log = open(root/'lab.log', 'w')
        self.proc = subprocess.Popen(
            [sys.executable, '-m', 'jupyterlab', '--no-browser', f'--port={self.port}', '--ip=127.0.0.1', '--allow-root',
             '--ServerApp.token=', '--ServerApp.password=', '--ServerApp.disable_check_xsrf=True',
             '--LabApp.expose_app_in_browser=True', f'--ServerApp.root_dir={root}', '--LabApp.news_url=',
             '--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate'],
            cwd=root, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self.url = f'http://127.0.0.1:{self.port}'
        for _ in range(120):
            try:
                urllib.request.urlopen(self.url + '/api/status', timeout=2); return
            except OSError: time.sleep(0.5)
            if self.proc.poll() is not None: break
        raise RuntimeError("jupyter lab did not start:\n" + (root/'lab.log').read_text()[-3000:])

    def close(self):
        self.proc.terminate()
        try: self.proc.wait(20)
        except subprocess.TimeoutExpired: self.proc.kill()
        self.log.close()


# JavaScript run in the page. `window.jupyterapp` is exposed by --LabApp.expose_app_in_browser.
OPENED = """async () => {
  const app = window.jupyterapp;
  const panel = app.shell.currentWidget;
  if (!panel || !panel.sessionContext) return {ok: false, why: 'no notebook panel'};
  const timeout = new Promise((_, reject) => setTimeout(() => reject(new Error('the notebook did not open in 60 s')), 60000));
  await Promise.race([Promise.all([panel.context.ready, panel.sessionContext.ready]), timeout]);
  const dialogs = Array.from(document.querySelectorAll('.jp-Dialog')).map(d => d.innerText.slice(0, 200));
  const k = panel.sessionContext.session && panel.sessionContext.session.kernel;
  return {ok: true, kernel: k ? k.name : null, dialogs};
}"""

STATE = """() => {
  const panel = window.jupyterapp.shell.currentWidget;
  const cells = [];
  const model = panel.content.model;
  for (let i = 0; i < model.cells.length; i++) {
    const c = model.cells.get(i);
    if (c.type !== 'code') continue;
    const outs = c.outputs.toJSON();
    cells.push({i, count: c.executionCount, src: c.sharedModel.getSource().slice(0, 80),
                errors: outs.filter(o => o.output_type === 'error').map(o => o.ename + ': ' + String(o.evalue).slice(0, 300)),
                widgets: outs.filter(o => o.data && o.data['application/vnd.jupyter.widget-view+json']).length});
  }
  const k = panel.sessionContext.session && panel.sessionContext.session.kernel;
  const text = panel.content.node.innerText;
  return {cells, status: k ? k.status : 'none', pending: panel.content.widgets.filter(w => w.promptNode && w.promptNode.innerText.includes('*')).length,
          drawn: panel.content.node.querySelectorAll('.jp-OutputArea-output .jupyter-widgets').length,
          widgetErrors: (text.match(/Error displaying widget|Error rendering widget/g) || []).length};
}"""


def run_all(page, lab: Lab, nb: str, timeout: float = 900) -> dict:
    "Open `nb`, press Run All, wait until every code cell has run; the final state of its cells."
    page.goto(f'{lab.url}/lab/tree/nbs/{nb}?reset')           # ?reset: a fresh workspace, no notebook restored from before
    page.wait_for_function("nb => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;"
                           " return w && w.sessionContext && w.context.path.endsWith(nb); }", arg=nb, timeout=120_000)
    opened = page.evaluate(OPENED)
    assert opened['ok'], opened
    page.wait_for_function("() => { const s = window.jupyterapp.shell.currentWidget.sessionContext.session;"
                           " return s && s.kernel && s.kernel.status === 'idle'; }", timeout=120_000)
    t0 = time.time()
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
    while True:
        time.sleep(2)
        st = page.evaluate(STATE)
        done = all(c['count'] is not None for c in st['cells']) and st['pending'] == 0 and st['status'] == 'idle'
        if done or any(c['errors'] for c in st['cells']) or time.time() - t0 > timeout: break
    time.sleep(1); st = page.evaluate(STATE)           # let the last outputs and widget views settle
    st.update(opened=opened, seconds=round(time.time() - t0, 1), timed_out=time.time() - t0 > timeout)
    return st


def _tracked_changes() -> list[str]:
    out = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=all'], cwd=REPO, capture_output=True, text=True)
    return sorted(out.stdout.splitlines())


@pytest.fixture(scope='module')
def browser(tmp_path_factory):
    require_browser()
    from playwright.sync_api import sync_playwright
    lab = Lab(tmp_path_factory.mktemp('lab'))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try: yield browser, lab
        finally:
            browser.close(); lab.close()


@pytest.mark.slow
@pytest.mark.parametrize('nb', NOTEBOOKS)
def test_run_all_in_jupyterlab(browser, nb):
    browser, lab = browser
    before = _tracked_changes()
    context = browser.new_context(viewport={'width': 1400, 'height': 1000})   # a new tab, as if the learner opened it fresh
    try: st = run_all(context.new_page(), lab, nb)
    finally: context.close()
    print(f"{nb}: {len(st['cells'])} code cells in {st['seconds']} s, {st['drawn']} widgets drawn")
    assert st['opened']['kernel'] == 'python3' and not st['opened']['dialogs'], st['opened']   # no "Select Kernel" dialog
    errors = [(c['i'], c['src'], c['errors']) for c in st['cells'] if c['errors']]
    assert not errors, f"{nb}: error outputs in JupyterLab: {errors}"
    assert not st['timed_out'], f"{nb}: Run All did not finish in time; cells not run: " + \
        str([(c['i'], c['src']) for c in st['cells'] if c['count'] is None][:5])
    n_widgets = sum(c['widgets'] for c in st['cells'])
    assert st['widgetErrors'] == 0, f"{nb}: a widget failed to render"
    assert st['drawn'] >= n_widgets, f"{nb}: {n_widgets} widget outputs but {st['drawn']} drawn"
    if nb in ('01_clip.ipynb', '05_ddpm_ddim.ipynb', '06b_widgets.ipynb'): assert n_widgets >= 1, f"{nb} should show its widgets"
    assert _tracked_changes() == before, "running the notebook changed files in the repo"
    # the copy the server ran from holds no run folders or figures either: running wrote only to temporary folders
    assert not list((lab.root/'nbs').glob('runs')), "a notebook made a runs/ folder next to itself"


if __name__ == '__main__':                        # python tests/test_browser.py 06b_widgets.ipynb [...]
    import tempfile
    from playwright.sync_api import sync_playwright
    with tempfile.TemporaryDirectory() as d, sync_playwright() as p:
        lab = Lab(Path(d))
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            for nb in sys.argv[1:] or NOTEBOOKS:
                st = run_all(browser.new_context(viewport={'width': 1400, 'height': 1000}).new_page(), lab, nb)
                print(nb, {k: v for k, v in st.items() if k != 'cells'})
                for c in st['cells']:
                    if c['errors'] or c['count'] is None: print('  ', c)
        finally:
            browser.close(); lab.close()
