"""ADM metrics against independent computations, the Inception port's plumbing, npz batches, fidelity."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.special import softmax

from goc_utils import paths
from goc_utils.errors import CheckpointError, InvalidArgumentError
from goc_utils.evaluation.metrics.adm import (
    FIDStatistics,
    MetricError,
    compute_statistics,
    fid_bootstrap_std,
    inception_score,
    manifold_radii,
    precision_recall,
)
from goc_utils.evaluation.metrics.batches import (
    BatchFileError,
    batch_info,
    check_same_size,
    iter_images,
    read_statistics,
)
from goc_utils.evaluation.metrics.evaluate import evaluate_batches
from goc_utils.evaluation.metrics.features import build_extractor, extract
from goc_utils.evaluation.metrics.fidelity import file_fidelity, paired_psnr_difference, psnr, ssim
from goc_utils.evaluation.metrics.inception import FIDInception, load_inception, random_inception, resize_bilinear_tf1
from goc_utils.evaluation.sampling import write_npz

# ----------------------------------------------------------------------------- FID


def _fid_eig(mu1, s1, mu2, s2) -> float:
    """Independent FID: tr sqrt(s1 s2) = sum sqrt(eig(sqrt(s1) s2 sqrt(s1))), symmetric eigensolvers only."""
    w, v = np.linalg.eigh(s1)
    root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = np.linalg.eigvalsh(root @ s2 @ root)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.sum(np.sqrt(np.clip(inner, 0, None))))


def test_fid_of_shifted_unit_gaussians_is_the_squared_shift():
    mu = np.array([3.0, 4.0, 0.0])
    fid = FIDStatistics(mu, np.eye(3)).frechet_distance(FIDStatistics(np.zeros(3), np.eye(3)))
    assert fid == pytest.approx(25.0, abs=1e-9)


def test_fid_of_diagonal_gaussians_has_the_closed_form():
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 9.0])
    fid = FIDStatistics(np.ones(3), np.diag(a)).frechet_distance(FIDStatistics(np.zeros(3), np.diag(b)))
    assert fid == pytest.approx(3.0 + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2), abs=1e-9)


def test_fid_matches_the_eigenvalue_computation_on_random_features():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 16)) @ rng.normal(size=(16, 16))
    y = rng.normal(size=(300, 16)) @ rng.normal(size=(16, 16)) + 0.5
    sx, sy = compute_statistics(x), compute_statistics(y)
    assert np.allclose(sx.sigma, np.cov(x.T)) and np.allclose(sx.mu, x.mean(0))
    expected = _fid_eig(x.mean(0), np.cov(x.T), y.mean(0), np.cov(y.T))
    assert sx.frechet_distance(sy) == pytest.approx(expected, rel=1e-7)


def test_fid_of_a_set_with_itself_is_zero():
    x = np.random.default_rng(1).normal(size=(200, 8))
    s = compute_statistics(x)
    assert abs(s.frechet_distance(s)) < 1e-8


def test_fid_rejects_different_dimensions_and_nan_features():
    with pytest.raises(MetricError, match="different sizes"):
        FIDStatistics(np.zeros(3), np.eye(3)).frechet_distance(FIDStatistics(np.zeros(4), np.eye(4)))
    x = np.ones((10, 3))
    x[4, 1] = np.nan
    with pytest.raises(MetricError, match="1 sample.*NaN"):
        compute_statistics(x)


# ----------------------------------------------------------------------------- Inception Score


def _is_loop(logits: np.ndarray, split: int) -> float:
    p = softmax(logits.astype(np.float64), axis=1)
    scores = []
    for start in range(0, len(p), split):
        part = p[start : start + split]
        marginal = part.mean(0)
        kl = [sum(pi * np.log(pi / m) for pi, m in zip(row, marginal, strict=True) if pi > 0) for row in part]
        scores.append(np.exp(np.mean(kl)))
    return float(np.mean(scores))


def test_inception_score_matches_a_loop_with_splits():
    logits = np.random.default_rng(0).normal(scale=3, size=(23, 6)).astype(np.float32)
    assert inception_score(logits, split_size=5) == pytest.approx(_is_loop(logits, 5), rel=1e-5)
    assert inception_score(logits) == pytest.approx(_is_loop(logits, 5000), rel=1e-5)


def test_inception_score_extremes():
    assert inception_score(np.zeros((10, 7))) == pytest.approx(1.0)
    confident = np.full((40, 4), -50.0)
    confident[np.arange(40), np.arange(40) % 4] = 50.0
    assert inception_score(confident) == pytest.approx(4.0, rel=1e-6)


# ----------------------------------------------------------------------------- precision / recall


def _pr_brute(ref: np.ndarray, sample: np.ndarray, k: int = 3) -> tuple[float, float]:
    def d2(a, b):
        return ((a[:, None, :].astype(np.float64) - b[None, :, :]) ** 2).sum(-1)

    ref_r = np.sort(d2(ref, ref), axis=1)[:, k]
    sam_r = np.sort(d2(sample, sample), axis=1)[:, k]
    cross = d2(sample, ref)
    precision = np.mean([(cross[i] <= ref_r).any() for i in range(len(sample))])
    recall = np.mean([(cross[:, j] <= sam_r).any() for j in range(len(ref))])
    return float(precision), float(recall)


def test_precision_recall_match_brute_force_also_across_blocks():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(150, 5)).astype(np.float32)
    sample = (rng.normal(size=(120, 5)) * 0.7 + 0.7).astype(np.float32)
    expected = _pr_brute(ref, sample)
    assert 0.1 < expected[0] < 0.95 and 0.1 < expected[1] < 0.95  # a non-trivial case
    assert precision_recall(ref, sample, precision="float32") == pytest.approx(expected)
    assert precision_recall(ref, sample, batch_size=32, precision="float32") == pytest.approx(expected)
    p16, r16 = precision_recall(ref, sample)  # the evaluator's float16 distances
    assert abs(p16 - expected[0]) <= 0.02 and abs(r16 - expected[1]) <= 0.02


def test_precision_recall_of_identical_and_disjoint_sets():
    x = np.random.default_rng(2).normal(size=(50, 4)).astype(np.float32)
    assert precision_recall(x, x) == (1.0, 1.0)
    assert precision_recall(x, x + 100.0) == (0.0, 0.0)


def test_manifold_radius_is_the_kth_neighbour():
    points = np.array([[0.0], [1.0], [3.0], [6.0], [10.0]], dtype=np.float32)
    # neighbours of 0: 1, 3, 6 -> 3rd at squared distance 36
    assert manifold_radii(points, k=3, precision="float32")[0] == pytest.approx(36.0)


def test_precision_recall_needs_k_plus_one_samples():
    with pytest.raises(MetricError, match="at least 4"):
        precision_recall(np.zeros((10, 3)), np.zeros((3, 3)))


# ----------------------------------------------------------------------------- npz batches


def test_batch_errors_are_one_line(tmp_path):
    write_npz(tmp_path / "noarr.npz", images=np.zeros((2, 8, 8, 1), np.uint8))
    with pytest.raises(BatchFileError, match="no arr_0 .*holds images"):
        batch_info(tmp_path / "noarr.npz")
    write_npz(tmp_path / "float.npz", arr_0=np.zeros((2, 8, 8, 1), np.float32))
    with pytest.raises(BatchFileError, match="dtype float32"):
        batch_info(tmp_path / "float.npz")
    write_npz(tmp_path / "nchw.npz", arr_0=np.zeros((2, 3, 8, 8), np.uint8))
    with pytest.raises(BatchFileError, match=r"NHWC, not NCHW"):
        batch_info(tmp_path / "nchw.npz")
    with pytest.raises(BatchFileError, match="does not exist"):
        batch_info(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(BatchFileError, match="not a readable"):
        batch_info(tmp_path / "junk.npz")
    write_npz(tmp_path / "big.npz", arr_0=np.zeros((2, 16, 16, 1), np.uint8))
    write_npz(tmp_path / "ok.npz", arr_0=np.zeros((2, 8, 8, 1), np.uint8))
    with pytest.raises(BatchFileError, match="image sizes differ"):
        check_same_size(batch_info(tmp_path / "ok.npz"), batch_info(tmp_path / "big.npz"))


def test_streaming_reader_returns_the_array_in_order(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, size=(37, 5, 4, 3), dtype=np.uint8)
    write_npz(tmp_path / "b.npz", arr_0=images)
    chunks = list(iter_images(tmp_path / "b.npz", batch_size=10))
    assert [len(c) for c in chunks] == [10, 10, 10, 7]
    assert np.array_equal(np.concatenate(chunks), images)


# ----------------------------------------------------------------------------- Inception port


def test_tf1_resize_matches_a_per_pixel_loop():
    x = torch.arange(5 * 4, dtype=torch.float32).reshape(1, 1, 5, 4) ** 1.5
    out = resize_bilinear_tf1(x, 7)
    img = x[0, 0].numpy()
    for i in range(7):
        for j in range(7):
            sy, sx = i * 5 / 7, j * 4 / 7
            y0, x0 = int(np.floor(sy)), int(np.floor(sx))
            y1, x1 = min(y0 + 1, 4), min(x0 + 1, 3)
            fy, fx = sy - y0, sx - x0
            top = img[y0, x0] + (img[y0, x1] - img[y0, x0]) * fx
            bottom = img[y1, x0] + (img[y1, x1] - img[y1, x0]) * fx
            assert out[0, 0, i, j].item() == pytest.approx(top + (bottom - top) * fy, rel=1e-5)
    assert torch.equal(resize_bilinear_tf1(x[..., :4, :4], 4), x[..., :4, :4])


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("inception") / "weights-inception-2015-12-05-6726825d.pth"
    torch.save(random_inception(seed=0).state_dict(), path)
    return path


def test_inception_shapes_and_local_weights(inception_file):
    model = load_inception(inception_file)
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, size=(2, 32, 32, 3), dtype=np.uint8))
    with torch.no_grad():
        pool, spatial, logits = model(images)
        reference = random_inception(seed=0)(images)
    assert pool.shape == (2, 2048) and spatial.shape == (2, 17 * 17 * 7) and logits.shape == (2, 1008)
    assert torch.allclose(pool, reference[0]) and torch.allclose(logits, reference[2])
    assert torch.isfinite(pool).all() and (pool >= 0).all()  # pool_3 follows a ReLU
    with torch.no_grad():  # a grey image is the same RGB image with equal channels
        grey = model(images[..., :1])[0]
        rgb = model(images[..., :1].expand(-1, -1, -1, 3))[0]
    assert torch.allclose(grey, rgb)


def test_inception_weights_errors(tmp_path, monkeypatch, inception_file):
    monkeypatch.delenv("GOC_INCEPTION_WEIGHTS", raising=False)
    with pytest.raises(CheckpointError, match="weights-inception-2015-12-05-6726825d.pth.*github.com"):
        load_inception()
    with pytest.raises(CheckpointError, match="does not exist"):
        load_inception(tmp_path / "nope.pth")
    torch.save({"fc.weight": torch.zeros(3, 3)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="is not the FID Inception"):
        load_inception(tmp_path / "other.pth")
    monkeypatch.setenv("GOC_INCEPTION_WEIGHTS", str(inception_file))
    assert isinstance(load_inception(), FIDInception)


def test_inception_extractor_streams_a_batch_file(tmp_path, inception_file):
    images = np.random.default_rng(0).integers(0, 256, size=(5, 24, 24, 3), dtype=np.uint8)
    write_npz(tmp_path / "sam.npz", arr_0=images)
    extractor = build_extractor("inception", inception_weights=inception_file)
    feats = extract(tmp_path / "sam.npz", extractor, batch_size=2, progress=False)
    assert feats.pool.shape == (5, 2048) and feats.spatial.shape == (5, 2023) and feats.logits.shape == (5, 1008)
    assert np.allclose(feats.pool, extractor(images).pool, atol=1e-5)  # batching does not change features
    assert len({tuple(row[:50]) for row in feats.pool}) == 5  # features depend on the image


# ----------------------------------------------------------------------------- digits reference and fidelity


def test_committed_digits_reference_matches_its_images():
    info = batch_info(paths.DIGITS_REFERENCE_BATCH)
    assert (info.count, info.image_shape, info.has_statistics) == (1797, (8, 8, 1), True)
    stored = read_statistics(paths.DIGITS_REFERENCE_BATCH)
    feats = build_extractor("digits")(np.load(paths.DIGITS_REFERENCE_BATCH)["arr_0"])
    assert np.allclose(stored["mu"], feats.pool.mean(0), atol=1e-5)
    assert np.allclose(stored["sigma_s"], np.cov(feats.spatial.T), atol=1e-5)
    assert feats.pool.shape[1] == 128 and feats.spatial.shape[1] == 8 * 8 * 7


def test_digits_reference_against_itself_is_perfect():
    result = evaluate_batches(
        paths.DIGITS_REFERENCE_BATCH, paths.DIGITS_REFERENCE_BATCH, build_extractor("digits"), False
    )
    assert abs(result.fid) < 1e-6 and abs(result.sfid) < 1e-6
    assert (result.precision, result.recall) == (1.0, 1.0)
    assert result.agreement > 0.99 and result.inception_score > 9.5


def _ssim_loop(a: np.ndarray, b: np.ndarray, size: int, sigma: float = 1.5) -> float:
    g = np.exp(-((np.arange(size) - (size - 1) / 2) ** 2) / (2 * sigma**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    values = []
    for n in range(a.shape[0]):
        for c in range(a.shape[3]):
            x, y = a[n, :, :, c].astype(float), b[n, :, :, c].astype(float)
            for i in range(a.shape[1] - size + 1):
                for j in range(a.shape[2] - size + 1):
                    px, py = x[i : i + size, j : j + size], y[i : i + size, j : j + size]
                    mx, my = (w * px).sum(), (w * py).sum()
                    vx, vy = (w * px * px).sum() - mx**2, (w * py * py).sum() - my**2
                    cxy = (w * px * py).sum() - mx * my
                    values.append((2 * mx * my + c1) * (2 * cxy + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    return float(np.mean(values))


def test_psnr_and_ssim():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, size=(3, 8, 8, 1), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-20, 21, size=a.shape), 0, 255).astype(np.uint8)
    assert psnr(a, a) == float("inf") and ssim(a, a) == pytest.approx(1.0)
    mse = np.mean((a.astype(float) - b) ** 2)
    assert psnr(a, b) == pytest.approx(10 * np.log10(255**2 / mse))
    assert ssim(a, b) == pytest.approx(_ssim_loop(a, b, size=7), rel=1e-9)  # 8 px images: 7x7 window
    big_a = rng.integers(0, 256, size=(1, 14, 13, 3), dtype=np.uint8)
    big_b = np.clip(big_a.astype(int) + rng.integers(-40, 41, size=big_a.shape), 0, 255).astype(np.uint8)
    assert ssim(big_a, big_b) == pytest.approx(_ssim_loop(big_a, big_b, size=11), rel=1e-9)
    with pytest.raises(InvalidArgumentError, match="one shape"):
        psnr(a, a[:2])


def test_file_fidelity_streams_the_same_numbers(tmp_path):
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, size=(7, 12, 12, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-30, 31, size=a.shape), 0, 255).astype(np.uint8)
    write_npz(tmp_path / "a.npz", arr_0=a)
    write_npz(tmp_path / "b.npz", arr_0=b)
    streamed = file_fidelity(tmp_path / "a.npz", tmp_path / "b.npz", batch_size=3)
    assert streamed == pytest.approx((psnr(a, b), ssim(a, b)), rel=1e-12)
    write_npz(tmp_path / "c.npz", arr_0=a[:5])
    with pytest.raises(InvalidArgumentError, match="same --num-samples"):
        file_fidelity(tmp_path / "a.npz", tmp_path / "c.npz")


def _noisy(reference: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0, sigma, size=reference.shape)
    return np.clip(reference.astype(float) + noise, 0, 255).round().astype(np.uint8)


def test_paired_psnr_difference_finds_a_planted_gap_and_its_spread_shrinks_with_the_count(tmp_path, capsys):
    from goc_utils.cli import main

    reference = np.random.default_rng(0).integers(60, 196, size=(800, 8, 8, 1), dtype=np.uint8)
    files = {"none": reference, "a": _noisy(reference, 4.0, 1), "b": _noisy(reference, 8.0, 2)}
    for name, images in files.items():
        write_npz(tmp_path / f"{name}.npz", arr_0=images)
    result = paired_psnr_difference(tmp_path / "a.npz", tmp_path / "b.npz", tmp_path / "none.npz", resamples=100)
    assert result.a == pytest.approx(psnr(files["a"], reference), abs=1e-9)
    assert result.b == pytest.approx(psnr(files["b"], reference), abs=1e-9)
    assert result.difference == pytest.approx(20 * np.log10(2), abs=0.1)  # half the noise: +6.02 dB
    assert 0 < result.std < 0.2
    for name, images in files.items():
        write_npz(tmp_path / f"{name}_few.npz", arr_0=images[:50])
    few = paired_psnr_difference(tmp_path / "a_few.npz", tmp_path / "b_few.npz", tmp_path / "none_few.npz", 100)
    assert few.std > 2 * result.std  # 16x fewer images: about 4x the spread
    same = paired_psnr_difference(tmp_path / "a.npz", tmp_path / "a.npz", tmp_path / "none.npz", resamples=20)
    assert same.difference == 0 and same.std == 0
    assert main(["compare", str(tmp_path / "a.npz"), str(tmp_path / "b.npz"), "--reference",
                 str(tmp_path / "none.npz"), "--resamples", "100"]) == 0  # fmt: skip
    assert f"= {result.difference:+.2f} +- {result.std:.2f} dB" in capsys.readouterr().out
    with pytest.raises(InvalidArgumentError, match="reproduces the reference exactly"):
        paired_psnr_difference(tmp_path / "none.npz", tmp_path / "b.npz", tmp_path / "none.npz")
    with pytest.raises(InvalidArgumentError, match="same --num-samples"):
        paired_psnr_difference(tmp_path / "a_few.npz", tmp_path / "b.npz", tmp_path / "none.npz")


def test_inception_score_is_nan_when_probabilities_underflow_as_in_the_evaluator(capfd):
    from goc_utils.evaluation.metrics.adm import inception_score

    logits = np.array([[0.0, 200.0, 0.0], [200.0, 0.0, 0.0], [0.0, 0.0, 200.0]], dtype=np.float32)
    assert np.isnan(inception_score(logits))  # softmax underflows to 0: 0 * log 0 = NaN (evaluator.py too)
    err = capfd.readouterr().err
    assert "Inception Score is NaN: 6 class probabilities underflow to 0" in err and len(err.splitlines()) == 1
    assert np.isfinite(inception_score(logits / 100))


def test_half_precision_distances_fall_back_to_float32_when_squared_norms_overflow():
    from goc_utils.evaluation.metrics.adm import pairwise_sq_distances

    big_u, big_v = np.full((1, 4), 300.0), np.array([[300.0, 300.0, 300.0, 300.4]])  # |u|^2 = 360000 > 65504
    half_inputs = pairwise_sq_distances(np.full((1, 4), 300.0), np.full((1, 4), 300.0) + [0, 0, 0, 0.5], "float32")
    assert pairwise_sq_distances(big_u, big_v)[0, 0] == pytest.approx(0.16, abs=0.01)  # float32 fallback
    assert half_inputs[0, 0] == pytest.approx(0.25, abs=0.01)  # what float16-rounded inputs (300.4 -> 300.5) give
    small = pairwise_sq_distances(np.zeros((1, 1)), np.full((1, 1), 1e-4))
    assert small[0, 0] == 0.0  # no overflow: the distance is rounded to float16 (1e-8 underflows), as in the evaluator
    assert pairwise_sq_distances(np.zeros((1, 1)), np.full((1, 1), 1e-4), "float32")[0, 0] > 0


def test_goc_fid_float32_distances(tmp_path, capsys):
    from goc_utils import paths
    from goc_utils.cli import main

    with np.load(paths.DIGITS_REFERENCE_BATCH) as ref:
        write_npz(tmp_path / "s.npz", arr_0=ref["arr_0"][::3], arr_1=ref["arr_1"][::3])
    argv = ["fid", str(paths.DIGITS_REFERENCE_BATCH), str(tmp_path / "s.npz"), "--features", "digits"]
    printed = {}
    for precision in ("float16", "float32"):
        assert main([*argv, "--pr-precision", precision]) == 0
        printed[precision] = dict(line.split(": ") for line in capsys.readouterr().out.strip().splitlines())
    assert printed["float16"]["FID"] == printed["float32"]["FID"]
    assert 0 < float(printed["float32"]["Precision"]) <= 1


def test_paired_fid_difference_resolves_what_each_methods_own_spread_cannot():
    from goc_utils.evaluation.metrics.adm import paired_fid_difference

    rng = np.random.default_rng(0)
    ref = compute_statistics(rng.normal(size=(20000, 6)))
    shared = rng.normal(size=(400, 6))  # the noise both methods start from
    a, b = shared, shared + 0.05  # B drifts away from the reference
    result = paired_fid_difference(a, b, ref, resamples=100)
    assert result.a == pytest.approx(compute_statistics(a).frechet_distance(ref), abs=1e-9)
    assert result.b == pytest.approx(compute_statistics(b).frechet_distance(ref), abs=1e-9)
    means = [np.sum((x.mean(axis=0) - ref.mu) ** 2) for x in (a, b)]
    assert result.difference == pytest.approx(means[0] - means[1], abs=1e-9)  # same covariance: only the means
    own = fid_bootstrap_std(b, ref, resamples=100)
    assert abs(result.difference) < 2 * own  # each method's own spread hides the gap...
    assert result.resolved and result.std < own / 2  # ...the paired one resolves it
    same = paired_fid_difference(a, a, ref, resamples=20)
    assert same.difference == 0 and same.std == 0 and not same.resolved
    with pytest.raises(MetricError, match="same --num-samples"):
        paired_fid_difference(a, b[:300], ref)


def test_the_fast_frechet_distance_to_a_fixed_reference_equals_the_evaluators():
    from goc_utils.evaluation.metrics.adm import FrechetToReference

    rng = np.random.default_rng(3)
    mixing = rng.normal(size=(32, 32))
    ref = compute_statistics(rng.normal(size=(5000, 32)) @ mixing)
    fast = FrechetToReference(ref)
    for shift, scale in ((0.0, 1.0), (0.3, 1.0), (0.0, 1.4), (1.0, 0.7)):
        x = (rng.normal(size=(400, 32)) * scale + shift) @ mixing
        assert fast(x) == pytest.approx(compute_statistics(x).frechet_distance(ref), rel=1e-8, abs=1e-8)
