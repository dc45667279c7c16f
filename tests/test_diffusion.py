"""Sampler semantics against ADM / DiT: respacing, DDIM and DDPM steps, guidance, loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from goc_utils.errors import InvalidArgumentError
from goc_utils.model.diffusion import (
    cfg_denoiser,
    create_diffusion,
    guidance_channels,
    linear_betas,
    space_timesteps,
)

# Timesteps kept by ADM's space_timesteps(1000, N) (guided-diffusion respace.py), recorded from the reference.
ADM_TIMESTEPS = {
    "10": [0, 111, 222, 333, 444, 555, 666, 777, 888, 999],
    "20": [0, 53, 105, 158, 210, 263, 315, 368, 421, 473, 526, 578, 631, 684, 736, 789, 841, 894, 946, 999],
    "25": [
        0,
        42,
        83,
        125,
        166,
        208,
        250,
        291,
        333,
        375,
        416,
        458,
        500,
        541,
        583,
        624,
        666,
        708,
        749,
        791,
        832,
        874,
        916,
        957,
        999,
    ],
    "50": [
        0,
        20,
        41,
        61,
        82,
        102,
        122,
        143,
        163,
        183,
        204,
        224,
        245,
        265,
        285,
        306,
        326,
        347,
        367,
        387,
        408,
        428,
        449,
        469,
        489,
        510,
        530,
        550,
        571,
        591,
        612,
        632,
        652,
        673,
        693,
        714,
        734,
        754,
        775,
        795,
        816,
        836,
        856,
        877,
        897,
        917,
        938,
        958,
        979,
        999,
    ],
}
# "250": stride 4 everywhere except three strides of 5 (after 164, 497 and 830).
ADM_250 = sorted({*range(0, 165, 4), *range(169, 498, 4), *range(502, 831, 4), *range(835, 1000, 4)})


@pytest.mark.parametrize("steps", ["10", "20", "25", "50"])
def test_respaced_timesteps_equal_adm(steps):
    assert sorted(space_timesteps(1000, steps)) == ADM_TIMESTEPS[steps]
    assert create_diffusion(steps).timestep_map.tolist() == ADM_TIMESTEPS[steps]


def test_respaced_250_equals_adm():
    assert len(ADM_250) == 250
    assert sorted(space_timesteps(1000, "250")) == ADM_250
    assert sorted(space_timesteps(1000, 250)) == ADM_250


def test_ddim_and_section_respacing():
    assert sorted(space_timesteps(1000, "ddim20")) == list(range(0, 1000, 50))
    assert sorted(space_timesteps(1000, "ddim50")) == list(range(0, 1000, 20))
    assert sorted(space_timesteps(300, "10,15,20"))[:3] == [0, 11, 22]
    assert len(space_timesteps(300, "10,15,20")) == 45
    for bad in ("0", "abc", "ddimx", "2000"):
        with pytest.raises(InvalidArgumentError):
            space_timesteps(1000, bad)


def test_linear_betas_and_respaced_alphas_cumprod_are_preserved():
    betas = linear_betas(1000)
    assert betas[0] == pytest.approx(1e-4) and betas[-1] == pytest.approx(0.02) and betas.dtype == np.float64
    base = np.cumprod(1 - betas)
    d = create_diffusion("20")
    np.testing.assert_allclose(d.alphas_cumprod, base[d.timestep_map], rtol=1e-12)
    assert create_diffusion("").num_timesteps == 1000


def _alpha_bars(d, i):
    base = np.cumprod(1 - linear_betas(1000))
    ab = base[d.timestep_map[i]]
    ab_prev = base[d.timestep_map[i - 1]] if i > 0 else 1.0
    return ab, ab_prev


@pytest.mark.parametrize("i", [0, 7, 19])
def test_one_ddim_step_equals_closed_form(i):
    torch.manual_seed(1)
    d = create_diffusion("20")
    x = torch.randn(3, 4, 6, 6)
    out = torch.randn(3, 8, 6, 6)
    t = torch.full((3,), i, dtype=torch.long)
    got = d.ddim_step(out, x, t, eta=0.0).double()
    ab, ab_prev = _alpha_bars(d, i)
    eps = out[:, :4].double()
    x0 = (x.double() - np.sqrt(1 - ab) * eps) / np.sqrt(ab)
    expected = np.sqrt(ab_prev) * x0 + np.sqrt(1 - ab_prev) * eps
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_one_ddpm_step_equals_closed_form_with_learned_range_variance():
    d = create_diffusion("20")
    i = 9
    torch.manual_seed(2)
    x, out = torch.randn(2, 1, 4, 4), torch.randn(2, 2, 4, 4).clamp(-1, 1)
    t = torch.full((2,), i, dtype=torch.long)
    torch.manual_seed(5)
    got = d.ddpm_step(out, x, t).double()
    torch.manual_seed(5)
    noise = torch.randn_like(x).double()
    ab, ab_prev = _alpha_bars(d, i)
    beta = 1 - ab / ab_prev
    eps, v = out[:, :1].double(), out[:, 1:].double()
    x0 = (x.double() - np.sqrt(1 - ab) * eps) / np.sqrt(ab)
    mean = beta * np.sqrt(ab_prev) / (1 - ab) * x0 + (1 - ab_prev) * np.sqrt(1 - beta) / (1 - ab) * x.double()
    log_var = (v + 1) / 2 * np.log(beta) + (1 - v) / 2 * np.log(beta * (1 - ab_prev) / (1 - ab))
    torch.testing.assert_close(got, mean + torch.exp(0.5 * log_var) * noise, rtol=1e-4, atol=1e-4)


def test_last_ddpm_step_adds_no_noise():
    d = create_diffusion("10")
    x, out = torch.randn(2, 1, 4, 4), torch.zeros(2, 2, 4, 4)
    t = torch.zeros(2, dtype=torch.long)
    torch.testing.assert_close(d.ddpm_step(out, x, t), d.p_mean_variance(out, x, t)["mean"])


def test_model_is_called_with_original_timesteps_and_step_index():
    d = create_diffusion("10")
    seen = []

    def denoiser(x, t, y, step):
        seen.append((step, int(t[0])))
        return torch.zeros(x.shape[0], 2 * x.shape[1], *x.shape[2:])

    d.sample_loop(denoiser, torch.randn(1, 1, 4, 4), torch.zeros(1, dtype=torch.long))
    assert seen == list(enumerate(reversed(ADM_TIMESTEPS["10"])))


@pytest.mark.parametrize("channels", [4, 1, 3])
def test_cfg_guides_first_three_eps_channels_of_latents_only(channels):
    assert guidance_channels(channels) == (3 if channels == 4 else channels)
    n = 2
    cond, uncond = torch.randn(n, 2 * channels, 4, 4), torch.randn(n, 2 * channels, 4, 4)
    received = {}

    def forward(x, t, y, step):
        received["x"], received["y"] = x, y
        return torch.cat([cond, uncond], dim=0)

    denoise = cfg_denoiser(forward, 4.0, channels)
    z = torch.randn(n, channels, 4, 4)
    x = torch.cat([z, torch.randn_like(z)], dim=0)  # second half is ignored: DiT feeds [half, half]
    y = torch.tensor([3, 5, 10, 10])
    out = denoise(x, torch.zeros(2 * n, dtype=torch.long), y, step=0)
    assert torch.equal(received["x"], torch.cat([z, z], dim=0)) and torch.equal(received["y"], y)
    g = guidance_channels(channels)
    guided = uncond[:, :g] + 4.0 * (cond[:, :g] - uncond[:, :g])
    torch.testing.assert_close(out[:n, :g], guided)
    torch.testing.assert_close(out[n:, :g], guided)
    assert torch.equal(out[:n, g:], cond[:, g:]) and torch.equal(out[n:, g:], uncond[:, g:])


def test_training_loss_terms():
    d = create_diffusion("")
    torch.manual_seed(0)
    x0 = torch.rand(4, 1, 8, 8) * 2 - 1
    noise = torch.randn_like(x0)
    t = torch.tensor([0, 1, 500, 999])
    out = torch.randn(4, 2, 8, 8)
    terms = d.training_losses(lambda x, tt, y: out, x0, t, torch.zeros(4, dtype=torch.long), noise=noise)
    torch.testing.assert_close(terms["mse"], ((noise - out[:, :1]) ** 2).mean(dim=(1, 2, 3)))
    assert torch.all(terms["vb"] >= 0) and torch.isfinite(terms["vb"]).all()
    torch.testing.assert_close(terms["loss"], terms["mse"] + terms["vb"])
    # a perfect variance prediction at t > 0 has (numerically) zero KL
    perfect = torch.cat([out[:, :1], torch.full_like(out[:, :1], -1.0)], dim=1)  # -1 -> posterior variance
    x_t = d.q_sample(x0, t, noise)
    true_mean = d.q_posterior_mean(x0, x_t, t)
    eps_for_true_mean = (
        x_t - torch.from_numpy(d.sqrt_alphas_cumprod)[t].float().view(-1, 1, 1, 1) * x0
    ) / torch.from_numpy(d.sqrt_one_minus_alphas_cumprod)[t].float().view(-1, 1, 1, 1)
    perfect[:, :1] = eps_for_true_mean
    kl = d._vb_bits_per_dim(perfect, x0, x_t, t)
    assert torch.all(kl[1:] < 1e-3)
    assert torch.allclose(d.p_mean_variance(perfect, x_t, t)["mean"][1:], true_mean[1:], atol=1e-4)


def test_single_step_chain_samples():
    d = create_diffusion("1")
    out = d.sample_loop(lambda x, t, y, step: torch.zeros(1, 2, 4, 4), torch.randn(1, 1, 4, 4), torch.zeros(1).long())
    assert torch.isfinite(out).all()
