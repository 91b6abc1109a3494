"""The data chain of the full run (lesson 08a), offline: synthetic LAION-style metadata -> filtered parquet -> img2dataset's
WebDataset tars (img2dataset in its own environment, the pictures served from 127.0.0.1, with a 404, a page that is not a
picture, half a JPEG and a server too slow among them) -> latent shards (`sd_scratch data`) -> 2 training steps
(`sd_scratch train`), the counts asserted at each step; then the same commands again, and every step resumes.

img2dataset's environment is built on first use (`build_img2dataset_env`: PyPI, about a minute) at
`default_img2dataset_venv()`; set SD_SCRATCH_IMG2DATASET_VENV to put it elsewhere."""
import io, json, math, subprocess, sys, tarfile, time
from pathlib import Path
import pytest
from PIL import Image
import pyarrow.parquet as pq
from sd_scratch.data_chain import (URL_FAILURES, build_img2dataset_env, chain_commands, filter_table, img2dataset_stats, main,
                                   read_filter_record, run_chain, serve_folder, synthetic_laion, write_site)


def plain_counts(rows: list, min_aesthetic: float = 6.5) -> tuple:
    "The reference run's tests written again row by row: (URLs kept, rows left after each test)."
    tests = [lambda r: r['TEXT'] is not None and 5 <= len(r['TEXT']) <= 1000, lambda r: r['WIDTH'] >= 512 and r['HEIGHT'] >= 512,
             lambda r: r['pwatermark'] < 0.5, lambda r: r['punsafe'] < 0.1, lambda r: r['aesthetic'] >= min_aesthetic]
    counts = [len(rows)]
    for ok in tests: rows = [r for r in rows if ok(r)]; counts.append(len(rows))
    urls = list(dict.fromkeys(r['URL'] for r in rows))                         # the first row of each URL, in order
    return urls, counts + [len(urls)]


def cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, '-m', 'sd_scratch.data_chain', *map(str, args)], capture_output=True, text=True, timeout=300)


def test_the_filter_command(tmp_path, capsys):
    "`python -m sd_scratch.data_chain synthetic` and `filter`: the counts of a plain-Python count; a second run does nothing; other tests are refused."
    r = cli('synthetic', tmp_path/'meta.parquet', '--rows', 300)
    assert r.returncode == 0 and 'SYNTHETIC' in r.stdout, r.stderr
    rows = pq.read_table(tmp_path/'meta.parquet').to_pylist()
    urls, counts = plain_counts(rows)
    r = cli('filter', tmp_path/'meta.parquet', tmp_path/'keep.parquet')
    assert r.returncode == 0, r.stderr
    assert [n for _, n in read_filter_record(tmp_path/'keep.parquet')['counts']] == counts
    assert pq.read_table(tmp_path/'keep.parquet').column('URL').to_pylist() == urls

    def run(*args) -> tuple:                                                  # the same command in this process (quicker)
        try: main([str(a) for a in args]); code = 0
        except SystemExit as e: code = e.code
        out = capsys.readouterr(); return code, out.out, out.err
    stamp = (tmp_path/'keep.parquet').stat().st_mtime_ns
    code, out, _ = run('filter', tmp_path/'meta.parquet', tmp_path/'keep.parquet')
    assert code == 0 and out == r.stdout and (tmp_path/'keep.parquet').stat().st_mtime_ns == stamp   # nothing done
    code, _, err = run('filter', tmp_path/'meta.parquet', tmp_path/'keep.parquet', '--min-aesthetic', 6)
    assert code == 2 and 'other tests or sources' in err and 'Traceback' not in err, err
    code, _, err = run('filter', tmp_path/'meta.parquet', tmp_path/'loose.parquet', '--min-aesthetic', 6, '--keep-duplicate-urls')
    assert code == 0, err
    record = read_filter_record(tmp_path/'loose.parquet')
    assert record['filter']['min_aesthetic'] == 6 and not record['filter']['unique_urls']
    assert [n for _, n in record['counts']] == plain_counts(rows, 6.0)[1][:-1]
    code, _, err = run('filter', tmp_path/'nothing_here', tmp_path/'x.parquet')
    assert code == 2 and 'not found' in err
    code, _, err = run('filter', tmp_path/'meta.parquet', tmp_path/'y.parquet', '--min-side', 'big')
    assert code == 2 and '--min-side' in err


@pytest.mark.slow
def test_the_chain_end_to_end(tmp_path):
    t0 = time.time()
    build_img2dataset_env(quiet=True)                                         # (built once, then found)
    print(f"img2dataset's environment: {time.time() - t0:.0f} s")
    kept, counts = filter_table(synthetic_laion(200))
    n = counts[-1][1]                                                          # the rows worth downloading
    good = n - len(URL_FAILURES)                                               # all but the four broken URLs
    write_site(tmp_path/'site', kept)
    (tmp_path/'metadata').mkdir()
    recipe = tmp_path/'two_steps.json'
    recipe.write_text(json.dumps({'base': 'toy', 'train': {'steps': 2, 'batch_size': 4}}))
    work = tmp_path/'work'
    with serve_folder(tmp_path/'site', delay=4) as url:
        meta = synthetic_laion(200, url)                                       # the same rows, under the server's address
        pq.write_table(meta, tmp_path/'metadata'/'part-00000.parquet')
        cmds = chain_commands(tmp_path/'metadata', work, 'toy', size=64, nproc=1, recipe=recipe, processes=1, threads=8, timeout=2,
                              samples_per_shard=8)
        t0 = time.time()
        ran = run_chain(cmds, echo=False)
    print(f"the chain: {time.time() - t0:.0f} s;", {k: round(v['seconds']) for k, v in ran.items()})

    # 1. filter: the rows of a plain-Python count
    urls, plain = plain_counts(meta.to_pylist())
    assert [c for _, c in read_filter_record(work/'filtered.parquet')['counts']] == plain == [c for _, c in counts]
    assert pq.read_table(work/'filtered.parquet').column('URL').to_pylist() == urls

    # 2. img2dataset: its own counts, and the tars it wrote
    stats = img2dataset_stats(work/'tars')
    assert (stats['shards'], stats['count'], stats['successes']) == (math.ceil(n / 8), n, good), stats
    status = stats['status_dict']
    assert (status['success'], status['Image decoding error'], status['timed out']) == (good, 2, 1), status   # HTML, half a JPEG; slow
    assert sum(v for k, v in status.items() if '404' in k) == 1, status
    filtered = pq.read_table(work/'filtered.parquet')
    captions = dict(zip(filtered.column('URL').to_pylist(), filtered.column('TEXT').to_pylist()))   # (one row per URL)
    samples = {}
    for tar in sorted((work/'tars').glob('*.tar')):
        with tarfile.open(tar) as t:
            for m in t.getmembers():
                key, ext = m.name.split('.', 1)
                samples.setdefault((tar.name, key), {})[ext] = t.extractfile(m).read()
    assert len(samples) == good and all(set(s) == {'jpg', 'txt', 'json'} for s in samples.values())
    for s in samples.values():
        info = json.loads(s['json'])
        assert Image.open(io.BytesIO(s['jpg'])).size == (64, 64)
        assert s['txt'].decode() == captions[info['url']] and info['status'] == 'success'
        assert info['aesthetic'] >= 6.5 and info['punsafe'] < 0.1 and info['pwatermark'] < 0.5   # the scores are kept
        assert '/photo/' in info['url']                                        # only the photos came through

    # 3. sd_scratch data: one latent per picture
    data = json.loads((work/'data'/'data.json').read_text())
    assert data['done'] and (data['stats']['seen'], data['stats']['written']) == (good, good), data
    from sd_scratch.shards import LatentShardDataset
    latents = list(LatentShardDataset(work/'data'/'latents', rank=0, world_size=1))
    assert len(latents) == good and {tuple(z.shape) for z, _ in latents} == {(4, 16, 16)}   # the toy VAE halves twice
    assert {c for _, c in latents} <= set(captions.values())

    # 4. sd_scratch train: two steps on them
    assert json.loads(ran['train']['stdout'].strip().splitlines()[-1])['step'] == 2
    assert (work/'run'/'checkpoint.safetensors').is_file() and (work/'run'/'unet.safetensors').is_file()

    # 5. the same commands again: every step resumes, nothing is made twice
    made = [work/'filtered.parquet', *sorted((work/'tars').glob('*')), *sorted((work/'data').rglob('*.tar')),
            work/'run'/'checkpoint.safetensors']
    before = {p: p.stat().st_mtime_ns for p in made}
    again = run_chain(cmds, echo=False)
    assert {p: p.stat().st_mtime_ns for p in made} == before
    assert img2dataset_stats(work/'tars') == stats
    assert json.loads(again['train']['stdout'].strip().splitlines()[-1])['step'] == 2
    assert 'already' in again['env']['stdout']
