"""VAE loading and the latent sampling path, with a tiny random AutoencoderKL (nothing downloaded)."""

from __future__ import annotations

import pytest
import torch

from goc_utils.errors import VAEError
from goc_utils.model.sampler import generate
from goc_utils.model.vae import decode_latents, latent_scale, load_vae
from tests.conftest import small_dit


@pytest.fixture(scope="module")
def tiny_vae_dir(tmp_path_factory):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=4,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(4, 4, 4, 4),
        sample_size=32,
    )
    folder = tmp_path_factory.mktemp("vae") / "tiny-vae"
    vae.save_pretrained(folder)
    return folder


def test_load_local_vae_and_decode_with_the_scale_of_its_config(tiny_vae_dir, tmp_path):
    vae = load_vae(str(tiny_vae_dir))
    assert latent_scale(vae) == 0.18215  # sd-vae's value, from the config as for every VAE
    latents = torch.randn(3, 4, 4, 4)
    images = decode_latents(vae, latents, batch_size=2)
    assert images.shape == (3, 3, 32, 32)
    with torch.no_grad():
        direct = vae.decode(latents / 0.18215).sample
    torch.testing.assert_close(images, direct)
    vae.register_to_config(scaling_factor=0.5)  # another VAE's factor is read from its config, not a constant
    vae.save_pretrained(tmp_path / "other")
    other = load_vae(str(tmp_path / "other"))
    assert latent_scale(other) == 0.5
    with torch.no_grad():
        torch.testing.assert_close(decode_latents(other, latents), other.decode(latents / 0.5).sample)


def test_latent_dit_samples_through_the_vae(tiny_vae_dir):
    model = small_dit(in_channels=4, input_size=4, num_classes=1000)
    result = generate(model, [207, 992], seed=0, steps=3, cfg_scale=4.0, vae=load_vae(str(tiny_vae_dir)))
    assert result.final.shape == (2, 4, 4, 4)
    assert result.images.shape == (2, 32, 32, 3) and result.images.dtype.name == "uint8"


def test_offline_hub_id_names_the_folder_to_fill(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", "/nonexistent-hf-home")
    with pytest.raises(VAEError) as info:
        load_vae("ema")
    message = str(info.value)
    assert "\n" not in message
    assert "stabilityai/sd-vae-ft-ema" in message and "data/vae/sd-vae-ft-ema" in message


def test_folder_without_config_is_explained(tmp_path):
    with pytest.raises(VAEError, match="no config.json"):
        load_vae(str(tmp_path))


def test_unknown_vae_spec(monkeypatch):
    with pytest.raises(VAEError, match="neither 'ema', 'mse'"):
        load_vae("not-a-vae")
