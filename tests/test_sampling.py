"""Sampling: DiT's noise protocol, reproducible bytes, guidance path, npz format."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from goc_utils.errors import InvalidArgumentError
from goc_utils.evaluation.sampling import save_samples_npz, write_npz
from goc_utils.model.sampler import class_labels, draw_noise, generate


def test_noise_is_drawn_like_dit_sample_py(tiny_random):
    noise = draw_noise(tiny_random, 3, seed=7)
    torch.manual_seed(7)
    assert torch.equal(noise, torch.randn(3, 1, 8, 8))


def test_same_seed_same_npz_bytes(tiny_random, tmp_path):
    a = generate(tiny_random, [1, 2, 3], seed=11, steps=6, cfg_scale=4.0)
    b = generate(tiny_random, [1, 2, 3], seed=11, steps=6, cfg_scale=4.0)
    save_samples_npz(tmp_path / "a.npz", a)
    save_samples_npz(tmp_path / "b.npz", b)
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    c = generate(tiny_random, [1, 2, 3], seed=12, steps=6, cfg_scale=4.0)
    assert not torch.equal(a.final, c.final)


def test_npz_layout_matches_the_adm_batch_format(tiny_random, tmp_path):
    result = generate(tiny_random, [0, 9], seed=0, steps=3, cfg_scale=1.5)
    save_samples_npz(tmp_path / "s.npz", result)
    with np.load(tmp_path / "s.npz") as data:
        assert sorted(data.files) == ["arr_0", "final", "labels"]
        assert data["arr_0"].dtype == np.uint8 and data["arr_0"].shape == (2, 8, 8, 1)
        assert data["labels"].tolist() == [0, 9]
        assert data["final"].dtype == np.float32 and data["final"].shape == (2, 1, 8, 8)
        expected = np.clip(127.5 * data["final"] + 128.0, 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
        np.testing.assert_array_equal(data["arr_0"], expected)


def test_write_npz_is_atomic_and_loadable(tmp_path):
    write_npz(tmp_path / "x.npz", arr_0=np.arange(6, dtype=np.uint8).reshape(1, 2, 3, 1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.npz"]  # no temporary file left
    assert np.load(tmp_path / "x.npz")["arr_0"].sum() == 15


def test_cfg_one_is_the_plain_conditional_model(tiny_random):
    """cfg = 1 takes the un-doubled path; the doubled CFG path at scale 1 gives the same eps."""
    plain = generate(tiny_random, [4, 5], seed=3, steps=5, cfg_scale=1.0)
    from goc_utils.model.diffusion import cfg_denoiser, create_diffusion
    from goc_utils.model.sampler import plain_forward

    d = create_diffusion(5)
    noise = draw_noise(tiny_random, 2, 3)
    y = torch.tensor([4, 5, 10, 10])
    den = cfg_denoiser(plain_forward(tiny_random), 1.0, 1)
    doubled = d.sample_loop(den, torch.cat([noise, noise]), y)[:2]
    torch.testing.assert_close(plain.final, doubled, rtol=1e-5, atol=1e-5)


def test_guidance_changes_samples(tiny_random):
    a = generate(tiny_random, [4, 5], seed=3, steps=5, cfg_scale=1.0)
    b = generate(tiny_random, [4, 5], seed=3, steps=5, cfg_scale=4.0)
    assert not torch.allclose(a.final, b.final)


def test_ddpm_sampler_runs_and_is_reproducible(tiny_random):
    a = generate(tiny_random, [1], seed=0, steps="10", sampler="ddpm")
    b = generate(tiny_random, [1], seed=0, steps="10", sampler="ddpm")
    assert torch.equal(a.final, b.final)


def test_forward_override_receives_each_step(tiny_random):
    steps = []

    def forward(x, t, y, step):
        steps.append(step)
        return tiny_random(x, t, y)

    generate(tiny_random, [2], seed=0, steps=7, cfg_scale=4.0, forward=forward)
    assert steps == list(range(7))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"labels": [10]}, "class id 10 is out of range"),
        ({"labels": [-1]}, "class id -1 is out of range"),
        ({"labels": []}, "no class labels"),
        ({"steps": 0}, "steps must be >= 1"),
        ({"cfg_scale": -1.0}, "cfg scale must be a number >= 0"),
        ({"cfg_scale": math.nan}, "cfg scale must be a number >= 0"),
    ],
)
def test_bad_sampling_arguments(tiny_random, kwargs, match):
    args = {"labels": [1], "steps": 3, "cfg_scale": 4.0} | kwargs
    with pytest.raises(InvalidArgumentError, match=match):
        generate(tiny_random, args.pop("labels"), **args)


def test_class_labels_grouping():
    assert class_labels([3, 7], 2) == [3, 3, 7, 7]
    with pytest.raises(InvalidArgumentError):
        class_labels([1], 0)
