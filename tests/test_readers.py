"""One reader per container format: every ``.pt`` and ``.safetensors`` file the project loads goes through
``files.load_torch`` / ``files.load_safetensors``, so the same damage gets the same one-line reason whichever
file it hits; and a method string's options are refused when empty or, for yes/no options, of another word."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from goc_utils import paths
from goc_utils.cache.l2c import load_router_logits
from goc_utils.cache.method import CacheMethod
from goc_utils.errors import GocError
from goc_utils.evaluation.metrics.inception import load_inception
from goc_utils.files import read_torch_file
from goc_utils.model.checkpoints import read_state_dict
from goc_utils.model.diffusers_format import read_diffusers_state_dict
from goc_utils.model.judges import load_digits_classifier

PACKAGE = Path(paths.PROJECT_ROOT) / "goc_utils"


def test_no_module_reads_a_container_file_past_the_one_reader():
    """``torch.load`` and safetensors' ``load_file`` are called in goc_utils/files.py only."""
    calls = re.compile(r"\btorch\.load\(|\bload_file\(")
    found = [
        f"{path.relative_to(PACKAGE)}:{n}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.name != "files.py"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if calls.search(line.split("#")[0])
    ]
    assert found == [], f"read a .pt / .safetensors file with goc_utils.files.load_torch / load_safetensors: {found}"


def _damaged(folder: Path, name: str, damage: str) -> Path:
    """``name`` in ``folder``: a valid torch file cut in half, an empty file, or a text file."""
    path = folder / name
    if damage == "text":
        path.write_text("root:x:0:0:root:/root:/bin/bash\n")
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        torch.save({"weight": torch.ones(64, 64)}, path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def _diffusers_bin(folder: Path, damage: str) -> Path:
    (folder / "config.json").write_text("{}")
    _damaged(folder, "diffusion_pytorch_model.bin", damage)
    return folder


TORCH_READERS = {
    "DiT checkpoint": lambda folder, damage: read_state_dict(_damaged(folder, "dit.pt", damage)),
    "L2C router": lambda folder, damage: load_router_logits(_damaged(folder, "router.pt", damage)),
    "training checkpoint": lambda folder, damage: read_torch_file(
        _damaged(folder, "checkpoint.pt", damage), "training checkpoint", "delete it", {"step": int}, "a checkpoint"
    ),
    "diffusers .bin weights": lambda folder, damage: read_diffusers_state_dict(_diffusers_bin(folder, damage)),
    "Inception weights": lambda folder, damage: load_inception(_damaged(folder, "inception.pth", damage)),
}
REASONS = {"text": "(not a PyTorch file: it starts with b'root')", "empty": "(empty)", "cut": "(cut short or damaged)"}


@pytest.mark.parametrize("damage", REASONS)
@pytest.mark.parametrize("reader", TORCH_READERS)
def test_every_torch_reader_gives_the_same_reason_for_the_same_damage(reader, damage, tmp_path):
    with pytest.raises(GocError) as info:
        TORCH_READERS[reader](tmp_path, damage)
    message = str(info.value)
    assert "\n" not in message and message.startswith("cannot read ") and REASONS[damage] in message, message


@pytest.mark.parametrize(
    "content, reason",
    [(b"", "(empty)"), (b"root:x:0:0\n" * 4, "(not a safetensors file)"), (None, "")],
    ids=["empty", "text", "another model"],
)
def test_a_judge_file_is_checked_by_its_format_and_its_model(content, reason, tmp_path):
    path = tmp_path / "judge.safetensors"
    if content is None:
        save_file({"head.weight": torch.ones(10, 4)}, str(path))
    else:
        path.write_bytes(content)
    with pytest.raises(GocError, match=re.escape(reason) if reason else "weights of another model"):
        load_digits_classifier(path)


@pytest.mark.parametrize(
    "text, says",
    [
        ("l2c:router=", "option router= in method 'l2c:router=' has no value"),
        ("fora:interval= ", "option interval= in method 'fora:interval= ' has no value"),
        ("fora-50+goc:w=", "option w= in method 'fora-50+goc:w=' has no value"),
        ("fora-50+tcc:any_alpha=maybe", "not a yes/no value; use true or false"),
    ],
)
def test_a_method_option_without_a_value_or_of_another_word_is_refused(text, says):
    with pytest.raises(GocError, match=re.escape(says)):
        CacheMethod.parse(text)


@pytest.mark.parametrize("word, value", [("yes", True), ("TRUE", True), ("1", True), ("off", False), ("0", False)])
def test_a_yes_no_method_option_reads_its_words(word, value):
    assert CacheMethod.parse(f"fora-50+tcc:any_alpha={word}").compensator_options == {"any_alpha": value}
