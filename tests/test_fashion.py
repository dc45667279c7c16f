"""The tiny-fashion tier: Fashion-MNIST loader, the project's VAE, the latent DiT, the judge, the pipeline export.

Tests that read the raw data set skip when Debian's ``dataset-fashion-mnist`` is not installed; the
committed files (VAE, DiT, judge, reference batch with the 10,000 test images) need nothing else.
"""

from __future__ import annotations

import gzip
import subprocess
import sys

import numpy as np
import pytest
import torch

from goc_utils import paths
from goc_utils.datasets import (
    FASHION_MNIST_ENV,
    DatasetMissingError,
    fashion_mnist_available,
    from_uint8,
    load_fashion_mnist,
    load_fashion_tensors,
)
from goc_utils.evaluation.metrics.batches import batch_features
from goc_utils.evaluation.metrics.features import build_extractor
from goc_utils.evaluation.metrics.judges import class_agreement
from goc_utils.model.checkpoints import load_model
from goc_utils.model.presets import create_model, model_info
from goc_utils.model.sampler import generate
from goc_utils.model.vae import latent_scale, load_vae
from goc_utils.training.vae import build_vae, measure_scaling_factor, reconstruction_psnr

needs_data = pytest.mark.skipif(
    not fashion_mnist_available(),
    reason="Fashion-MNIST is not installed: apt-get install dataset-fashion-mnist (or set GOC_FASHION_MNIST_DIR)",
)


@pytest.fixture(scope="module")
def test_images() -> tuple[np.ndarray, np.ndarray]:
    """The 10,000 padded test images and labels, from the committed reference batch."""
    with np.load(paths.FASHION_REFERENCE_BATCH) as data:
        return data["arr_0"], data["arr_1"]


def _write_idx(path, magic: int, array: np.ndarray) -> None:
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def test_loader_reads_idx_files_from_the_variable_and_pads_to_32(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 6), ("t10k", 4)):
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", 2051, rng.integers(0, 256, (n, 28, 28)))
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", 2049, np.arange(n) % 10)
    monkeypatch.setenv(FASHION_MNIST_ENV, str(tmp_path))
    images, labels = load_fashion_mnist("test")
    assert images.shape == (4, 28, 28) and labels.tolist() == [0, 1, 2, 3]
    x, y = load_fashion_tensors("train")
    assert x.shape == (6, 1, 32, 32) and y.dtype == torch.int64
    assert torch.all(x[:, :, :2] == -1) and torch.all(x[:, :, :, -2:] == -1)  # black border
    torch.testing.assert_close(x[:, 0, 2:30, 2:30], from_uint8(load_fashion_mnist("train")[0][..., None])[:, 0])


def test_missing_data_is_one_line_naming_the_package_and_the_variable(tmp_path, monkeypatch):
    monkeypatch.setenv(FASHION_MNIST_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(DatasetMissingError) as info:
        load_fashion_mnist("train")
    message = str(info.value)
    assert "\n" not in message and "dataset-fashion-mnist" in message and FASHION_MNIST_ENV in message
    (tmp_path / "bad").mkdir()
    for name in ("train-images-idx3", "train-labels-idx1", "t10k-images-idx3", "t10k-labels-idx1"):
        (tmp_path / "bad" / f"{name}-ubyte.gz").write_bytes(b"not gzip")
    monkeypatch.setenv(FASHION_MNIST_ENV, str(tmp_path / "bad"))
    with pytest.raises(DatasetMissingError, match="dataset-fashion-mnist"):
        load_fashion_mnist("test")


def test_training_without_data_fails_in_one_line(tmp_path):
    env = {"PATH": "/usr/bin:/bin", FASHION_MNIST_ENV: str(tmp_path)}
    argv = [sys.executable, "-m", "goc_utils.cli", "train-classifier", "--model", "tiny-fashion",
            "--out", str(tmp_path / "judge.safetensors")]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "apt-get install dataset-fashion-mnist" in proc.stderr
    assert not (tmp_path / "judge.safetensors").exists()
    bad = subprocess.run([sys.executable, "-m", "goc_utils.cli", "train-fashion", "--stages", "vae,gan"],
                         capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    assert bad.returncode == 2 and "unknown stage(s) gan" in bad.stderr and bad.stderr.count("\n") == 1


@needs_data
def test_the_debian_data_set_is_complete():
    (train, train_labels), (test, test_labels) = load_fashion_mnist("train"), load_fashion_mnist("test")
    assert train.shape == (60_000, 28, 28) and test.shape == (10_000, 28, 28)
    assert np.bincount(train_labels).tolist() == [6000] * 10 and np.bincount(test_labels).tolist() == [1000] * 10


def test_reference_batch_is_the_padded_test_set_with_judge_statistics(test_images):
    images, labels = test_images
    assert images.shape == (10_000, 32, 32, 1) and images.dtype == np.uint8
    assert np.all(images[:, :2] == 0) and np.bincount(labels).tolist() == [1000] * 10
    assert batch_features(paths.FASHION_REFERENCE_BATCH) == "fashion"
    if fashion_mnist_available():
        np.testing.assert_array_equal(images[:, 2:30, 2:30, 0], load_fashion_mnist("test")[0])


def test_preset_architecture_is_dit_xl2_in_miniature():
    info = model_info("tiny-fashion")
    assert info["latent"] and info["image_size"] == 32 and info["input_size"] == 8
    assert info["in_channels"] == 4 and info["patch_size"] == 2 and info["tokens"] == 16
    assert info["depth"] >= 12 and info["learn_sigma"] and info["num_classes"] == 10
    model = create_model("tiny-fashion")
    assert model.y_embedder.embedding_table.weight.shape[0] == 11  # 10 classes + the null class
    assert model(torch.randn(2, 4, 8, 8), torch.tensor([5, 900]), torch.tensor([0, 10])).shape == (2, 8, 8, 8)


def test_committed_weights_load_and_match_the_preset():
    model = load_model("tiny-fashion")
    assert not model.training and model.in_channels == 4 and model.num_tokens == 16


def test_vae_loads_with_plain_diffusers_and_has_sd_vae_structure():
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(str(paths.TINY_FASHION_VAE))
    assert vae.config.in_channels == vae.config.out_channels == 1 and vae.config.latent_channels == 4
    with torch.no_grad():
        latents = vae.encode(torch.zeros(2, 1, 32, 32)).latent_dist.mean
    assert latents.shape == (2, 4, 8, 8)  # factor 4: 32x32x1 -> 8x8x4
    assert 0 < vae.config.scaling_factor != 0.18215
    assert latent_scale(load_vae(str(paths.TINY_FASHION_VAE))) == vae.config.scaling_factor


def test_vae_round_trips_test_images_at_the_stated_psnr(test_images):
    vae = load_vae(str(paths.TINY_FASHION_VAE))
    images = torch.from_numpy(test_images[0][::10]).permute(0, 3, 1, 2).float() / 127.5 - 1  # 1,000 images
    result = reconstruction_psnr(vae, images)
    assert result["psnr_32"] >= 26.0 and result["psnr_28"] < result["psnr_32"]


def test_measured_scaling_factor_gives_unit_variance_latents():
    torch.manual_seed(0)
    vae = build_vae((16, 16, 16)).eval()
    images = torch.rand(64, 1, 32, 32) * 2 - 1
    scale = measure_scaling_factor(vae, images, seed=0)
    with torch.no_grad():
        dist = vae.encode(images).latent_dist
        z = dist.mean + dist.std * torch.randn(dist.mean.shape, generator=torch.Generator().manual_seed(0))
    assert abs((z * scale).double().std().item() - 1) < 1e-4
    assert scale == float(f"{scale:.5g}")


def test_judge_is_deterministic_and_accurate_on_the_test_set(test_images):
    images, labels = test_images
    extractor = build_extractor("fashion")
    a, b = extractor(images[:300]), build_extractor("fashion")(images[:300])
    for field in ("pool", "spatial", "logits"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert a.pool.shape == (300, 256) and a.spatial.shape == (300, 8 * 8 * 7) and a.logits.shape == (300, 10)
    assert class_agreement(images, labels, "tiny-fashion") >= 0.90


def test_goc_fid_uses_the_judge_named_by_the_reference_batch(tmp_path, test_images):
    from goc_utils.files import write_npz

    images, labels = test_images
    write_npz(tmp_path / "s.npz", arr_0=images[:500], arr_1=labels[:500])
    argv = [sys.executable, "-m", "goc_utils.cli", "fid", str(paths.FASHION_REFERENCE_BATCH), str(tmp_path / "s.npz")]
    default = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    explicit = subprocess.run([*argv, "--features", "fashion"], capture_output=True, text=True, timeout=300)
    assert default.returncode == 0, default.stderr
    assert "FID" in default.stdout and default.stdout == explicit.stdout  # no Inception weights needed


def test_tiny_fashion_samples_through_its_vae_and_the_judge_recognises_them():
    model = load_model("tiny-fashion")
    vae = load_vae(str(paths.TINY_FASHION_VAE))
    labels = [c for c in range(10) for _ in range(5)]
    result = generate(model, labels, seed=0, steps=20, cfg_scale=4.0, vae=vae)
    assert result.final.shape == (50, 4, 8, 8) and result.images.shape == (50, 32, 32, 1)
    assert class_agreement(result.images, np.array(labels), "tiny-fashion") >= 0.85  # 95.6% on 1,000 (report)


def test_goc_sample_cli_writes_a_grid_and_an_npz(tmp_path):
    out, npz = tmp_path / "grid.png", tmp_path / "s.npz"
    proc = subprocess.run(
        [sys.executable, "-m", "goc_utils.cli", "sample", "--model", "tiny-fashion", "--steps", "5", "--classes", "0,7",
         "--out", str(out), "--save-npz", str(npz), "--method", "fora-50+goc"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert out.stat().st_size > 0
    with np.load(npz) as data:
        assert data["arr_0"].shape == (2, 32, 32, 1) and data["labels"].tolist() == [0, 7]


def test_exported_dit_pipeline_loads_and_samples(tmp_path):
    from diffusers import DiTPipeline

    out = tmp_path / "pipe"
    proc = subprocess.run(
        [sys.executable, "-m", "goc_utils.cli", "export-diffusers", "--model", "tiny-fashion", "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    pipe = DiTPipeline.from_pretrained(str(out))
    assert pipe.vae.config.scaling_factor == load_vae(str(paths.TINY_FASHION_VAE)).config.scaling_factor
    assert pipe.get_label_ids(["Sneaker"]) == [7]
    # guidance_scale 1: diffusers' DiTPipeline hard-codes ImageNet's null label 1000 for classifier-free guidance
    images = pipe(class_labels=[7, 1], num_inference_steps=4, guidance_scale=1.0, output_type="np",
                  generator=torch.Generator().manual_seed(0)).images  # fmt: skip
    assert images.shape == (2, 32, 32, 1) and np.isfinite(images).all()


def _goc(*argv: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "goc_utils.cli", *argv], capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


def test_info_bench_and_inflections_work_out_of_the_box():
    info = _goc("info", "--model", "tiny-fashion")
    assert info.returncode == 0 and '"tokens": 16' in info.stdout
    bench = _goc("bench", "--model", "tiny-fashion", "--methods", "none,fora-50+goc,l2c+goc:auto", "--batch", "2",
                 "--repeats", "1", "--warmup", "0", "--cfg-scale", "4.0")  # fmt: skip
    assert bench.returncode == 0, bench.stderr
    assert "l2c+goc:auto" in bench.stdout  # the committed router and priors are found without flags
    priors = str(paths.DATA_DIR / "priors" / "tiny-fashion_ddim20_cfg4.safetensors")
    inflections = _goc("inflections", priors, "--schedule", "l2c", "--weight", "auto")
    assert inflections.returncode == 0, inflections.stderr


def test_eval_through_the_diffusers_backend_scores_with_the_judge(tmp_path):
    proc = _goc("eval", "--model", "tiny-fashion", "--backend", "diffusers", "--methods", "none,fora-50+goc",
                "--num-samples", "20", "--per-device-batch", "10", "--latency-repeats", "1",
                "--out", str(tmp_path))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    table = (tmp_path / "results.md").read_text()
    assert "fora-50+goc" in table and "agreement" in table.lower()


def test_priors_of_two_classes(tmp_path):
    out = tmp_path / "p.safetensors"
    proc = _goc("priors", "--model", "tiny-fashion", "--classes", "0,7", "--steps", "4", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert out.is_file()


@needs_data
def test_router_training_runs_on_the_tier_latents(tmp_path):
    out = tmp_path / "r.pt"
    proc = _goc("train-router", "--model", "tiny-fashion", "--train-steps", "2", "--batch-size", "4", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert out.is_file() and "reuses" in proc.stdout
