"The data pipeline against a hostile or careless user: full disks, odd file names, stale output folders, mixed sources, bad captions, damaged shards."
import io, json, os, subprocess, sys, tarfile, textwrap, warnings
from pathlib import Path
import numpy as np, pytest, torch
import webdataset as wds
from PIL import Image
from sd_scratch.data import render_shape
from sd_scratch.sources import iter_image_folder, iter_tar_shards, ShardStats
from sd_scratch.shards import write_image_shards, encode_latent_shards, LatentShardDataset

COLOURS = ['red', 'green', 'blue', 'yellow', 'purple', 'orange', 'white', 'black']


def _image(i, size=72):
    return render_shape(COLOURS[i % 8], ('circle', 'square', 'triangle', 'cross')[i % 4], COLOURS[(i + 3) % 8], size=size)

def make_folder(folder, names, size=72):
    "One image + caption per name (a relative path with its image extension); returns {name: caption}."
    caps = {}
    for i, name in enumerate(names):
        p = Path(folder)/name; p.parent.mkdir(parents=True, exist_ok=True)
        _image(i, size).save(p)
        caps[name] = f"caption {i} of {name}"
        p.with_suffix('.txt').write_text(caps[name])
    return caps

def read_back(shards):
    "Every sample of the shards as {key: caption}, read by our reader and, independently, by WebDataset."
    paths = sorted(Path(shards).glob('*.tar'))
    ours = [(k, c) for k, _, c, _ in iter_tar_shards(paths)]
    theirs = list(wds.WebDataset([str(p) for p in paths], shardshuffle=False, empty_check=False))
    assert all('jpg' in s and 'txt' in s for s in theirs), [sorted(s) for s in theirs]
    assert len(theirs) == len(ours)
    return dict(ours)

def leftovers(folder):
    "Temporary files a writer left behind."
    return [p.name for p in Path(folder).rglob('*') if p.name.endswith('.tmp')]

def run_limited(script, *args, fsize):
    "Run `script` in a fresh Python whose files may not grow past `fsize` bytes (a full disk, for the files it writes)."
    env = {k: v for k, v in os.environ.items() if k not in ('RANK', 'WORLD_SIZE')}
    pre = f"import resource; resource.setrlimit(resource.RLIMIT_FSIZE, ({fsize}, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))\n"
    r = subprocess.run([sys.executable, '-c', textwrap.dedent(script).replace('#LIMIT\n', pre), *map(str, args)],
                       capture_output=True, text=True, timeout=120, env={**env, 'OMP_NUM_THREADS': '1', 'PYTHONDONTWRITEBYTECODE': '1'})
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


# 1. a full disk: finished shards stay whole, the failing one leaves nothing

def test_full_disk_keeps_finished_image_shards_whole(tmp_path):
    src = tmp_path/'src'; src.mkdir()
    for i in range(4):                                                  # a flat image compresses well: a small first shard
        _image(i, 128).save(src/f"a{i}.png"); (src/f"a{i}.txt").write_text(f"flat {i}")
    rng = np.random.default_rng(0)
    for i in range(4):                                                  # noise does not: the second shard outgrows the disk
        Image.fromarray(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)).save(src/f"b{i}.png"); (src/f"b{i}.txt").write_text(f"noise {i}")
    out = run_limited('''
        import sys
        from sd_scratch.shards import write_image_shards
        #LIMIT
        try: write_image_shards(sys.argv[1], sys.argv[2], size=128, samples_per_shard=4, progress=False); print('no error')
        except OSError as e: print('OSError:', e)
    ''', src, tmp_path/'shards', fsize=60_000)                       # the first shard takes 41 KB, the second 113 KB
    assert sorted(p.name for p in (tmp_path/'shards').iterdir()) == ['00000.tar']   # no truncated 00001.tar, no temporary file
    assert sorted(read_back(tmp_path/'shards').values()) == [f"flat {i}" for i in range(4)]
    assert out.startswith('OSError') and '00001.tar' in out, out        # the error names the shard that could not be written


def test_full_disk_leaves_no_partial_latent_shard(tmp_path):
    make_folder(tmp_path/'src', [f"{i}.png" for i in range(4)])
    write_image_shards(tmp_path/'src', tmp_path/'images', size=64, samples_per_shard=2, progress=False)
    out = run_limited('''
        import sys, torch
        from sd_scratch.shards import encode_latent_shards
        #LIMIT
        def big(x): return torch.randn(len(x), 4, 64, 64)                   # 64 KB per latent: more than the disk holds
        try: encode_latent_shards(sys.argv[1], sys.argv[2], big, rank=0, world_size=1, dtype=torch.float32, progress=False); print('no error')
        except OSError as e: print('OSError:', e)
    ''', tmp_path/'images', tmp_path/'latents', fsize=20_000)
    assert list((tmp_path/'latents').iterdir()) == []                   # neither a partial shard nor a temporary file
    assert out.startswith('OSError') and '00000.tar' in out, out


# 2. keys: every image gets its own key, and reads back under it

def test_subfolders_and_dotted_names_keep_every_image(tmp_path):
    names = [f"img{i}.png" for i in range(11)] + ['sub/x.png', 'sub_x.png', 'my.photo.v2.png']
    caps = make_folder(tmp_path/'src', names)
    stats = write_image_shards(tmp_path/'src', tmp_path/'shards', size=64, samples_per_shard=4, progress=False)
    assert (stats.seen, stats.written) == (14, 14)
    back = read_back(tmp_path/'shards')                                 # our reader and WebDataset's agree
    assert len(back) == 14 and sorted(back.values()) == sorted(caps.values())
    assert back['00002_my%2Ephoto%2Ev2'] == caps['my.photo.v2.png']     # '.' escaped: WebDataset's key ends at the first dot
    assert {back['00003_sub/x'], back['00003_sub_x']} == {caps['sub/x.png'], caps['sub_x.png']}


def test_two_images_with_one_key_are_counted(tmp_path):
    make_folder(tmp_path/'src', ['a.png', 'b.png'])
    _image(5).save(tmp_path/'src'/'a.jpg')                              # a.jpg and a.png share a.txt and the key 'a'
    stats = write_image_shards(tmp_path/'src', tmp_path/'shards', size=64, progress=False)
    assert (stats.seen, stats.written, stats.duplicate_key) == (3, 2, 1)
    assert stats.seen == stats.written + stats.skipped
    assert sorted(read_back(tmp_path/'shards')) == ['00000_a', '00000_b']


def test_tar_members_in_folders_keep_their_folder(tmp_path):
    tar_path = tmp_path/'web_00000.tar'
    with tarfile.open(tar_path, 'w') as tar:                            # a/k and b/k: one name, two folders
        for d in ('a', 'b'):
            buf = io.BytesIO(); _image(0 if d == 'a' else 1).save(buf, 'JPEG')
            for ext, data in [('jpg', buf.getvalue()), ('txt', f"from {d}".encode())]:
                ti = tarfile.TarInfo(f"{d}/k.{ext}"); ti.size = len(data); tar.addfile(ti, io.BytesIO(data))
    stats = write_image_shards([tar_path], tmp_path/'shards', size=64, progress=False)
    assert (stats.seen, stats.written) == (2, 2)
    assert sorted(read_back(tmp_path/'shards').values()) == ['from a', 'from b']


# 3. an output folder that already holds shards

def test_refuses_an_output_folder_with_shards(tmp_path):
    make_folder(tmp_path/'big', [f"{i}.png" for i in range(10)])
    make_folder(tmp_path/'small', ['p.png', 'q.png'])
    write_image_shards(tmp_path/'big', tmp_path/'shards', size=64, samples_per_shard=1, progress=False)
    before = {p.name: p.read_bytes() for p in (tmp_path/'shards').iterdir()}
    with pytest.raises(FileExistsError, match='overwrite=True'):
        write_image_shards(tmp_path/'small', tmp_path/'shards', size=64, samples_per_shard=1, progress=False)
    assert {p.name: p.read_bytes() for p in (tmp_path/'shards').iterdir()} == before   # refused: nothing touched
    stats = write_image_shards(tmp_path/'small', tmp_path/'shards', size=64, samples_per_shard=1, progress=False, overwrite=True)
    assert stats.written == 2 and len(read_back(tmp_path/'shards')) == 2          # the 10 stale shards are gone


def test_overwrite_never_deletes_the_source(tmp_path):
    make_folder(tmp_path/'src', ['p.png', 'q.png'])
    write_image_shards(tmp_path/'src', tmp_path/'shards', size=64, samples_per_shard=1, progress=False)
    before = sorted(p.name for p in (tmp_path/'shards').iterdir())
    with pytest.raises(ValueError, match='source'):
        write_image_shards(tmp_path/'shards', tmp_path/'shards', size=64, progress=False, overwrite=True)
    with pytest.raises(ValueError, match='source'):
        write_image_shards(sorted((tmp_path/'shards').glob('*.tar')), tmp_path/'shards', size=64, progress=False, overwrite=True)
    assert sorted(p.name for p in (tmp_path/'shards').iterdir()) == before


# 4. a stray .tar among images

def test_images_and_tar_files_in_one_folder_are_refused(tmp_path):
    make_folder(tmp_path/'src', ['a.png', 'b.png', 'c.png'])
    with tarfile.open(tmp_path/'src'/'old.tar', 'w'): pass
    with pytest.raises(ValueError, match=r'3 images and 1 \.tar'):
        write_image_shards(tmp_path/'src', tmp_path/'shards', size=64, progress=False)


def test_a_folder_with_nothing_to_read_is_refused(tmp_path):
    (tmp_path/'src').mkdir(); (tmp_path/'src'/'notes.txt').write_text('no images here')
    with pytest.raises(FileNotFoundError, match='no images'):
        write_image_shards(tmp_path/'src', tmp_path/'shards', size=64, progress=False)


# 5. captions that are not UTF-8

def test_a_caption_that_is_not_utf8_is_counted_not_mangled(tmp_path):
    make_folder(tmp_path/'src', ['a.png', 'b.png', 'c.png'])
    (tmp_path/'src'/'b.txt').write_bytes(b'caf\xe9 au lait')            # Latin-1, not UTF-8
    stats = write_image_shards(tmp_path/'src', tmp_path/'shards', size=64, progress=False)
    assert (stats.seen, stats.written, stats.bad_caption) == (3, 2, 1)
    back = read_back(tmp_path/'shards')
    assert sorted(back) == ['00000_a', '00000_c'] and not any('\ufffd' in c for c in back.values())
    with pytest.warns(UserWarning, match='skipped 1 of 3'):               # the reader alone, without stats: summed up in a warning
        assert len(list(iter_image_folder(tmp_path/'src'))) == 2
    # the same caption inside a tar shard
    shard = next((tmp_path/'shards').glob('*.tar'))
    with tarfile.open(shard) as t: members = [(m, t.extractfile(m).read()) for m in t]
    with tarfile.open(tmp_path/'bad_00000.tar', 'w') as t:
        for m, data in members:
            if m.name == 'c.txt': data = b'\xff\xfe broken'
            m.size = len(data); t.addfile(m, io.BytesIO(data))
    stats = write_image_shards([tmp_path/'bad_00000.tar'], tmp_path/'again', size=64, progress=False)
    assert (stats.seen, stats.written, stats.bad_caption) == (2, 1, 1)


# 6. damaged files: skipped and counted, or named

def _cut(path, at):
    "Truncate the file to `at` bytes, or inside the data of the tar member named `at`."
    if isinstance(at, str):
        with tarfile.open(path) as t: at = t.getmember(at).offset_data + 10
    data = Path(path).read_bytes(); Path(path).write_bytes(data[:at])

def test_a_truncated_or_foreign_tar_is_named_and_the_rest_is_read(tmp_path):
    make_folder(tmp_path/'src', [f"{i}.png" for i in range(9)])
    write_image_shards(tmp_path/'src', tmp_path/'shards', size=64, samples_per_shard=3, progress=False)
    _cut(tmp_path/'shards'/'00001.tar', '4.jpg')                        # cut inside its second sample
    (tmp_path/'not_a_shard.tar').write_bytes(b'this is not a tar file' * 10)
    paths = sorted((tmp_path/'shards').glob('*.tar')) + [tmp_path/'not_a_shard.tar']
    with pytest.warns(UserWarning) as rec:
        stats = write_image_shards(paths, tmp_path/'out', size=64, samples_per_shard=3, progress=False)
    msgs = [str(w.message) for w in rec]
    assert any('00001.tar' in m for m in msgs) and any('not_a_shard.tar' in m for m in msgs), msgs
    assert stats.bad_shards == 2 and stats.written == 7                 # 3 + the 1 complete sample before the damage + 3
    assert stats.seen == stats.written + stats.skipped
    with pytest.warns(UserWarning, match='00001.tar'):
        assert len(list(iter_tar_shards([tmp_path/'shards'/'00001.tar']))) == 1


def test_a_tar_cut_between_two_samples_is_noticed(tmp_path):
    make_folder(tmp_path/'src', [f"{i}.png" for i in range(3)])
    write_image_shards(tmp_path/'src', tmp_path/'shards', size=64, progress=False)
    shard = tmp_path/'shards'/'00000.tar'
    with tarfile.open(shard) as t: t.getmembers(); end = t.offset       # where the end-of-archive blocks begin
    _cut(shard, end)                                                    # a valid-looking tar without its end marker
    with pytest.warns(UserWarning, match='00000.tar'):
        stats = write_image_shards([shard], tmp_path/'out', size=64, progress=False)
    assert (stats.bad_shards, stats.written) == (1, 2)                  # the last sample may be incomplete: left out


def test_a_corrupt_image_in_an_image_shard_is_skipped_when_encoding(tmp_path):
    make_folder(tmp_path/'src', [f"{i}.png" for i in range(4)])
    write_image_shards(tmp_path/'src', tmp_path/'shards', size=64, samples_per_shard=2, progress=False)
    shard = tmp_path/'shards'/'00001.tar'
    with tarfile.open(shard) as t: members = [(m, t.extractfile(m).read()) for m in t]
    with tarfile.open(shard, 'w') as t:                                 # 2.jpg: a JPEG cut short
        for m, data in members:
            if m.name == '2.jpg': data = data[:200]
            m.size = len(data); t.addfile(m, io.BytesIO(data))
    def enc(x): return torch.nn.functional.avg_pool2d(x, 8).repeat(1, 2, 1, 1)[:, :4]
    with pytest.warns(UserWarning, match='00001.tar'):
        written = encode_latent_shards(tmp_path/'shards', tmp_path/'latents', enc, batch_size=2, rank=0, world_size=1, progress=False)
    assert [p.name for p in written] == ['00000.tar', '00001.tar'] and leftovers(tmp_path) == []
    assert len(list(LatentShardDataset(tmp_path/'latents', rank=0, world_size=1))) == 3
    stats = ShardStats()                                                # the same, counted
    with pytest.warns(UserWarning):
        encode_latent_shards(tmp_path/'shards', tmp_path/'latents2', enc, rank=0, world_size=1, progress=False, stats=stats)
    assert (stats.seen, stats.written, stats.unreadable) == (4, 3, 1)


def test_a_truncated_latent_shard_is_named_and_the_rest_is_read(tmp_path):
    make_folder(tmp_path/'src', [f"{i}.png" for i in range(6)])
    write_image_shards(tmp_path/'src', tmp_path/'shards', size=64, samples_per_shard=3, progress=False)
    def enc(x): return torch.nn.functional.avg_pool2d(x, 8).repeat(1, 2, 1, 1)[:, :4]
    encode_latent_shards(tmp_path/'shards', tmp_path/'latents', enc, rank=0, world_size=1, progress=False)
    _cut(tmp_path/'latents'/'00000.tar', '1.latent.npy')                # inside its second sample
    with pytest.warns(UserWarning, match='00000.tar'):
        got = list(LatentShardDataset(tmp_path/'latents', rank=0, world_size=1))
    assert len(got) == 1 + 3 and all(z.shape == (4, 8, 8) for z, _ in got)


def test_encoding_refuses_stale_latent_shards_and_its_own_input_folder(tmp_path):
    make_folder(tmp_path/'src', [f"{i}.png" for i in range(4)])
    write_image_shards(tmp_path/'src', tmp_path/'shards', size=64, samples_per_shard=2, progress=False)
    def enc(x): return torch.nn.functional.avg_pool2d(x, 8).repeat(1, 2, 1, 1)[:, :4]
    (tmp_path/'latents').mkdir(); (tmp_path/'latents'/'00007.tar').write_bytes(b'')   # left over from a bigger run
    with pytest.raises(FileExistsError, match='00007.tar'):
        encode_latent_shards(tmp_path/'shards', tmp_path/'latents', enc, rank=0, world_size=1, progress=False)
    with pytest.raises(ValueError, match='image shards'):
        encode_latent_shards(tmp_path/'shards', tmp_path/'shards', enc, rank=0, world_size=1, progress=False)
