"""Re-execute notebooks in place, as a learner's *Run All* would, so their saved outputs come from today's code.

    python docs/execute_notebooks.py nbs/04_unet.ipynb [nbs/05_ddpm_ddim.ipynb ...]

Each notebook runs top to bottom in a fresh `python3` kernel started in nbs/, with a learner's environment: no
`IN_TEST` (nbdev_test's flag), no `SD_SCRATCH_LONG_CELLS`, matplotlib's inline backend, so long (`slow`) cells print
that they were skipped and `cuda` cells explain that there is no GPU. The outputs are written back into the notebook
(under a temporary name, then renamed), then `nbdev_clean` strips execution counts and metadata. A cell that raises
stops the run and leaves the notebook as it was. The site (docs/build_site.py) publishes these saved outputs.
"""
from __future__ import annotations
import argparse, os, subprocess, sys, time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def execute(path: Path, timeout: int = 3600) -> float:
    "Run one notebook in place; returns its wall seconds."
    import nbformat
    from nbclient import NotebookClient
    env_drop = ('IN_TEST', 'SD_SCRATCH_LONG_CELLS', 'MPLBACKEND')
    saved = {k: os.environ.pop(k) for k in env_drop if k in os.environ}
    try:
        nb = nbformat.read(path, as_version=4)
        t0 = time.time()
        NotebookClient(nb, timeout=timeout, kernel_name='python3', resources={'metadata': {'path': str(path.parent)}},
                       record_timing=False).execute()
        seconds = time.time() - t0
    finally:
        os.environ.update(saved)
    nb.metadata.pop('widgets', None)          # the widgets' saved state (base64 pictures): large, and stale the moment it is opened
    tmp = path.with_name(f'.{path.name}.tmp')
    nbformat.write(nb, tmp)
    os.replace(tmp, path)
    subprocess.run(['nbdev_clean', '--fname', str(path)], check=True, cwd=REPO)
    return seconds


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('notebooks', nargs='+', type=Path)
    ap.add_argument('--timeout', type=int, default=3600, help='seconds one cell may take')
    a = ap.parse_args(argv)
    for p in a.notebooks:
        print(f"{p}: {execute(p.resolve(), a.timeout):.0f} s", flush=True)


if __name__ == '__main__': main()
