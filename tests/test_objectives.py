"The four training objectives (05b_objectives, 07_training): the loss each one computes, and a run of each through `train_run`."
import json
import pytest, torch
from sd_scratch.schedulers import NoiseSchedule, FlowSchedule
from sd_scratch.objectives import (OBJECTIVES, make_schedule, schedule_config, schedule_from_config, min_snr_weight,
                                   x0_loss_weight, sample_timesteps, diffusion_loss)
from sd_scratch.trainer import diffusion_loss as trainer_loss, min_snr_weight as trainer_weight, TrainConfig
from sd_scratch.train import diffusion_loss as train_loss, min_snr_weight as train_weight
from sd_scratch.core import read_weights


def test_old_import_paths_still_work():
    assert trainer_loss is diffusion_loss is train_loss and trainer_weight is min_snr_weight is train_weight


class Affine(torch.nn.Module):
    "A fixed network output: an affine function of (z_t, t), the same for every objective."
    def __init__(self):
        super().__init__(); g = torch.Generator().manual_seed(0)
        self.w, self.b = torch.randn(4, 4, generator=g) * 0.3, torch.randn(4, generator=g) * 0.1
    def forward(self, z, t, c):
        return torch.einsum('oc,bchw->bohw', self.w, z) + self.b.view(1, 4, 1, 1) * torch.as_tensor(t, dtype=torch.float32).view(-1, 1, 1, 1) / 1000


@pytest.mark.parametrize('objective', OBJECTIVES)
@pytest.mark.parametrize('gamma', [0.0, 5.0])
def test_loss_is_the_x0_error_weighed_as_derived(objective, gamma):
    "Each objective's loss = min(snr, gamma) (or its plain weight) x the x0 error of the same output: fails if the target or weight is wrong."
    s = make_schedule(objective, rescale_betas_zero_snr=objective in ('v_prediction', 'sample'))
    g = torch.Generator().manual_seed(1)
    z0, noise = torch.randn(32, 4, 4, 4, generator=g), torch.randn(32, 4, 4, 4, generator=g)
    t = sample_timesteps(s, 32, g)
    net, ctx = Affine(), torch.zeros(32, 1, 1)
    z_t = s.add_noise(z0, noise, t)
    _, x0_hat = s.split(net(z_t, t, ctx), t, z_t)
    x0_err = ((x0_hat - z0) ** 2).mean((1, 2, 3))
    snr = s.snr(t)
    want = (snr.clamp(max=gamma) if gamma else x0_loss_weight(snr, objective)) * x0_err
    got = diffusion_loss(net, s, z0, t, noise, ctx, gamma, per_sample=True)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-6)
    assert torch.allclose(diffusion_loss(net, s, z0, t, noise, ctx, gamma), want.mean(), rtol=1e-4)


def test_min_snr_weight_matches_diffusers_for_epsilon_and_above_gamma_for_v():
    "diffusers' compute_snr equals our SNR; its train_text_to_image weight equals ours for eps, and for v where SNR >= gamma (issue #5654)."
    from diffusers import DDPMScheduler
    from diffusers.training_utils import compute_snr
    ref = DDPMScheduler(beta_schedule='scaled_linear', beta_start=0.00085, beta_end=0.012)
    t = torch.arange(0, 1000, 7)
    snr = compute_snr(ref, t)
    assert torch.allclose(snr, NoiseSchedule().snr(t), rtol=1e-5)
    gamma = 5.0
    eps_ref = torch.stack([snr, gamma * torch.ones_like(snr)], 1).min(1)[0] / snr
    assert torch.allclose(min_snr_weight(snr, gamma), eps_ref)
    v_ref = torch.stack([snr + 1, gamma * torch.ones_like(snr)], 1).min(1)[0] / (snr + 1)   # diffusers' v weight: min(snr + 1, g) / (snr + 1)
    ours = min_snr_weight(snr, gamma, 'v_prediction')
    hi = snr >= gamma
    assert torch.allclose(ours[hi], v_ref[hi]) and (ours[~hi] < v_ref[~hi]).all()   # Hang et al.: min(snr, g) / (snr + 1)


def test_flow_logit_normal_matches_diffusers_density():
    from diffusers.training_utils import compute_density_for_timestep_sampling
    u = compute_density_for_timestep_sampling('logit_normal', 64, logit_mean=0.3, logit_std=1.2, generator=torch.Generator().manual_seed(3))
    ours = sample_timesteps(FlowSchedule(), 64, torch.Generator().manual_seed(3), 'logit_normal', 0.3, 1.2) / 1000
    assert torch.allclose(ours, u, atol=1e-6)
    u = compute_density_for_timestep_sampling('uniform', 64, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(sample_timesteps(FlowSchedule(), 64, torch.Generator().manual_seed(3)) / 1000, u, atol=1e-6)


@pytest.mark.parametrize('bad, msg', [
    (dict(objective='x0'), 'objective must be one of'),
    (dict(rescale_betas_zero_snr=True), "use prediction_type='v_prediction' or 'sample'"),
    (dict(objective='flow_matching', rescale_betas_zero_snr=True), 'pure noise already'),
    (dict(time_sampling='logit_normal'), "'logit_normal' with objective='flow_matching'"),
    (dict(objective='flow_matching', time_sampling='cosmap'), "time_sampling must be"),
    (dict(objective='flow_matching', time_sampling='logit_normal', logit_std=-1.0), 'logit_std must be > 0'),
    (dict(rescale_betas_zero_snr='yes', objective='v_prediction'), 'rescale_betas_zero_snr must be true or false'),
])
def test_bad_objective_settings_are_refused(bad, msg):
    with pytest.raises(ValueError, match=msg.replace('(', r'\(').replace(')', r'\)')): TrainConfig.from_dict(bad)


def test_schedule_config_round_trip_and_old_files():
    for obj in OBJECTIVES:
        s = make_schedule(obj)
        back = schedule_from_config(json.loads(json.dumps(schedule_config(s))))
        assert type(back) is type(s) and schedule_config(back) == schedule_config(s)
    old = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule='scaled_linear')   # files written before 05b
    assert schedule_from_config(old).prediction_type == 'epsilon'
    assert NoiseSchedule(**schedule_config(make_schedule('v_prediction'))).prediction_type == 'v_prediction'   # what 06's load_unet does
    with pytest.raises(ValueError, match='takes num_train_timesteps and shift'):
        schedule_from_config(dict(prediction_type='flow_matching', beta_start=0.1))


@pytest.mark.parametrize('objective, extra', [('v_prediction', dict(rescale_betas_zero_snr=True)),
                                              ('flow_matching', dict(time_sampling='logit_normal'))])
def test_train_run_records_the_objective(tmp_path, objective, extra):
    "A recipe's objective reaches the run: the trainer's schedule, the checkpoint's config and the exported weights file."
    from sd_scratch.train import train_run
    tr = train_run(dict(base='tiny', train=dict(steps=4, objective=objective, **extra)), tmp_path/'run', progress=False)
    assert tr.schedule.prediction_type == objective
    w = read_weights(tmp_path/'run'/'model.safetensors')
    assert schedule_from_config(w.extra['schedule']).prediction_type == objective
    assert w.extra['train_config']['objective'] == objective
    more = train_run(dict(base='tiny', train=dict(steps=6, objective=objective, **extra)), tmp_path/'run', resume=True, progress=False)
    assert more.step == 6
    with pytest.raises(ValueError, match='train.objective'):      # another objective is another run
        train_run(dict(base='tiny', train=dict(steps=8)), tmp_path/'run', resume=True, progress=False)


@pytest.mark.parametrize('objective, extra', [('v_prediction', dict(rescale_betas_zero_snr=True)), ('flow_matching', {})])
def test_pipeline_export_records_the_objective(tmp_path, capsys, objective, extra):
    "A fine-tune's SD single file (and, but for flow matching, its diffusers folder) loads back with the schedule it trained with."
    import copy
    from types import SimpleNamespace
    from sd_scratch.pipeline import StableDiffusion
    from sd_scratch.train import export_pipeline
    from sd_scratch.convert import load_single_file, load_diffusers_folder
    from sd_scratch.objectives import schedule_config
    toy = StableDiffusion.from_pretrained('toy')
    schedule = make_schedule(objective, **extra)
    tr = SimpleNamespace(schedule=schedule, is_main=True, barrier=lambda: None, ema_model=lambda: copy.deepcopy(toy.unet))
    single, folder = export_pipeline(tr, toy, tmp_path)
    assert schedule_config(load_single_file(single).schedule) == schedule_config(schedule)
    if objective == 'flow_matching':
        assert folder is None and not (tmp_path/'diffusers').exists() and 'not written: diffusers/' in capsys.readouterr().out
    else: assert schedule_config(load_diffusers_folder(folder).schedule) == schedule_config(schedule)


@pytest.mark.parametrize('objective, extra', [('v_prediction', dict(rescale_betas_zero_snr=True)), ('sample', {}),
                                              ('flow_matching', dict(time_sampling='logit_normal'))])
def test_exported_unet_samples_with_the_objective_it_trained(tmp_path, objective, extra):
    "A UNet trained with an objective exports its schedule; `load_unet` gives it back, and the pipeline samples with it."
    import copy
    from sd_scratch.pipeline import StableDiffusion, load_unet
    from sd_scratch.trainer import Trainer
    from sd_scratch.train import random_latent_cache
    toy = StableDiffusion.from_pretrained('toy')
    data = random_latent_cache(n=8, latent_size=4, n_captions=2, context_len=77, context_dim=toy.unet.cfg.cross_attention_dim)
    cfg = TrainConfig(objective=objective, steps=1, batch_size=2, device='cpu', **extra)
    tr = Trainer(copy.deepcopy(toy.unet), data, cfg, progress=False)
    tr.fit()
    unet, schedule = load_unet(tr.export(tmp_path/'unet.safetensors'))
    assert type(schedule) is type(tr.schedule) and schedule_config(schedule) == schedule_config(tr.schedule)
    sd = StableDiffusion(toy.tokenizer, toy.text_encoder, toy.vae, unet, schedule, default_size=32)
    img = sd.generate('a red circle on a blue background', steps=3, seed=0, output_type='pt')
    assert img.shape == (1, 3, 32, 32) and torch.isfinite(img).all()


def test_sd_scratch_train_takes_the_objective_from_a_json_recipe(tmp_path):
    "`sd_scratch train --config run.json` with train.objective: the run trains it and its weights file records it; a bad one is a sentence."
    import subprocess, sys, shutil
    cmd = [shutil.which('sd_scratch')] if shutil.which('sd_scratch') else [sys.executable, '-m', 'sd_scratch.cli']
    (tmp_path/'run.json').write_text(json.dumps({"base": "tiny", "train": {"steps": 3, "objective": "flow_matching", "time_sampling": "logit_normal"}}))
    r = subprocess.run(cmd + ['train', '--config', str(tmp_path/'run.json'), '--out', str(tmp_path/'run'), '--no-progress'],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert schedule_from_config(read_weights(tmp_path/'run'/'model.safetensors').extra['schedule']).prediction_type == 'flow_matching'
    (tmp_path/'bad.json').write_text(json.dumps({"base": "tiny", "train": {"objective": "epsilon", "rescale_betas_zero_snr": True}}))
    r = subprocess.run(cmd + ['train', '--config', str(tmp_path/'bad.json'), '--out', str(tmp_path/'bad'), '--no-progress'],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "use prediction_type='v_prediction' or 'sample'" in r.stderr and 'Traceback' not in r.stderr
