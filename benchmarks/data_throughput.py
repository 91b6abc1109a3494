"""What the data step costs: pictures per second of `sd_scratch data`'s encoding, per process, on this machine, as a ratio to the
reference workload of `toy_time.py` measured in the same run, and the projection for the reference run's 12M pictures.

    python benchmarks/data_throughput.py                    # writes benchmarks/data_throughput.json (refuses to replace it)
    python benchmarks/data_throughput.py --overwrite --threads 2

Two measurements, each one process running `sd_scratch.shards.encode_source` (read, decode, cut to size, encode, write latent
shards) from a cold folder:
- the toy's size: 64 px shapes (`render_shape`, saved as PNG) encoded by the shipped toy VAE;
- SD 1.x's size: 512 px photos (scikit-image's, cut and saved as JPEG) encoded by the SD 1.x VAE's encoder (`VAEConfig()`,
  random weights: the arithmetic is the weights', not their values'), a few pictures only (a CPU takes seconds per picture).
Then the projection, marked as an estimate: the SD 1.x VAE encoder's FLOPs per 512 px picture, counted by
`torch.utils.flop_counter` on the meta device, times 12M pictures, over two RTX 5090s at an assumed share of their dense bf16
tensor throughput (209.5 TFLOP/s each, NVIDIA's published figure for the GeForce RTX 5090; --mfu sets the share). JPEG decoding
and resizing run on the CPU beside the GPU and are not in the projection.
"""
import argparse, io, json, os, platform, statistics, sys, tempfile, time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from toy_time import reference_seconds  # noqa: E402  the one reference workload of the measurements page

RTX5090_BF16_TFLOPS = 209.5   # dense bf16 tensor throughput per GPU (NVIDIA's published figure for the GeForce RTX 5090)
PICTURES = 12_000_000          # the reference run: LAION-2B-en-aesthetic filtered to aesthetic >= 6.5


def encoder_flops(size:int=512) -> float:
    "FLOPs of the SD 1.x VAE encoder on one `size` px picture, counted on the meta device."
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    from sd_scratch.vae import AutoencoderKL, VAEConfig
    with torch.device('meta'): vae = AutoencoderKL(VAEConfig())
    x = torch.empty(1, 3, size, size, device='meta')
    with FlopCounterMode(display=False) as fc, torch.no_grad(): vae.quant_conv(vae.encoder(x))   # `encode` without its value checks
    return float(fc.get_total_flops())


def timed_encode(folder:Path, out:Path, encode, size:int, batch:int) -> tuple:
    "(wall seconds, CPU seconds, pictures written) of one `encode_source` run."
    from sd_scratch.shards import encode_source
    t0, c0 = time.perf_counter(), time.process_time()
    doc = encode_source(folder, out, encode, size=size, batch_size=batch, progress=False, say=lambda *_: None)
    return time.perf_counter() - t0, time.process_time() - c0, doc['images']


def toy_folder(folder:Path, n:int):
    from sd_scratch.data import ShapesDataset
    from sd_scratch.core import tensor_to_images
    ds = ShapesDataset(n, size=64, seed=0)
    for i, (im, cap) in enumerate(zip(tensor_to_images(ds.tensors()), ds.captions)):
        im.save(folder/f'{i:05d}.png'); (folder/f'{i:05d}.txt').write_text(cap)


def photo_folder(folder:Path, n:int):
    from skimage import data as skdata
    from PIL import Image
    names = ['astronaut', 'coffee', 'chelsea', 'rocket', 'immunohistochemistry', 'hubble_deep_field', 'retina', 'cat']
    for i in range(n):
        im = Image.fromarray(getattr(skdata, names[i % len(names)])()).convert('RGB')
        im = im.resize((max(512, im.width * 512 // min(im.size)), max(512, im.height * 512 // min(im.size))))
        im.save(folder/f'{i:05d}.jpg', quality=95); (folder/f'{i:05d}.txt').write_text(f'photo {names[i % len(names)]} {i}')


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--toy', type=int, default=256, help='64 px pictures encoded by the toy VAE')
    p.add_argument('--photos', type=int, default=8, help='512 px photos encoded by the SD 1.x VAE')
    p.add_argument('--mfu', type=float, default=0.4, help='assumed share of the GPUs\' bf16 throughput the encoder reaches')
    p.add_argument('--out', default=str(Path(__file__).with_suffix('.json')))
    p.add_argument('--overwrite', action='store_true')
    a = p.parse_args(argv)
    out = Path(a.out)
    if out.exists() and not a.overwrite: p.error(f"{out} exists; pass --overwrite to measure again and replace it")
    import torch
    torch.set_num_threads(a.threads)
    load0 = os.getloadavg()
    ref = statistics.median(reference_seconds(a.threads)[0])
    print(f"reference (diffusers UNet forward, 1x4x32x32, {a.threads} threads): {ref:.3f} s", flush=True)
    from sd_scratch.pipeline import StableDiffusion
    from sd_scratch.vae import AutoencoderKL, VAEConfig
    toy = StableDiffusion.from_pretrained('toy')
    toy_encode = lambda x: toy.vae.encode(x).mean * toy.scaling_factor
    torch.manual_seed(0); big = AutoencoderKL(VAEConfig()).eval()
    big_encode = lambda x: big.encode(x).mean * big.cfg.scaling_factor
    rows = {}
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        for name, make, n, enc, size, batch in (('toy_64px', toy_folder, a.toy, toy_encode, 64, 32),
                                                ('sd15_512px', photo_folder, a.photos, big_encode, 512, 2)):
            (d/name).mkdir(); make(d/name, n)
            with torch.no_grad(): wall, cpu, written = timed_encode(d/name, d/f'{name}_out', enc, size, batch)
            rows[name] = dict(pictures=written, wall_s=round(wall, 2), cpu_s=round(cpu, 2), pictures_per_s=round(written / wall, 3),
                              s_per_picture_over_reference=round(wall / written / ref, 3))
            print(f"{name}: {written} pictures in {wall:.1f} s = {written / wall:.2f} pictures/s per process "
                  f"({wall / written / ref:.3f}x the reference per picture)", flush=True)
    flops = encoder_flops(512)
    gpu_s = PICTURES * flops / (2 * RTX5090_BF16_TFLOPS * 1e12 * a.mfu)
    print(f"SD 1.x VAE encoder: {flops / 1e9:.0f} GFLOP per 512 px picture; 12M pictures on 2x RTX 5090 at {a.mfu:.0%} of "
          f"{RTX5090_BF16_TFLOPS} TFLOP/s each: about {gpu_s / 3600:.1f} hours (an estimate)", flush=True)
    rec = dict(when=datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC'), machine=platform.machine(), cpus=os.cpu_count(),
               torch=torch.__version__, threads=a.threads, load_at_start=[round(x, 2) for x in load0],
               load_at_end=[round(x, 2) for x in os.getloadavg()], reference_s=round(ref, 4), rows=rows,
               projection=dict(estimate=True, pictures=PICTURES, encoder_gflop_512px=round(flops / 1e9, 1), gpus=2,
                               gpu_bf16_tflops=RTX5090_BF16_TFLOPS, mfu=a.mfu, hours=round(gpu_s / 3600, 2),
                               note='VAE encoder arithmetic only; JPEG decoding and resizing run on the CPU beside it'))
    from sd_scratch.core import atomic_write_text
    atomic_write_text(out, json.dumps(rec, indent=1) + '\n', overwrite=a.overwrite)
    print(f"wrote {out}")


if __name__ == '__main__': main()
