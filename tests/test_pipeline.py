"Contract and bad-input tests of sd_scratch.schedulers and sd_scratch.pipeline (tiny random models, our modules only)."
import numpy as np, pytest, torch
from PIL import Image
from sd_scratch.schedulers import NoiseSchedule, DDIMSampler, DDPMSampler, make_timesteps, img2img_timesteps
from sd_scratch.clip import CLIPTokenizer, CLIPTextConfig, CLIPTextEncoder
from sd_scratch.vae import VAEConfig, AutoencoderKL
from sd_scratch.unet import UNetConfig, UNet2DCondition
from sd_scratch.pipeline import StableDiffusion


@pytest.fixture(scope='module')
def sd():
    torch.manual_seed(0)
    text = CLIPTextEncoder(CLIPTextConfig(hidden_size=32, n_layers=1, n_heads=2, intermediate_size=64)).eval()
    vae = AutoencoderKL(VAEConfig(block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=4)).eval()
    unet = UNet2DCondition(UNetConfig(block_out_channels=(16, 32), layers_per_block=1, cross_attn_levels=(True, False),
                                      num_heads=2, cross_attention_dim=32, norm_groups=8)).eval()
    return StableDiffusion(CLIPTokenizer(), text, vae, unet, NoiseSchedule())


def test_schedule_contract():
    s = NoiseSchedule()
    assert s.betas.shape == (1000,) and abs(s.betas[0].item() - 0.00085) < 1e-9 and abs(s.betas[-1].item() - 0.012) < 1e-8
    ddim = DDIMSampler(s, num_inference_steps=50, eta=0.0)
    assert ddim.timesteps.dtype == torch.long and ddim.timesteps[0] == 981 and ddim.timesteps[-1] == 1
    assert (ddim.timesteps[1:] < ddim.timesteps[:-1]).all()
    z, eps = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    z_prev, x0 = ddim.step(eps, ddim.timesteps[0], z, return_x0=True)
    assert z_prev.shape == z.shape and x0.shape == z.shape


@pytest.mark.parametrize('bad, msg', [
    (lambda: NoiseSchedule(beta_schedule='nope'), 'beta_schedule must be one of'),
    (lambda: DDIMSampler(NoiseSchedule(), 0), '>= 1'),
    (lambda: DDPMSampler(NoiseSchedule(), -3), '>= 1'),
    (lambda: DDIMSampler(NoiseSchedule(), 10, timestep_spacing='uniform'), 'timestep_spacing'),
    (lambda: make_timesteps(1000, 1000), 'out of range'),
    (lambda: img2img_timesteps(make_timesteps(1000, 50), 0.0), 'strength must be in (0, 1]'),
    (lambda: img2img_timesteps(make_timesteps(1000, 50), 1.01), 'strength must be in (0, 1]'),
    (lambda: img2img_timesteps(make_timesteps(1000, 4), 0.1), 'runs no denoising step'),
])
def test_scheduler_bad_input(bad, msg):
    with pytest.raises(ValueError, match=None) as e: bad()
    assert msg in str(e.value)


def test_seed_reproduces_and_pil_output(sd):
    a = sd.generate('a red circle', steps=2, seed=0, height=32, width=32, output_type='pt')
    b = sd.generate('a red circle', steps=2, seed=0, height=32, width=32, output_type='pt')
    c = sd.generate('a red circle', steps=2, seed=1, height=32, width=32, output_type='pt')
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == (1, 3, 32, 32) and 0 <= a.min() and a.max() <= 1
    imgs = sd.generate(['a red circle', 'a blue square'], steps=2, seed=0, height=32, width=48)
    assert len(imgs) == 2 and all(isinstance(i, Image.Image) and i.size == (48, 32) for i in imgs)


def test_img2img_runs(sd):
    init = Image.fromarray(np.full((32, 32, 3), 128, np.uint8))
    out = sd.generate('a red circle', init_image=init, strength=0.5, steps=4, seed=0, output_type='np')
    assert out.shape == (1, 32, 32, 3)


@pytest.mark.parametrize('kw, msg', [
    (dict(steps=0), '>= 1'),
    (dict(height=36, width=32), 'height must be a positive multiple of 8'),
    (dict(height=32), 'both height and width'),
    (dict(sampler='euler_ancestral'), "unknown sampler 'euler_ancestral'; valid samplers: ddim, ddpm, euler"),
    (dict(sampler='euler', eta=0.5), "'euler' ignores it"),
    (dict(sampler='ddpm', eta=1.0), "eta applies to the 'ddim' sampler"),
    (dict(init_image=Image.new('RGB', (32, 32)), strength=0.0), 'strength must be in (0, 1]'),
    (dict(init_image=Image.new('RGB', (32, 32)), strength=2.0), 'strength must be in (0, 1]'),
    (dict(init_image=Image.new('RGB', (36, 32))), 'multiples of 8'),
    (dict(latents=torch.randn(1, 4, 4, 4), init_image=Image.new('RGB', (32, 32))), 'not both'),
    (dict(latents=torch.randn(2, 4, 4, 4)), 'latents must have shape (1, 4'),
    (dict(negative_prompt=['a', 'b']), '2 negative prompts for 1 prompts'),
    (dict(output_type='jpg'), 'output_type'),
])
def test_generate_bad_input(sd, kw, msg):
    with pytest.raises(ValueError) as e: sd.generate('a red circle', **kw)
    assert msg in str(e.value)


def test_generate_bad_types(sd):
    with pytest.raises(TypeError, match='prompt must be a string'): sd.generate(3)
    with pytest.raises(TypeError, match='init_image must be'): sd.generate('x', init_image=np.zeros((32, 32, 3)))

def test_load_unet_round_trip_and_bad_files(sd, tmp_path):
    "A UNet weights file with its schedule loads back equal; one without a schedule, of another class, or missing is refused by name."
    from sd_scratch.core import save_weights, config_dict
    from sd_scratch.pipeline import load_unet
    sched = dict(num_train_timesteps=1000, beta_start=0.001, beta_end=0.02, beta_schedule='linear')
    save_weights(tmp_path/'unet.safetensors', sd.unet.state_dict(), 'UNet2DCondition', config_dict(sd.unet.cfg), extra=dict(schedule=sched, step=7))
    unet, schedule = load_unet(tmp_path/'unet.safetensors')
    assert not unet.training and unet.cfg == sd.unet.cfg
    assert all(torch.equal(v, sd.unet.state_dict()[k]) for k, v in unet.state_dict().items())
    assert torch.allclose(schedule.betas, NoiseSchedule(**sched).betas)
    sd.unet.save_file(tmp_path/'bare.safetensors')
    with pytest.raises(ValueError, match='noise schedule'): load_unet(tmp_path/'bare.safetensors')
    sd.vae.save_file(tmp_path/'vae.safetensors')
    with pytest.raises(ValueError, match='not a UNet2DCondition'): load_unet(tmp_path/'vae.safetensors')
    with pytest.raises(FileNotFoundError): load_unet(tmp_path/'nowhere.safetensors')
    with pytest.raises(ValueError, match="only 'toy'"): StableDiffusion.from_pretrained('sd15', unet=tmp_path/'unet.safetensors')
