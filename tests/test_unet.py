"Contract tests for sd_scratch.unet: the public call, the converter's key checks and bad input, on a tiny config."
import pytest, torch
from sd_scratch.unet import UNetConfig, UNet2DCondition, unet_from_diffusers

TINY = dict(block_out_channels=(32, 64), layers_per_block=1, cross_attn_levels=(True, False), num_heads=2,
            cross_attention_dim=16, norm_groups=8)

@pytest.fixture(scope='module')
def unet(): return UNet2DCondition(UNetConfig(**TINY)).eval()

def test_default_config_is_sd1x():
    with torch.device('meta'): m = UNet2DCondition(UNetConfig())
    assert sum(p.numel() for p in m.parameters()) == 859_520_964

@pytest.mark.parametrize('t', [torch.tensor([1, 999]), torch.tensor(5), 7])
def test_forward_shapes(unet, t):
    z, ctx = torch.randn(2, 4, 8, 8), torch.randn(2, 5, 16)
    with torch.no_grad(): assert unet(z, t, ctx).shape == (2, 4, 8, 8)

@pytest.mark.parametrize('hw', [(9, 8), (7, 5), (1, 3)])
def test_odd_latent_sizes(unet, hw):
    "Any latent size works: the upsamplers reach the skips' size when a side was odd on the way down."
    with torch.no_grad(): assert unet(torch.randn(1, 4, *hw), 5, torch.randn(1, 5, 16)).shape == (1, 4, *hw)

@pytest.mark.parametrize('z,t,ctx,msg', [
    ((2, 4, 0, 8), (2,), (2, 5, 16), 'H, W >= 1'),
    ((2, 4, 8, 8), (2,), (2, 5, 15), 'context must be (B, L, 16)'),
    ((2, 4, 8, 8), (3,), (2, 5, 16), 'one entry per sample (2)'),
    ((2, 3, 8, 8), (2,), (2, 5, 16), 'latents must be (B, 4, H, W)'),
])
def test_bad_input(unet, z, t, ctx, msg):
    with pytest.raises(ValueError, match=msg.replace('(', r'\(').replace(')', r'\)').replace('*', r'\*')):
        unet(torch.randn(*z), torch.zeros(*t, dtype=torch.long), torch.randn(*ctx))

def test_state_dict_round_trip_and_errors(unet):
    sd = unet.state_dict()
    again = unet_from_diffusers(sd, UNetConfig(**TINY))
    assert all(torch.equal(again.state_dict()[k], v) for k, v in sd.items())
    with pytest.raises(ValueError, match='pass config'): unet_from_diffusers(sd)
    with pytest.raises(KeyError, match='unexpected keys: extra'): unet_from_diffusers({**sd, 'extra': torch.zeros(1)}, UNetConfig(**TINY))

def test_bad_config():
    with pytest.raises(ValueError, match='one entry per level'): UNetConfig(num_heads=(8, 8))
    with pytest.raises(ValueError, match='not divisible by num_heads'): UNetConfig(num_heads=7)
