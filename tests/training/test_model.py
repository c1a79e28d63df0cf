"""The VAE's public API: shapes, ranges, presets and reproducible sampling."""

import pytest
import torch

from models.vae import PRESETS, ConvVAE, VAEConfig, build_model, pad_to_32


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_encode_decode_shapes_and_ranges(preset):
    model = build_model(preset).eval()
    x = torch.rand(3, 1, 32, 32)
    mu, logvar = model.encode(x)
    assert mu.shape == logvar.shape == (3, model.latent_dim)
    out = model.decode(mu)
    assert out.shape == (3, 1, 32, 32)
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_seed_preset_is_the_notebook_architecture():
    cfg = PRESETS["seed"]
    assert cfg.channels == (16, 32, 64, 128)
    assert cfg.latent_dim == 200
    assert cfg.image_size == 32


def test_sample_is_reproducible_with_a_generator():
    model = build_model("tiny").eval()
    a = model.sample(4, generator=torch.Generator().manual_seed(7))
    b = model.sample(4, generator=torch.Generator().manual_seed(7))
    c = model.sample(4, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_temperature_scales_the_prior_draw():
    model = build_model("tiny")
    z1 = model.sample_latents(500, torch.Generator().manual_seed(0), temperature=1.0)
    z0 = model.sample_latents(500, torch.Generator().manual_seed(0), temperature=0.5)
    assert torch.allclose(z0, z1 * 0.5)


def test_config_round_trips_through_a_dict():
    cfg = PRESETS["default"]
    assert VAEConfig.from_dict(cfg.to_dict()) == cfg


def test_config_rejects_impossible_shapes():
    with pytest.raises(ValueError, match="divisible"):
        VAEConfig(image_size=30, channels=(8, 16))
    with pytest.raises(ValueError, match="unknown VAEConfig fields"):
        VAEConfig.from_dict({"latent": 3})


def test_pad_to_32_keeps_the_digit_and_adds_a_zero_border():
    x = torch.rand(2, 1, 28, 28)
    padded = pad_to_32(x)
    assert padded.shape == (2, 1, 32, 32)
    assert torch.equal(padded[..., 2:30, 2:30], x)
    assert padded[..., :2, :].abs().sum() == 0


def test_forward_returns_logits_and_posterior():
    model = ConvVAE(PRESETS["tiny"])
    logits, mu, logvar = model(torch.rand(2, 1, 32, 32))
    assert logits.shape == (2, 1, 32, 32)
    assert mu.shape == (2, 8)


def test_decode_leaves_the_unmodelled_padding_black():
    model = build_model("tiny").eval()
    out = model.decode(torch.randn(3, model.latent_dim))
    assert out[..., :2, :].abs().sum() == 0 and out[..., :, -2:].abs().sum() == 0
    assert out[..., 2:30, 2:30].min() > 0
