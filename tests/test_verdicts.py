"""``goc verdicts``: the study's paired comparisons read back from a ``goc eval`` run (nothing is sampled)."""

from __future__ import annotations

import numpy as np
import pytest

from goc_utils import paths
from goc_utils.cli import main
from goc_utils.evaluation.eval import method_folder
from goc_utils.evaluation.metrics.adm import compute_statistics
from goc_utils.evaluation.metrics.features import build_extractor, extract
from goc_utils.evaluation.metrics.fidelity import psnr
from goc_utils.evaluation.sampling import write_npz


def _noisy(images: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0, sigma, size=images.shape)
    return np.clip(images.astype(float) + noise, 0, 255).round().astype(np.uint8)


@pytest.fixture
def run(tmp_path):
    with np.load(paths.DIGITS_REFERENCE_BATCH) as data:
        none = data["arr_0"][:600]
    samples = {"none": none, "fora-50+goc": _noisy(none, 6.0, 1), "fora-50": _noisy(none, 24.0, 2)}
    for method, images in samples.items():
        folder = tmp_path / "cfg1.5" / method_folder(method)
        folder.mkdir(parents=True)
        write_npz(folder / "samples.npz", arr_0=images)
    return tmp_path, samples


def test_verdicts_give_paired_psnr_and_fid_differences_and_say_what_is_resolved(run, capsys):
    folder, samples = run
    table = folder / "verdicts"
    assert main(["verdicts", str(folder), "--pair", "fora-50+goc", "fora-50", "--model", "tiny-digits",
                 "--resamples", "50", "--table", str(table), "--device", "cpu"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    row = dict(zip(*[line.strip("|").split("|") for line in printed.splitlines()[::2]], strict=True))
    row = {k.strip(): v.strip() for k, v in row.items()}
    expected = [psnr(samples[m], samples["none"]) for m in ("fora-50+goc", "fora-50")]
    assert float(row["PSNR A dB"]) == pytest.approx(expected[0], abs=0.006)
    assert float(row["PSNR A-B dB"]) == pytest.approx(expected[0] - expected[1], abs=0.011)
    assert float(row["PSNR A-B dB"]) > 10 and row["PSNR resolved"] == "yes"  # a quarter of the noise
    with np.load(paths.DIGITS_REFERENCE_BATCH) as data:
        ref = compute_statistics_from(data)
    extractor = build_extractor("digits", "cpu")
    fids = [compute_statistics(extract(folder / "cfg1.5" / method_folder(m) / "samples.npz", extractor,
                                       progress=False).pool).frechet_distance(ref)
            for m in ("fora-50+goc", "fora-50")]  # fmt: skip
    assert float(row["FID A"]) == pytest.approx(fids[0], abs=0.006)
    assert float(row["FID B"]) == pytest.approx(fids[1], abs=0.006)
    assert float(row["FID A-B"]) < 0 and row["FID resolved"] == "yes"  # more noise: further from the digits
    assert (folder / "verdicts.md").read_text() == printed and (folder / "verdicts.csv").is_file()


def compute_statistics_from(data):
    from goc_utils.evaluation.metrics.adm import FIDStatistics

    return FIDStatistics(data["mu"], data["sigma"])


@pytest.mark.parametrize(
    "args, message",
    [
        (["--pair", "l2c+goc", "l2c"], "no finished samples of 'l2c+goc' at cfg 1.5 in "),
        (["--pair", "fora-50+goc", "fora-50", "--cfg-scale", "1.5,4"], "no finished samples of 'fora-50+goc' at cfg 4"),
        (["--pair", "fora-50", "fora-50"], "--pair fora-50 fora-50 compares a method with itself"),
    ],
)
def test_verdicts_refuse_missing_samples_and_a_method_compared_with_itself(run, capsys, args, message):
    folder, _ = run
    assert main(["verdicts", str(folder), "--model", "tiny-digits", *args]) != 0
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
