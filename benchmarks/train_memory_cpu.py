"""Peak memory (RSS) of a full-size SD 1.x UNet training step on the CPU, with and without gradient checkpointing,
beside `sd_scratch.distributed.sd15_memory_estimate` at the same settings (fp32: 4 bytes per activation, no text encoder).

    python benchmarks/train_memory_cpu.py                       # 1x16x16 and 2x32x32 latents, checkpointing off and on
    python benchmarks/train_memory_cpu.py --sizes 1x16 --json out.json

Each configuration runs in a fresh process (peak RSS is per process): the real `Trainer` with the full UNet
(859,520,964 parameters), AdamW, EMA and 77x768 text contexts, two optimizer steps of one micro-batch. A thread samples
the process's RSS every 5 ms; the figure that matters for training is the peak of the second step, when AdamW's moments
exist (the first step allocates them). About 20 GB per process: run nothing else big beside it.
"""
import argparse, json, os, subprocess, sys, threading, time


def rss_gb() -> float:
    with open('/proc/self/statm') as f: return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 1e9


class PeakRSS:
    "Samples this process's resident memory in a thread; `take()` returns the peak since the last call."
    def __init__(self, every=0.005):
        self.peak, self.every, self.stop = rss_gb(), every, False
        threading.Thread(target=self._run, daemon=True).start()
    def _run(self):
        while not self.stop:
            self.peak = max(self.peak, rss_gb()); time.sleep(self.every)
    def take(self) -> float:
        p, self.peak = max(self.peak, rss_gb()), rss_gb()
        return p


def child(batch: int, latent: int, ckpt: bool, threads: int) -> dict:
    import torch
    torch.set_num_threads(threads)
    from sd_scratch.train import Trainer, TrainConfig, build_model, load_run_config, random_latent_cache
    mon = PeakRSS()
    base = mon.take()                                          # Python, torch and sd_scratch imported, nothing built
    t0 = time.perf_counter()
    model = build_model(load_run_config(dict(base='sd15_2x5090', encoders='hash')))
    cfg = TrainConfig(steps=2, batch_size=batch, grad_accum_steps=1, lr=1e-4, warmup_steps=1, ema_decay=0.9999,
                      mixed_precision='no', gradient_checkpointing=ckpt, device='cpu', log_every=1)
    tr = Trainer(model, random_latent_cache(n=8, latent_size=latent, context_len=77, context_dim=768), cfg, progress=False)
    built, build_s = mon.take(), time.perf_counter() - t0
    steps = []
    for _ in range(2):
        t0 = time.perf_counter(); tr.fit(tr.step + 1)
        steps.append(dict(peak_gb=mon.take(), seconds=time.perf_counter() - t0))
    mon.stop = True
    return dict(batch=batch, latent=latent, checkpointing=ckpt, threads=threads, baseline_gb=base, after_build_gb=built,
                build_s=build_s, step1=steps[0], step2=steps[1])


def measure(sizes, threads=2) -> list:
    "Run every (batch, latent) x (checkpointing off, on) in its own process; returns their records."
    out = []
    for b, l in sizes:
        for ckpt in (False, True):
            r = subprocess.run([sys.executable, __file__, '--child', f'{b}x{l}', '--ckpt', str(int(ckpt)), '--threads', str(threads)],
                               capture_output=True, text=True)
            if r.returncode != 0: raise RuntimeError(f"{b}x{l} ckpt={ckpt} failed:\n{r.stderr[-3000:]}")
            out.append(json.loads(r.stdout.strip().splitlines()[-1]))
            print(f"batch {b} latent {l}x{l} checkpointing {ckpt}: peak {out[-1]['step2']['peak_gb']:.2f} GB "
                  f"(step {out[-1]['step2']['seconds']:.0f} s)", file=sys.stderr, flush=True)
    return out


def compare(records) -> list:
    "Measured peak of the second step beside the estimate at the same settings (fp32 activations, the measured baseline)."
    from sd_scratch.distributed import sd15_memory_estimate
    rows = []
    for r in records:
        est = sd15_memory_estimate(batch_per_gpu=r['batch'], latent_hw=r['latent'], checkpointing=r['checkpointing'],
                                   bytes_per_act=4, autocast_bf16=False, text_encoder_params=0,
                                   overhead_gb=r['baseline_gb'])[-1][1]
        rows.append(dict(batch=r['batch'], latent=r['latent'], checkpointing=r['checkpointing'], measured_gb=round(r['step2']['peak_gb'], 2),
                         estimate_gb=round(est, 2), ratio=round(est / r['step2']['peak_gb'], 3)))
    return rows


if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--sizes', nargs='+', default=['1x16', '2x32'], help='BATCHxLATENT, e.g. 2x32 (latent side)')
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--json', default=None, help='also write the records and the comparison here')
    ap.add_argument('--child', default=None, help=argparse.SUPPRESS)
    ap.add_argument('--ckpt', default='0', help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        b, l = map(int, a.child.split('x'))
        print(json.dumps(child(b, l, a.ckpt == '1', a.threads)), flush=True)
        sys.exit(0)
    recs = measure([tuple(map(int, s.split('x'))) for s in a.sizes], a.threads)
    try: rows = compare(recs)
    except TypeError: rows = []                                # an estimator without the CPU arguments: records only
    for row in rows: print(row)
    if a.json:
        tmp = a.json + '.tmp'
        with open(tmp, 'w') as f: json.dump(dict(records=recs, comparison=rows), f, indent=1)
        os.replace(tmp, a.json)
