"Bad input for the checkpoint loaders of sd_scratch.convert: each a clear error naming the problem, never a partial load."
import os, sys, types
import pytest, torch
from safetensors.torch import load_file, save_file
from sd_scratch.clip import CLIPTokenizer, CLIPTextConfig, CLIPTextEncoder
from sd_scratch.vae import VAEConfig, AutoencoderKL
from sd_scratch.unet import UNetConfig, UNet2DCondition
from sd_scratch.schedulers import NoiseSchedule
from sd_scratch.pipeline import StableDiffusion
from sd_scratch.convert import (SDConfig, CheckpointError, load_single_file, save_single_file, load_diffusers_folder,
                                read_checkpoint, ema_key)

SMALL = SDConfig(text=CLIPTextConfig(hidden_size=32, n_layers=1, n_heads=2, intermediate_size=64),
                 vae=VAEConfig(block_out_channels=(32, 32), layers_per_block=1, norm_num_groups=8),
                 unet=UNetConfig(block_out_channels=(32, 64), layers_per_block=1, cross_attn_levels=(True, False),
                                 num_heads=2, cross_attention_dim=32, norm_groups=8))


def same_weights(a, b):
    A, B = a.state_dict(), b.state_dict()
    return A.keys() == B.keys() and all(torch.equal(A[k], B[k]) for k in A)


@pytest.fixture(scope='module')
def saved(tmp_path_factory):
    "A small model and its single file."
    torch.manual_seed(0)
    sd = StableDiffusion(CLIPTokenizer(), CLIPTextEncoder(SMALL.text).eval(), AutoencoderKL(SMALL.vae).eval(),
                         UNet2DCondition(SMALL.unet).eval(), NoiseSchedule())
    path = save_single_file(sd, tmp_path_factory.mktemp('ckpt') / 'small.safetensors')
    return sd, path, load_file(path)


def test_round_trip_without_config(saved):
    sd, path, _ = saved
    back = load_single_file(path)   # the config comes from the file's metadata
    assert same_weights(sd.unet, back.unet) and same_weights(sd.vae, back.vae) and same_weights(sd.text_encoder, back.text_encoder)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match='not found'): load_single_file(tmp_path / 'nope.safetensors')


def test_folder_given_to_single_file_loader(tmp_path):
    with pytest.raises(CheckpointError, match='load_diffusers_folder'): load_single_file(tmp_path)


@pytest.mark.parametrize('suffix', ['.safetensors', '.ckpt'])
def test_truncated_file(saved, tmp_path, suffix):
    sd, path, state = saved
    full = tmp_path / f'full{suffix}'
    if suffix == '.ckpt': torch.save({'state_dict': state}, full)
    else: full.write_bytes(path.read_bytes())
    cut = tmp_path / f'cut{suffix}'
    cut.write_bytes(full.read_bytes()[:full.stat().st_size * 2 // 3])
    with pytest.raises(CheckpointError, match='truncated'): load_single_file(cut, config=SMALL)


def test_wrong_extension(saved, tmp_path):
    sd, path, _ = saved
    other = tmp_path / 'model.bin'
    other.write_bytes(path.read_bytes())
    with pytest.raises(CheckpointError, match=r"unsupported file type '\.bin'"): load_single_file(other)
    with pytest.raises(ValueError, match='.safetensors only'): save_single_file(sd, tmp_path / 'model.ckpt')
    assert not (tmp_path / 'model.ckpt').exists()


def test_missing_and_unexpected_keys_are_listed(saved, tmp_path):
    _, _, state = saved
    bad = {k: v for k, v in state.items() if k != 'first_stage_model.decoder.conv_out.weight'}
    bad['model.diffusion_model.label_emb.0.0.weight'] = torch.zeros(2)
    save_file(bad, tmp_path / 'bad.safetensors')
    with pytest.raises(CheckpointError) as e: load_single_file(tmp_path / 'bad.safetensors', config=SMALL)
    msg = str(e.value)
    assert '1 missing keys: first_stage_model.decoder.conv_out.weight' in msg
    assert '1 unexpected keys: model.diffusion_model.label_emb.0.0.weight' in msg


def test_wrong_config_lists_shapes(saved):
    _, path, _ = saved
    with pytest.raises(CheckpointError, match='shape mismatches') as e: load_single_file(path, config=SDConfig())
    assert 'config=SDConfig' in str(e.value) or 'missing keys' in str(e.value)


def test_other_schedule_refused(saved, tmp_path):
    _, _, state = saved
    other = dict(state, alphas_cumprod=NoiseSchedule(beta_schedule='linear', beta_start=1e-4, beta_end=0.02).alphas_cumprod)
    save_file(other, tmp_path / 'other.safetensors')
    with pytest.raises(CheckpointError, match='noise schedule'): load_single_file(tmp_path / 'other.safetensors', config=SMALL)


class RunsCode:
    def __init__(self, marker): self.marker = marker
    def __reduce__(self): return (os.system, (f'touch {self.marker}',))


def test_malicious_pickle_refused(saved, tmp_path):
    _, _, state = saved
    marker = tmp_path / 'pwned'
    torch.save({'state_dict': state, 'payload': RunsCode(marker)}, tmp_path / 'evil.ckpt')
    with pytest.raises(CheckpointError) as e: load_single_file(tmp_path / 'evil.ckpt', config=SMALL)
    assert 'system' in str(e.value) and 'safetensors' in str(e.value) and 'weights_only=True' in str(e.value)
    assert not marker.exists()


def test_ckpt_with_global_step_loads(saved, tmp_path):
    sd, _, state = saved
    torch.save({'state_dict': state, 'global_step': 470000, 'epoch': 3}, tmp_path / 'plain.ckpt')
    back = load_single_file(tmp_path / 'plain.ckpt', config=SMALL)
    assert same_weights(sd.unet, back.unet) and same_weights(sd.text_encoder, back.text_encoder)
    assert read_checkpoint(tmp_path / 'plain.ckpt')[1]['global_step'] == '470000'


def test_lightning_callback_class_and_ema(saved, tmp_path):
    "Old training checkpoints key callback states by the Lightning class; loadable without Lightning; EMA chosen by default."
    sd, _, state = saved
    names = ['pytorch_lightning', 'pytorch_lightning.callbacks', 'pytorch_lightning.callbacks.model_checkpoint']
    for n in names: sys.modules[n] = types.ModuleType(n)
    cls = type('ModelCheckpoint', (), {'__module__': names[-1]}); sys.modules[names[-1]].ModelCheckpoint = cls
    ema = {ema_key(k): v * 0 + 0.5 for k, v in state.items() if k.startswith('model.diffusion_model.')}
    try: torch.save({'state_dict': {**state, **ema, 'model_ema.num_updates': torch.tensor(7)}, 'global_step': 9,
                     'callbacks': {cls: {'best_model_score': None}}}, tmp_path / 'full.ckpt')
    finally:
        for n in names: del sys.modules[n]
    with_ema = load_single_file(tmp_path / 'full.ckpt', config=SMALL)
    live = load_single_file(tmp_path / 'full.ckpt', use_ema=False, config=SMALL)
    assert same_weights(live.unet, sd.unet)
    assert all((v == 0.5).all() for v in with_ema.unet.state_dict().values())
    # an EMA copy with holes is an error naming the EMA keys, not a mix of EMA and live weights
    holed = dict(state, **{k: v for i, (k, v) in enumerate(ema.items()) if i})
    save_file(holed, tmp_path / 'holed.safetensors')
    with pytest.raises(CheckpointError, match='missing keys: model_ema.diffusion_model'):
        load_single_file(tmp_path / 'holed.safetensors', config=SMALL)


def test_other_family_named(tmp_path):
    save_file({'conditioner.embedders.0.transformer.text_model.final_layer_norm.weight': torch.ones(4)}, tmp_path / 'xl.safetensors')
    with pytest.raises(CheckpointError, match='SDXL'): load_single_file(tmp_path / 'xl.safetensors')


def test_not_a_diffusers_folder(tmp_path):
    (tmp_path / 'unet').mkdir(); (tmp_path / 'unet' / 'config.json').write_text('{}')
    with pytest.raises(FileNotFoundError, match='not a diffusers folder: no config.json in vae/, text_encoder/'):
        load_diffusers_folder(tmp_path)
    with pytest.raises(FileNotFoundError, match='not found'): load_diffusers_folder(tmp_path / 'absent')


def test_float16_file(saved, tmp_path):
    "A half-precision file (as most shared SD files are) loads into float32 networks holding the rounded values."
    sd, _, _ = saved
    path = save_single_file(sd, tmp_path / 'half.safetensors', dtype=torch.float16)
    tensors = load_file(path)
    assert tensors['model.diffusion_model.out.2.weight'].dtype == torch.float16
    assert tensors['alphas_cumprod'].dtype == torch.float32      # the schedule stays exact
    back = load_single_file(path)
    assert back.unet.conv_out.weight.dtype == torch.float32
    assert torch.equal(back.unet.conv_out.weight, sd.unet.conv_out.weight.half().float())
