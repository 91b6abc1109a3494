"""Nothing lost, nothing silent, round three (issue 31): the pictures people really have, and folders that change under you.

Each test is one item of the issue, tried as a user would (`sd_scratch data` / `train` / `generate`, run in this process through
`sd_scratch.cli.main`), and each failed before its fix. About a minute on 2 CPU cores (the shipped toy model, the `tiny` recipe).
"""
import io, json, os, struct, tarfile, threading, time, zlib
from pathlib import Path
import numpy as np, pytest, torch
from PIL import Image
from sd_scratch.cli import main
from sd_scratch.data import render_shape
from sd_scratch.shards import LatentShardDataset, write_image_shards
from sd_scratch.sources import iter_tar_shards


def run(capsys, *args) -> tuple:
    "(exit code, stdout, stderr) of `sd_scratch ARGS` run in this process."
    capsys.readouterr()
    try: code = main([str(a) for a in args]) or 0
    except SystemExit as e: code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def refused(capsys, *args, words=()):
    "Exit code 2 and one line naming the problem, no traceback."
    code, out, err = run(capsys, *args)
    assert code == 2 and 'Traceback' not in err and len(err.strip().splitlines()) == 1, (code, err[-2000:])
    for w in words: assert w in err, (w, err)
    return err


def picture(folder, name, caption='a red circle on a blue background', size=80, im=None):
    "Save a picture (a drawn shape, or `im`) and its caption beside it."
    p = Path(folder)/name; p.parent.mkdir(parents=True, exist_ok=True)
    (im or render_shape('red', 'circle', 'blue', size=size)).save(p)
    if caption is not None: p.with_suffix('.txt').write_text(caption)
    return p


def data(capsys, src, out, *extra):
    code, stdout, err = run(capsys, 'data', src, out, '--no-progress', '--samples-per-shard', 2, *extra)
    assert code == 0, err[-3000:]
    return json.loads((Path(out)/'data.json').read_text()), stdout


def skipped(doc) -> dict: return {s['file']: s['reason'] for s in doc['skipped']}


def shard_images(source, tmp_path, **kw):
    "The training images `write_image_shards` makes of `source` (the same reading path as `sd_scratch data`), by key."
    write_image_shards(source, tmp_path/'shards', size=64, progress=False, **kw)
    return {k.split('_', 1)[1]: Image.open(io.BytesIO(d)).convert('RGB') for k, d, *_ in iter_tar_shards(sorted((tmp_path/'shards').glob('*.tar')))}


# 1. a phone photo: EXIF orientation 6 is applied
def test_exif_orientation_is_applied(tmp_path):
    upright = render_shape('red', 'triangle', 'blue', size=96).crop((0, 16, 96, 80))      # apex up, 96 x 64
    exif = Image.Exif(); exif[0x0112] = 6                                                 # stored sideways, "rotate to view"
    (tmp_path/'src').mkdir(); upright.transpose(Image.Transpose.ROTATE_90).save(tmp_path/'src'/'phone.jpg', exif=exif, quality=95)
    (tmp_path/'src'/'phone.txt').write_text('a red triangle')
    got = np.asarray(shard_images(tmp_path/'src', tmp_path)['phone'], dtype=float)
    want = np.asarray(upright.resize((96, 64)).crop((16, 0, 80, 64)).resize((64, 64)), dtype=float)
    assert np.abs(got - want).mean() < 8, np.abs(got - want).mean()                      # upright (sideways differs by far more)
    assert np.abs(got - np.asarray(Image.fromarray(want.astype(np.uint8)).transpose(Image.Transpose.ROTATE_90), dtype=float)).mean() > 20


# 2. a 16-bit PNG keeps its range (it came out pure white)
def test_16_bit_png_is_scaled_not_white(tmp_path):
    gradient = np.tile(np.linspace(0, 65535, 80).astype(np.uint16), (80, 1))
    picture(tmp_path/'src', 'scan.png', 'a grey gradient', im=Image.fromarray(gradient))
    assert Image.open(tmp_path/'src'/'scan.png').mode.startswith('I')
    img = np.asarray(shard_images(tmp_path/'src', tmp_path)['scan'])[..., 0]
    assert img.min() < 60 and img.max() > 200 and 100 < img.mean() < 160, (img.min(), img.max(), img.mean())   # white: all 255


# 3. transparency is composited on a stated background, and counted
def test_transparency_on_white_or_the_given_background(tmp_path, capsys):
    rgba = Image.new('RGBA', (80, 80), (0, 0, 0, 0)); rgba.paste((200, 30, 30, 255), (20, 20, 60, 60))
    picture(tmp_path/'src', 'logo.png', 'a red square', im=rgba); picture(tmp_path/'src', 'plain.png')
    corner = lambda **kw: shard_images(tmp_path/'src', tmp_path, overwrite=True, **kw)['logo'].getpixel((0, 0))
    assert corner() == (255, 255, 255) and corner(background=(0, 0, 0)) == (0, 0, 0)
    doc, out = data(capsys, tmp_path/'src', tmp_path/'d')
    assert doc['stats']['transparent'] == 1 and '1 had transparency' in out
    refused(capsys, 'data', tmp_path/'src', tmp_path/'e', '--background', 'pink', words=['--background must be'])


# 4. GIF and TIFF are read; a captioned file PIL cannot open is named as unsupported, not "not in the folder"
def test_every_pil_format_read_and_others_named(tmp_path, capsys):
    for name in ('a.gif', 'b.tif', 'c.png'): picture(tmp_path/'src', name)
    (tmp_path/'src'/'d.heic').write_bytes(b'not a picture PIL opens'); (tmp_path/'src'/'d.txt').write_text('a photo')
    (tmp_path/'src'/'e.pdf').write_bytes(b'%PDF-1.4')
    (tmp_path/'src'/'metadata.jsonl').write_text(json.dumps(dict(file_name='e.pdf', text='a scan')) + '\n')
    doc, _ = data(capsys, tmp_path/'src', tmp_path/'d')
    assert doc['images'] == 3 and doc['stats']['seen'] == 5, doc['stats']
    why = skipped(doc)
    assert 'not a format PIL reads' in why['d.heic'] and 'not a picture PIL reads' in why['e.pdf'], why


def _png_header(w, h) -> bytes:
    "A PNG file that says it is w x h pixels (header only: PIL reads the size before it decodes anything)."
    def chunk(kind, data): return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data) & 0xffffffff)
    return b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', w, h, 8, 2, 0, 0, 0)) + chunk(b'IEND', b'')


# 5. a 20000 x 20000 picture is named with its size; every skipped file is named, on screen and in data.json
def test_decompression_bomb_and_skips_are_named(tmp_path, capsys):
    picture(tmp_path/'src', 'ok.png')
    (tmp_path/'src'/'huge.png').write_bytes(_png_header(20000, 20000)); (tmp_path/'src'/'huge.txt').write_text('a panorama')
    (tmp_path/'src'/'bad.png').write_bytes(b'<html>404</html>'); (tmp_path/'src'/'bad.txt').write_text('a download')
    (tmp_path/'src'/'latin.png').write_bytes((tmp_path/'src'/'ok.png').read_bytes())
    (tmp_path/'src'/'latin.txt').write_bytes('caf\xe9'.encode('latin-1'))
    doc, out = data(capsys, tmp_path/'src', tmp_path/'d')
    why = skipped(doc)
    assert '20,000 x 20,000 px' in why['huge.png'] and 'decompression-bomb' in why['huge.png'], why
    assert 'cannot be decoded' in why['bad.png'] and 'not UTF-8' in why['latin.png'], why
    assert all(name in out for name in ('huge.png', 'bad.png', 'latin.png')), out         # named on screen too


# 6, 8. a FIFO and a link to /dev/zero do not hang or crash; links that leave the source are refused, or read when asked
def test_fifos_and_links_out_of_the_source(tmp_path, capsys):
    picture(tmp_path/'src', 'ok.png')
    os.mkfifo(tmp_path/'src'/'pipe.jpg'); (tmp_path/'src'/'pipe.txt').write_text('a pipe')
    os.symlink('/dev/zero', tmp_path/'src'/'zero.jpg'); (tmp_path/'src'/'zero.txt').write_text('zeros')
    picture(tmp_path/'src', 'p.png', caption=None); os.symlink('/etc/hostname', tmp_path/'src'/'p.txt')
    picture(tmp_path/'outside', 'far.png'); os.symlink(tmp_path/'outside'/'far.png', tmp_path/'src'/'far.png')
    (tmp_path/'src'/'far.txt').write_text('a picture kept elsewhere')
    result = {}
    t = threading.Thread(target=lambda: result.update(doc=data(capsys, tmp_path/'src', tmp_path/'d')[0]), daemon=True)
    t.start(); t.join(120)
    assert 'doc' in result, "sd_scratch data hung on a FIFO or a device"
    why = skipped(result['doc'])
    assert 'not a regular file' in why['pipe.jpg'] and 'outside the source folder' in why['zero.jpg'], why
    assert 'outside the source folder' in why['p.png'] and 'outside the source folder' in why['far.png'], why
    assert result['doc']['images'] == 1
    doc, _ = data(capsys, tmp_path/'src', tmp_path/'d2', '--follow-links')                  # asked for: the linked picture is read
    assert 'far.png' not in skipped(doc) and 'zero.jpg' in skipped(doc)                     # (/dev/zero is still no regular file)


# 7. JSON nested deeper than any real metadata: refused in one line, no RecursionError
def test_deep_json_is_refused_in_a_line(tmp_path, capsys):
    picture(tmp_path/'src', 'a.png'); (tmp_path/'src'/'a.json').write_text('[' * 100_000 + ']' * 100_000)
    picture(tmp_path/'src', 'b.png', caption=None); picture(tmp_path/'src', 'c.png')
    (tmp_path/'src'/'metadata.jsonl').write_text('{"file_name": "b.png", "text": "x", "m": ' + '{"a": ' * 5000 + '1' + '}' * 5000 + '}\n')
    doc, _ = data(capsys, tmp_path/'src', tmp_path/'d', '--samples-per-shard', 1)
    assert 'nested deeper than 32' in skipped(doc)['a.png']
    buf = io.BytesIO(); render_shape('red', 'circle', 'blue').save(buf, format='PNG')
    with tarfile.open(tmp_path/'t.tar', 'w') as tar:
        for name, data_ in (('k.png', buf.getvalue()), ('k.txt', b'x'), ('k.json', b'[' * 50_000 + b']' * 50_000)):
            ti = tarfile.TarInfo(name); ti.size = len(data_); tar.addfile(ti, io.BytesIO(data_))
    (tmp_path/'tars').mkdir(); os.replace(tmp_path/'t.tar', tmp_path/'tars'/'t.tar')
    code, out, err = run(capsys, 'data', tmp_path/'tars', tmp_path/'e', '--no-progress')
    assert code == 2 and 'Traceback' not in err and 'bad_meta 1' in err, err


# 9. a re-run notices edited, deleted and added pictures: the shards and the counts follow the source
def test_rerun_follows_a_changed_folder(tmp_path, capsys):
    for i in range(4): picture(tmp_path/'src', f'{i}.png', f'picture {i}')
    doc, _ = data(capsys, tmp_path/'src', tmp_path/'d')
    assert doc['images'] == 4
    (tmp_path/'src'/'0.txt').write_text('picture 0, edited'); (tmp_path/'src'/'3.png').unlink()
    picture(tmp_path/'src', '9.png', 'picture 9')
    doc, out = data(capsys, tmp_path/'src', tmp_path/'d')
    captions = sorted(c for _, c in LatentShardDataset(tmp_path/'d'/'latents', rank=0, world_size=1))
    assert captions == ['picture 0, edited', 'picture 1', 'picture 2', 'picture 9'] and doc['images'] == 4, (captions, doc['images'])
    assert 'done again' in out


# 10. two `sd_scratch data` into one folder: the second is refused in one line
def test_a_data_folder_belongs_to_one_command(tmp_path, capsys):
    picture(tmp_path/'src', 'a.png')
    (tmp_path/'d').mkdir(); (tmp_path/'d'/'.lock').write_text(str(os.getppid()))        # another live command holds it
    refused(capsys, 'data', tmp_path/'src', tmp_path/'d', '--no-progress', words=['in use by another', 'process'])


# 11. training refuses a data folder whose command was stopped, naming the command that finishes it
def test_train_refuses_an_unfinished_data_folder(tmp_path, capsys):
    for i in range(3): picture(tmp_path/'src', f'{i}.png', f'picture {i}')
    data(capsys, tmp_path/'src', tmp_path/'d')
    doc = json.loads((tmp_path/'d'/'data.json').read_text()); doc['done'] = False
    (tmp_path/'d'/'data.json').write_text(json.dumps(doc))
    err = refused(capsys, 'train', '--config', 'lora', '--checkpoint', 'toy', '--data', tmp_path/'d', '--out', tmp_path/'run',
                  '--steps', 1, words=['not finished', 'sd_scratch data'])
    assert str(tmp_path/'src') in err


# 12. a run folder removes only the temporary files it made, never a user's
def test_a_run_keeps_the_users_tmp_files(tmp_path, capsys):
    (tmp_path/'p').mkdir(); (tmp_path/'p'/'.essay.tmp').write_text('three weeks of writing')
    code, _, err = run(capsys, 'train', '--config', 'tiny', '--out', tmp_path/'p', '--steps', 1, '--no-progress')
    assert code == 0, err[-2000:]
    assert (tmp_path/'p'/'.essay.tmp').read_text() == 'three weeks of writing'


# 13. captions longer than the text encoder reads: counted and named by `data`, said once by `train`
def test_long_captions_are_counted_and_said(tmp_path, capsys):
    for i, n in enumerate((3, 100, 140)): picture(tmp_path/'src', f'{i}.png', ' '.join(['red'] * n))
    doc, out = data(capsys, tmp_path/'src', tmp_path/'d')
    assert doc['long_captions']['count'] == 2 and doc['long_captions']['longest'] == 142, doc['long_captions']
    assert 'longer than the text encoder' in out
    code, out, err = run(capsys, 'train', '--config', 'lora', '--checkpoint', 'toy', '--data', tmp_path/'d', '--out', tmp_path/'r',
                         '--steps', 1, '--no-progress')
    assert code == 0, err[-2000:]
    assert (out + err).count('longer than the text encoder reads') == 1


# 14. when nothing is left, the error says why, with the counts
def test_nothing_left_says_why(tmp_path, capsys):
    for i in range(3): picture(tmp_path/'src', f'{i}.png', size=40)                      # all below the toy's 64 px
    refused(capsys, 'data', tmp_path/'src', tmp_path/'d', '--no-progress', words=['no picture', 'too_small 3', 'short side'])
    (tmp_path/'src2').mkdir()
    for i in range(2): render_shape('red', 'circle', 'blue', size=80).save(tmp_path/'src2'/f'{i}.png')
    (tmp_path/'src2'/'metadata.csv').write_text('file_name,caption_en\n0.png,a red circle\n')   # no text column
    refused(capsys, 'data', tmp_path/'src2', tmp_path/'d2', '--no-progress', words=['no_caption 2'])


# 15. under torchrun, the resume line is a torchrun command
def test_the_resume_line_under_torchrun(monkeypatch):
    import argparse
    from sd_scratch.cli import _interrupted
    class Stopped(KeyboardInterrupt): step, checkpoint = 99, 'runs/x/checkpoint.safetensors'
    a = argparse.Namespace(command='train', config='toy', out='runs/x', data=None, checkpoint=None, steps=None)
    assert 'Continue with: sd_scratch train --config toy --out runs/x --resume' in _interrupted(a, Stopped())
    monkeypatch.setenv('TORCHELASTIC_RUN_ID', 'x'); monkeypatch.setenv('LOCAL_WORLD_SIZE', '2')
    assert 'Continue with: torchrun --nproc_per_node 2 -m sd_scratch.cli train --config toy --out runs/x --resume' in _interrupted(a, Stopped())


# 16. the smaller ones
def test_the_smaller_items(tmp_path, capsys):
    picture(tmp_path/'src', 'a.png'); picture(tmp_path/'src', 'b.png')
    refused(capsys, 'data', tmp_path/'src', tmp_path/'src'/'out', '--no-progress', words=['inside the source'])
    assert not (tmp_path/'src'/'out').exists()                                           # nothing left inside the source
    refused(capsys, 'data', tmp_path/'src', tmp_path/'d', '--size', 0, words=['--size must be a positive multiple'])
    (tmp_path/'src'/'metadata.jsonl').write_text('{"file_name": "c.png", "text": "first"}\n{"file_name": "c.png", "text": "second"}\n')
    picture(tmp_path/'src', 'c.png', caption=None)
    with pytest.warns(UserWarning, match='the last row wins'): data(capsys, tmp_path/'src', tmp_path/'d')
    code, out, err = run(capsys, 'data', tmp_path/'src', tmp_path/'d3', '--samples-per-shard', 1)   # with progress bars
    assert code == 0 and '/3' in err, err[-1000:]                                         # the bar knows its total
    refused(capsys, 'generate', '--prompt', 'x', '--lora', 'data/toy_star_lora.safetensors:abc', '--out', tmp_path/'g',
            words=["the scale 'abc' is not a number"])
    from sd_scratch.pipeline import StableDiffusion
    from sd_scratch.convert import save_single_file
    p = save_single_file(StableDiffusion.from_pretrained('toy'), tmp_path/'sd.safetensors')
    umask = os.umask(0); os.umask(umask)
    assert p.stat().st_mode & 0o777 == 0o666 & ~umask, oct(p.stat().st_mode)


# 32, item 3: one process and two give the same latents; each reads only its own units
def test_two_processes_make_the_latents_of_one(tmp_path):
    from sd_scratch.shards import encode_source, run_as_ranks
    buf = io.BytesIO()
    (tmp_path/'tars').mkdir()
    for s in range(3):
        with tarfile.open(tmp_path/'tars'/f'{s:05d}.tar', 'w') as tar:
            for k in range(3):
                buf = io.BytesIO(); render_shape(('red', 'green', 'blue')[k], 'circle', 'white', size=72).save(buf, format='JPEG')
                for ext, b in (('jpg', buf.getvalue()), ('txt', f'shard {s} picture {k}'.encode())):
                    ti = tarfile.TarInfo(f'{k:04d}.{ext}'); ti.size = len(b); tar.addfile(ti, io.BytesIO(b))
    enc = lambda x: torch.nn.functional.avg_pool2d(x, 8)[:, :3]
    one = encode_source(tmp_path/'tars', tmp_path/'one', enc, size=64, progress=False)
    two = run_as_ranks(lambda r, w, share: encode_source(tmp_path/'tars', tmp_path/'two', enc, size=64, rank=r, world_size=w,
                                                          share=share, progress=False))
    read = lambda d: {c: z for z, c in LatentShardDataset(d/'latents', rank=0, world_size=1)}
    a, b = read(tmp_path/'one'), read(tmp_path/'two')
    assert len(a) == 9 and a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not (tmp_path/'two'/'images').exists()                                        # no second copy of the pictures
    recs = {p.stem: json.loads(p.read_text()) for p in (tmp_path/'two'/'latents').glob('*.json')}
    assert {k: r['source'] for k, r in recs.items()} == {f'{s:05d}': [str(tmp_path/'tars'/f'{s:05d}.tar')] for s in range(3)}
    assert {k: r['by'] for k, r in recs.items()} == {'00000': 0, '00001': 1, '00002': 0}   # each process read only its own shards


def test_sd_scratch_data_under_torchrun(tmp_path):
    "The command itself under `torchrun --nproc_per_node 2` (gloo on CPU): the latents of one process, each shard read by one."
    import subprocess, sys
    (tmp_path/'tars').mkdir()
    for s in range(2):
        with tarfile.open(tmp_path/'tars'/f'part{s}.tar', 'w') as tar:
            for k in range(2):
                buf = io.BytesIO(); render_shape(('red', 'green')[k], ('circle', 'square')[s], 'white', size=64).save(buf, format='PNG')
                for ext, b in (('png', buf.getvalue()), ('txt', f'part {s} picture {k}'.encode())):
                    ti = tarfile.TarInfo(f'{k:04d}.{ext}'); ti.size = len(b); tar.addfile(ti, io.BytesIO(b))
    env = {k: v for k, v in os.environ.items() if k not in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT')}
    env['OMP_NUM_THREADS'] = '1'
    cmd = lambda n, out: [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', str(n), '-m',
                          'sd_scratch.cli', 'data', str(tmp_path/'tars'), str(out), '--no-progress']
    for n, out in ((1, tmp_path/'one'), (2, tmp_path/'two')):
        r = subprocess.run(cmd(n, out), capture_output=True, text=True, timeout=300, env=env)
        assert r.returncode == 0, r.stderr[-3000:]
    read = lambda d: {c: z for z, c in LatentShardDataset(d/'latents', rank=0, world_size=1)}
    a, b = read(tmp_path/'one'), read(tmp_path/'two')
    assert len(a) == 4 and a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert {json.loads(p.read_text())['by'] for p in (tmp_path/'two'/'latents').glob('*.json')} == {0, 1}
    assert json.loads((tmp_path/'two'/'data.json').read_text())['done'] and not (tmp_path/'two'/'images').exists()
