"""Bad inputs checked at their root, each one line on stderr with exit status 2 before any work or file: training
resume files and the settings a resume must repeat, TCC pack headers, a VAE that does not fit the DiT, an empty
Fashion-MNIST, where smoke runs put figures, the verdicts' sizes, seeds, pairs and manifests, a full disk while a
safetensors file is written, and samples that are not finite."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from goc_utils import paths
from goc_utils.cli import main
from goc_utils.datasets import DatasetMissingError, fashion_mnist_available, load_digits_tensors, load_fashion_mnist
from goc_utils.errors import InvalidArgumentError, VAEError
from goc_utils.evaluation.eval import method_folder
from goc_utils.evaluation.sampling import write_npz
from goc_utils.files import DiskFullError, atomic_save_safetensors, save_training_state
from goc_utils.model.checkpoints import load_model
from goc_utils.model.judges import DigitsClassifier
from goc_utils.model.sampler import generate
from goc_utils.study.notebooks import smoke_mode
from goc_utils.study.params import StudyParams
from goc_utils.training.judges import _augment_digits, fit_classifier
from tests.conftest import run_bad_input, small_dit

needs_fashion = pytest.mark.skipif(not fashion_mnist_available(), reason="Fashion-MNIST is not installed")


# ----------------------------------------------------------------------------- 1. training resume files


def with_options(argv: list[str], *extra: str) -> list[str]:
    """``argv`` with the ``--flag value`` pairs of ``extra``: a flag already there gets the new value (an option is
    given once), the others are appended."""
    argv = list(argv)
    for flag, value in zip(extra[::2], extra[1::2], strict=True):
        if flag in argv:
            argv[argv.index(flag) + 1] = value
        else:
            argv += [flag, value]
    return argv


def _train(run_dir: Path, out: Path, *extra: str) -> list[str]:
    argv = ["train-tiny", "--train-steps", "2", "--batch-size", "4", "--threads", "1", "--run-dir", str(run_dir),
            "--out", str(out)]  # fmt: skip
    return with_options(argv, *extra)


@pytest.fixture(scope="module")
def first_part(tmp_path_factory):
    """A tiny-digits run folder stopped after 2 of its steps (seed 0, batch 4, lr 4e-4)."""
    folder = tmp_path_factory.mktemp("run")
    assert main(_train(folder / "run", folder / "part.safetensors")) == 0
    return folder / "run" / "checkpoint.pt"


def _foreign_checkpoints(tmp_path: Path, checkpoint: Path) -> dict[str, bytes]:
    """Garbage, a torn copy, another training's checkpoint and an older checkpoint of another model."""
    judge = tmp_path / "judge.pt"
    images, labels = load_digits_tensors()
    fit_classifier(DigitsClassifier(), images[:64], labels[:64], _augment_digits, 1, 32, 1e-3, 0, "t", False, judge)
    other = small_dit(depth=2)
    older = tmp_path / "older.pt"
    opt = torch.optim.AdamW(other.parameters())
    save_training_state(older, "step", 1, torch.Generator(), model=other, ema=other, opt=opt)  # no settings
    state = torch.load(checkpoint, weights_only=True)
    fashion = tmp_path / "fashion.pt"
    torch.save({**state, "settings": {**state["settings"], "preset": "tiny-fashion"}}, fashion)
    data = tmp_path / "data.pt"
    torch.save({**state, "settings": {**state["settings"], "data": "0" * 64}}, data)
    return {
        "garbage": np.random.default_rng(0).bytes(4096),
        "torn": checkpoint.read_bytes()[: checkpoint.stat().st_size // 2],
        "judge": judge.read_bytes(),
        "older-other-model": older.read_bytes(),
        "other-preset": fashion.read_bytes(),
        "other-data": data.read_bytes(),
    }


FOREIGN = {
    "garbage": "cannot read training checkpoint",
    "torn": "cannot read training checkpoint",
    "judge": "is not a checkpoint of this training; choose another --run-dir, or delete it to start over",
    "older-other-model": "does not fit this run (Error(s) in loading state_dict for DiT",
    "other-preset": "is from a run with preset=tiny-fashion (this one: tiny-digits); rerun with the same settings",
    "other-data": "is from a run with data=0000",
}


@pytest.mark.parametrize("kind", FOREIGN)
def test_a_foreign_resume_file_is_one_line_and_nothing_is_written(kind, first_part, tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "checkpoint.pt").write_bytes(_foreign_checkpoints(tmp_path, first_part)[kind])
    out = tmp_path / "out.safetensors"
    run_bad_input(_train(run_dir, out), FOREIGN[kind], capsys)
    assert not out.exists() and not (run_dir / "log.jsonl").exists()


RESUMES = [
    (["--seed", "1"], "is from a run with seed=0 (this one: 1); rerun with the same settings to resume, or choose"),
    (["--lr", "1e-3"], "is from a run with lr=0.0004 (this one: 0.001)"),
    (["--batch-size", "8"], "is from a run with batch_size=4 (this one: 8)"),
    (["--train-steps", "1"], "has done 2 steps, more than this run's 1; rerun with 2 or more to resume"),
]


@pytest.mark.parametrize("extra, message", RESUMES, ids=[" ".join(e) for e, _ in RESUMES])
def test_a_resume_with_other_settings_is_refused(extra, message, first_part, tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "checkpoint.pt").write_bytes(first_part.read_bytes())
    out = tmp_path / "out.safetensors"
    run_bad_input(_train(run_dir, out, *extra), message, capsys)
    assert not out.exists() and (run_dir / "checkpoint.pt").read_bytes() == first_part.read_bytes()


def test_a_checkpoint_without_recorded_settings_still_resumes_to_the_same_weights(first_part, tmp_path):
    state = torch.load(first_part, weights_only=True)
    del state["settings"]  # a run folder of an earlier version: its settings are unknown, and accepted
    (tmp_path / "old").mkdir()
    torch.save(state, tmp_path / "old" / "checkpoint.pt")
    assert main(_train(tmp_path / "old", tmp_path / "old.safetensors", "--train-steps", "3")) == 0
    assert main(_train(tmp_path / "new", tmp_path / "new.safetensors", "--train-steps", "3")) == 0
    old, new = load_file(str(tmp_path / "old.safetensors")), load_file(str(tmp_path / "new.safetensors"))
    assert all(torch.equal(old[k], new[k]) for k in new)


@pytest.mark.parametrize(
    "flag, value, message",
    [("--out", "/proc/x/w.safetensors", "--out '/proc/x/w.safetensors': cannot create its folder"),
     ("--run-dir", "/proc/x", "--run-dir '/proc/x': cannot create the folder")],
)  # fmt: skip
def test_train_tiny_probes_its_outputs_before_the_work(flag, value, message, tmp_path, capsys):
    argv = _train(tmp_path / "run", tmp_path / "w.safetensors")
    argv[argv.index(flag) + 1] = value
    run_bad_input(argv, message, capsys)
    assert not (tmp_path / "run").exists()


def test_the_judge_refuses_a_checkpoint_of_another_seed(tmp_path):
    images, labels = load_digits_tensors()
    checkpoint = tmp_path / "judge.pt"
    fit = [images[:64], labels[:64], _augment_digits, 1, 32, 1e-3]
    fit_classifier(DigitsClassifier(), *fit, 0, "digits", False, checkpoint)
    with pytest.raises(InvalidArgumentError, match="is from a run with seed=0 .this one: 1.") as info:
        fit_classifier(DigitsClassifier(), *fit, 1, "digits", False, checkpoint)
    assert "\n" not in str(info.value)


@needs_fashion
def test_a_garbage_latents_cache_is_one_line(tmp_path):
    from goc_utils.training.dit import fashion_latents

    (tmp_path / "latents.pt").write_bytes(b"\x80\x02garbage")
    with pytest.raises(InvalidArgumentError, match="cannot read latents cache .*; delete it to encode the latents"):
        fashion_latents(cache_dir=tmp_path, progress=False)


# ----------------------------------------------------------------------------- 2. TCC pack headers

PACK = paths.DATA_DIR / "tcc" / "tiny-digits_ddim20_cfg1.5_fora-50.safetensors"


def _pack(path: Path, header: dict | None = None, drop: str | None = None, tensors: dict | None = None) -> Path:
    """The committed tiny-digits fora-50 pack with header fields replaced (``header``) or dropped (``drop``)."""
    with safe_open(str(PACK), "pt") as f:
        meta = json.loads(f.metadata()["goc_tcc"])
        found = {k: f.get_tensor(k) for k in f.keys()}
    meta = {k: v for k, v in {**meta, **(header or {})}.items() if k != drop}
    save_file({**found, **(tensors or {})}, str(path), metadata={"goc_tcc": json.dumps(meta)})
    return path


PACKS = [
    ({"header": {"cfg_scale": "1.5"}}, 'header field cfg_scale = "1.5", which must be a finite number >= 0'),
    ({"header": {"targets": ["1", "3"]}}, 'header field targets = ["1", "3"], which must be a non-empty ascending'),
    ({"header": {"targets": 5}}, "header field targets = 5, which must be a non-empty ascending list"),
    ({"header": {"targets": [3, 1, 5, 7]}}, "header field targets = [3, 1, 5, 7]"),
    ({"header": {"steps": -3}}, "header field steps = -3, which must be an integer >= 1"),
    ({"header": {"depth": "12"}}, 'header field depth = "12", which must be an integer >= 1'),
    ({"header": {"fit_alpha": float("nan")}}, "header field fit_alpha = NaN, which must be a finite number"),
    ({"header": {"seed": -1}}, "header field seed = -1, which must be a seed in 0..2**63-1"),
    ({"header": {"pooling": 3}}, "header field pooling = 3, which must be one of class, sample, token"),
    ({"header": {"alpha_choice": {"psnr_db": 1}}}, "header field alpha_choice = "),
    ({"drop": "hidden"}, "is incomplete: its header lacks hidden"),
    ({"header": {"targets": [1, 3, 5]}}, "has tensor R of shape (4, 12, 2, 128, 128), but its header needs (3, 12"),
    ({"header": {"depth": 11}}, "has tensor R of shape (4, 12, 2, 128, 128), but its header needs (4, 11"),
    ({"header": {"hidden": 64}}, "but its header needs (4, 12, 2, 64, 64)"),
    (
        {"tensors": {"host_mask": torch.zeros(20, 12, 3, dtype=torch.uint8)}},
        "has tensor host_mask of shape (20, 12, 3)",
    ),
]


@pytest.mark.parametrize("change, message", PACKS, ids=[m[:40] for _, m in PACKS])
def test_a_tcc_pack_header_is_checked_field_by_field(change, message, tmp_path, capsys):
    pack = _pack(tmp_path / "p.safetensors", **change)
    out = tmp_path / "g.png"
    argv = ["sample", "--steps", "20", "--classes", "1", "--cfg-scale", "1.5", "--cache", "fora-50", "--compensator",
            "tcc", "--tcc-pack", str(pack), "--out", str(out)]  # fmt: skip
    err = run_bad_input(argv, message, capsys)
    assert "refit it with `goc tcc-pack`" in err and not out.exists()


# ----------------------------------------------------------------------------- 3. the VAE against the DiT


def _vae_folder(path: Path, blocks: int = 3, latent_channels: int = 4, scaling_factor: object = 0.4) -> Path:
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(
        in_channels=1,
        out_channels=1,
        down_block_types=("DownEncoderBlock2D",) * blocks,
        up_block_types=("UpDecoderBlock2D",) * blocks,
        block_out_channels=(16,) * blocks,
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=16,
        sample_size=32,
    )
    vae.save_pretrained(path, safe_serialization=True)
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "scaling_factor": scaling_factor}))
    return path


VAES = [
    ({"latent_channels": 8}, "has 8 latent channels, but tiny-fashion's DiT makes 4: it cannot decode its samples"),
    ({"blocks": 2}, "upsamples by 2, but tiny-fashion's DiT makes 8x8 latents of 32x32 images (factor 4): its samples "
                    "would be 16x16"),
    ({"scaling_factor": "0.4"}, "has no finite positive scaling_factor (found '0.4')"),
    ({"scaling_factor": float("inf")}, "has no finite positive scaling_factor (found inf)"),
    ({"scaling_factor": True}, "has no finite positive scaling_factor (found True)"),
]  # fmt: skip


@pytest.mark.parametrize("kwargs, message", VAES, ids=[str(k) for k, _ in VAES])
def test_a_vae_that_cannot_decode_the_dits_latents_is_refused_before_any_export(kwargs, message, tmp_path, capsys):
    vae = _vae_folder(tmp_path / "vae", **kwargs)
    out = tmp_path / "pipeline"
    run_bad_input(["export-diffusers", "--model", "tiny-fashion", "--vae", str(vae), "--out", str(out)], message,
                  capsys)  # fmt: skip
    assert not out.exists()
    with pytest.raises(VAEError, match="scaling_factor|latent channels|upsamples"):
        StudyParams(model="tiny-fashion", vae=str(vae), device="cpu").load_vae()  # the notebooks' loader too


# ----------------------------------------------------------------------------- 4. an empty Fashion-MNIST


def _idx(path: Path, magic: int, shape: tuple[int, ...]) -> None:
    header = magic.to_bytes(4, "big") + b"".join(n.to_bytes(4, "big") for n in shape)
    path.write_bytes(gzip.compress(header))


def test_an_empty_fashion_mnist_is_refused_by_the_loader(tmp_path, monkeypatch, capsys):
    for prefix in ("train", "t10k"):
        _idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", 2051, (0, 28, 28))
        _idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", 2049, (0,))
    monkeypatch.setenv("GOC_FASHION_MNIST_DIR", str(tmp_path))
    with pytest.raises(DatasetMissingError, match="holds no images .an empty test split."):
        load_fashion_mnist("test")
    out = tmp_path / "judge.safetensors"
    previous = torch.get_num_threads()
    try:
        run_bad_input(["train-classifier", "--model", "tiny-fashion", "--out", str(out)], "holds no images", capsys)
    finally:
        torch.set_num_threads(previous)
    assert not out.exists()


# ----------------------------------------------------------------------------- 5. notebooks and tiny-report


def test_figures_follow_smoke_mode_however_it_was_asked_for(tmp_path, monkeypatch, capsys):
    from goc_utils.cli import study

    monkeypatch.delenv("GOC_FIGURES_DIR", raising=False)
    calls = []
    monkeypatch.setattr(study, "run_notebooks", lambda *args, **kwargs: calls.append((args, kwargs)) or [])
    params = tmp_path / "p.yaml"
    params.write_text("smoke: true\n")
    assert main(["notebooks", "--preset", "fashion", "--only", "01", "--params", str(params)]) == 0
    assert calls[0][1]["figures_dir"] == paths.RUNS_DIR / "smoke" / "figures"  # never the committed figures/
    assert smoke_mode(False, {"smoke": True}) and smoke_mode(True, {}) and not smoke_mode(False, {})
    capsys.readouterr()
    for text, message in [("smoke: false\n", "--smoke and smoke: false in the params file disagree"),
                          ("smoke: 'yes'\n", "parameter 'smoke' is 'yes' (str); give true or false")]:  # fmt: skip
        params.write_text(text)
        run_bad_input(["notebooks", "--only", "01", "--smoke", "--params", str(params)], message, capsys)
    params.write_text("model: DiT-XXL/2\n")
    figures = tmp_path / "figures"
    argv = ["notebooks", "--only", "01", "--params", str(params), "--figures-dir", str(figures)]
    run_bad_input(argv, "unknown model preset 'DiT-XXL/2'", capsys)
    assert not figures.exists() and len(calls) == 1


TINY_REPORTS = [
    (["--per-class", "1000000000000"], "--per-class 1000000000000 (10,000,000,000,000 images) would need"),
    (["--steps", "5000"], "--steps must be in 1..1000 (got 5000)"),
    (["--out-dir", "/proc/x"], "--out-dir '/proc/x': cannot create the folder"),
    pytest.param(
        ["--model", "tiny-fashion", "--fid-samples", "99999999999999"],
        "--fid-samples 99,999,999,999,999 would write",
        marks=needs_fashion,
    ),  # fmt: skip
]


@pytest.mark.parametrize("extra, message", TINY_REPORTS, ids=lambda v: " ".join(v)[:40] if isinstance(v, list) else "")
def test_tiny_report_refuses_before_writing_anything(extra, message, tmp_path, capsys):
    out = tmp_path / "report"
    argv = with_options(["tiny-report", "--steps", "2", "--out-dir", str(out)], *extra)
    run_bad_input(argv, message, capsys)
    assert not out.exists()


# ----------------------------------------------------------------------------- 6. verdicts and compare


@pytest.fixture
def samples(tmp_path):
    """Three methods' samples of the same 40 digits (un-cached, a little and more noise), no manifests yet."""
    with np.load(paths.DIGITS_REFERENCE_BATCH) as data:
        none = data["arr_0"][:40]
    rng = np.random.default_rng(0)
    made = {}
    for method, sigma in (("none", 0.0), ("goc", 6.0), ("fora", 24.0)):
        folder = tmp_path / "cfg1.5" / method_folder(method)
        folder.mkdir(parents=True)
        images = np.clip(none + rng.normal(0, sigma, none.shape), 0, 255).astype(np.uint8)
        made[method] = write_npz(folder / "samples.npz", arr_0=images)
    return made


def _manifest(path: Path, **changes) -> None:
    manifest = {
        "model": "tiny-digits",
        "ckpt": None,
        "image_size": None,
        "vae": "ema",
        "steps": 20,
        "sampler": "ddim",
        "cfg_scale": 1.5,
        "seed": 0,
        "per_device_batch": 250,
        "method": path.parent.name,
    }
    (path.parent / "run.json").write_text(json.dumps({**manifest, **changes}))  # fmt: skip


VERDICTS = ["verdicts", "RUN", "--pair", "goc", "fora", "--model", "tiny-digits", "--device", "cpu"]
COMPARE = ["compare", "GOC", "FORA", "--reference", "NONE"]
COMPARISONS = [
    ([*VERDICTS, "--resamples", "1000000000000"], "argument --resamples: must be at most 100,000"),
    ([*COMPARE, "--resamples", "1000000000000"], "argument --resamples: must be at most 100,000"),
    ([*VERDICTS, "--seed=-1"], "argument --seed: seed -1 is outside 0..2**63-1"),
    ([*COMPARE, "--seed=-1"], "argument --seed: seed -1 is outside 0..2**63-1"),
    ([*VERDICTS, "--table", "/proc/x/verdicts"], "--table '/proc/x/verdicts.csv': cannot create its folder"),
    (["compare", "GOC", "GOC", "--reference", "NONE"], "compares a method with itself; pass two different methods"),
    (["compare", "GOC", "FORA", "--reference", "GOC"], "is A's samples too; pass the un-cached samples"),
    ([*COMPARE, "--seed", "3"], "A was sampled with seed=0 but --reference with seed=1 (their run.json)"),
    ([*VERDICTS], "goc was sampled with seed=0 but none with seed=1 (their run.json)"),
]


@pytest.mark.parametrize("argv, message", COMPARISONS, ids=[" ".join(a)[:50] for a, _ in COMPARISONS])
def test_verdicts_and_compare_check_sizes_seeds_pairs_and_manifests_first(argv, message, samples, capsys):
    for method, path in samples.items():
        _manifest(path, seed=1 if method == "none" else 0)
    names = {"RUN": samples["none"].parent.parent.parent, "GOC": samples["goc"], "FORA": samples["fora"],
             "NONE": samples["none"]}  # fmt: skip
    run_bad_input([str(names.get(a, a)) for a in argv], message, capsys)
    assert not list(samples["none"].parent.parent.parent.glob("**/*.md"))


def test_compare_accepts_samples_of_the_same_noise(samples, capsys):
    for path in samples.values():
        _manifest(path)
    argv = ["compare", str(samples["goc"]), str(samples["fora"]), "--reference", str(samples["none"].parent)]
    assert main([*argv, "--resamples", "20"]) == 0
    assert "PSNR" in capsys.readouterr().out


# ----------------------------------------------------------------------------- 7. a full disk


@pytest.mark.parametrize("code, message", [(28, "the disk is full at"), (122, "the disk quota is exceeded at")])
def test_a_full_disk_while_writing_safetensors_is_one_line(code, message, tmp_path, monkeypatch):
    def full(tensors, filename, metadata=None):  # what safetensors raises when its write fails
        raise SafetensorError(f"Error while serializing: I/O error: No space left on device (os error {code})")

    monkeypatch.setattr("goc_utils.files.save_file", full)
    with pytest.raises(DiskFullError, match=message) as info:
        atomic_save_safetensors({"a": torch.zeros(3)}, tmp_path / "pack.safetensors")
    assert "\n" not in str(info.value) and "'pack.safetensors'" in str(info.value)
    assert list(tmp_path.iterdir()) == []  # no half-written file, no temporary left


def test_other_safetensors_errors_pass_unchanged(tmp_path, monkeypatch):
    def broken(tensors, filename, metadata=None):
        raise SafetensorError("Error while serializing: a header too large")

    monkeypatch.setattr("goc_utils.files.save_file", broken)
    with pytest.raises(SafetensorError, match="a header too large"):
        atomic_save_safetensors({"a": torch.zeros(3)}, tmp_path / "x.safetensors")


# ----------------------------------------------------------------------------- 8. samples that are not finite


def test_non_finite_samples_are_one_line_naming_the_methods_options(capsys):
    model = load_model("tiny-digits")

    def blown_up(x, t, y, step):  # what tcc:alpha=1e308 does to a reused unit
        return model(x, t, y) * 1e308

    with pytest.raises(InvalidArgumentError, match="NaN or infinite values in .* of 2 samples; the caching method's"):
        generate(model, [1, 2], steps=4, forward=blown_up)
    assert generate(model, [1, 2], steps=4).images.shape == (2, 8, 8, 1)  # finite samples pass as before
