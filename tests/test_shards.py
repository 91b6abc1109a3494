"The data pipeline end to end under torchrun: a folder of images -> image shards -> latent shards (split over 2 ranks) -> DDP training streams them."
import json, os, subprocess, sys, textwrap
from pathlib import Path
import torch
from sd_scratch.data import render_shape
from sd_scratch.shards import write_image_shards, LatentShardDataset
from sd_scratch.core import load_safetensors

WORKER = textwrap.dedent('''
    import sys, torch, torch.nn.functional as F
    from pathlib import Path
    from sd_scratch.shards import encode_latent_shards
    from sd_scratch.distributed import init_distributed, barrier, train_main, cleanup_distributed
    work = Path(sys.argv[1])
    env = init_distributed()
    def toy_encode(x): return F.avg_pool2d(x, 8).repeat(1, 2, 1, 1)[:, :4]      # (B, 3, 64, 64) -> (B, 4, 8, 8)
    mine = encode_latent_shards(work/'images', work/'latents', toy_encode, batch_size=3, progress=False)
    (work/f'rank{env.rank}.txt').write_text(' '.join(p.name for p in mine))
    barrier()                                                                  # every latent shard exists before training
    res = train_main(dict(base='tiny', data=str(work/'latents'), train=dict(steps=3)), work/'run', progress=False)
    if env.rank == 0: (work/'result.json').write_text(str(res['step']))
    streamed = train_main(dict(base='tiny', data=str(work/'latents'), stream=True, loader_workers=1, train=dict(steps=2, batch_size=4, grad_accum_steps=2)),
                          work/'run_stream', progress=False)
    if env.rank == 0: (work/'streamed.txt').write_text(str(streamed['step']))
    cleanup_distributed()
''')


def test_folder_to_latent_shards_to_ddp_training(tmp_path):
    folder = tmp_path/'folder'; folder.mkdir()
    colours = ['red', 'green', 'blue', 'yellow', 'purple', 'orange', 'white', 'black']
    for i in range(12):
        c, b = colours[i % 8], colours[(i + 3) % 8]
        render_shape(c, ('circle', 'square')[i % 2], b, size=72).save(folder/f"{i:02d}.png")
        (folder/f"{i:02d}.txt").write_text(f"a {c} shape on {b}")
    (folder/'bad.jpg').write_bytes(b'not an image'); (folder/'bad.txt').write_text('bad')
    stats = write_image_shards(folder, tmp_path/'images', size=64, samples_per_shard=3, progress=False)
    assert (stats.written, stats.unreadable) == (12, 1)
    script = tmp_path/'worker.py'; script.write_text(WORKER)
    env = {k: v for k, v in os.environ.items() if k not in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT')}
    r = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2', str(script), str(tmp_path)],
                       capture_output=True, text=True, timeout=240, env={**env, 'OMP_NUM_THREADS': '1'})
    assert r.returncode == 0, r.stderr[-3000:]
    # the ranks encoded disjoint halves of the 4 image shards
    assert (tmp_path/'rank0.txt').read_text().split() == ['00000.tar', '00002.tar']
    assert (tmp_path/'rank1.txt').read_text().split() == ['00001.tar', '00003.tar']
    assert len(list(LatentShardDataset(tmp_path/'latents', rank=0, world_size=1))) == 12
    # and DDP training consumed them: 3 steps, a whole checkpoint, the loss logged by rank 0 only
    assert (tmp_path/'result.json').read_text() == '3'
    _, meta = load_safetensors(tmp_path/'run'/'checkpoint.safetensors')
    assert meta['step'] == '3'
    log = [json.loads(l) for l in (tmp_path/'run'/'log.jsonl').read_text().splitlines()]
    assert [rec['step'] for rec in log] == [0, 1, 2] and all(torch.isfinite(torch.tensor(rec['loss'])) for rec in log)
    # the streaming trainer (each rank reads its own latent shards, encodes captions on the fly) ran 2 steps too
    assert (tmp_path/'streamed.txt').read_text() == '2'
    assert load_safetensors(tmp_path/'run_stream'/'checkpoint.safetensors')[1]['step'] == '2'
    assert len((tmp_path/'run_stream'/'log.jsonl').read_text().splitlines()) == 2
