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

def test_gradient_checkpointing_recomputes_the_blocks():
    "Switched on, every ResBlock and SpatialTransformer runs again in the backward pass (and the gradients do not change); "
    "a switch that did nothing would fail the count."
    from sd_scratch.unet import ResBlock
    from sd_scratch.attention import SpatialTransformer
    calls, saved = [0], {cls: cls.forward for cls in (ResBlock, SpatialTransformer)}
    def counting(f):
        def forward(self, *a, **k): calls[0] += 1; return f(self, *a, **k)
        return forward
    z, t, ctx = torch.randn(2, 4, 8, 8), torch.tensor([3, 500]), torch.randn(2, 5, 16)
    results = []
    for on in (False, True):
        torch.manual_seed(0)
        m = UNet2DCondition(UNetConfig(**TINY)).train()
        if on: assert m.enable_gradient_checkpointing() is m and m.gradient_checkpointing
        for cls, f in saved.items(): cls.forward = counting(f)
        calls[0] = 0
        try: m(z, t, ctx).square().mean().backward()
        finally:
            for cls, f in saved.items(): cls.forward = f
        results.append((calls[0], {k: p.grad for k, p in m.named_parameters()}))
    n_blocks = sum(isinstance(x, (ResBlock, SpatialTransformer)) for x in m.modules())
    assert results[0][0] == n_blocks and results[1][0] == 2 * n_blocks
    for k, g in results[0][1].items(): assert torch.allclose(results[1][1][k], g, atol=1e-6, rtol=1e-5), k
    assert m.disable_gradient_checkpointing().gradient_checkpointing is False
