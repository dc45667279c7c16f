"""Model facts (DiT-XL/2 count and official keys), addressable units, checkpoint loading."""

from __future__ import annotations

import argparse
import re

import pytest
import torch
from safetensors.torch import save_file

from goc_utils.errors import CheckpointError, UnknownPresetError
from goc_utils.model.checkpoints import guess_preset, load_model, read_state_dict
from goc_utils.model.dit import ATTENTION, MLP
from goc_utils.model.presets import MAX_CLASSES, DiT_models, count_parameters, create_model


@pytest.fixture(scope="module")
def xl_meta():
    with torch.device("meta"):
        return create_model("DiT-XL/2")


def test_dit_xl2_parameter_count(xl_meta):
    assert count_parameters(xl_meta) == 675_129_632


def test_dit_xl2_has_the_292_official_keys_and_shapes(xl_meta):
    shapes = {k: tuple(v.shape) for k, v in xl_meta.state_dict().items()}
    assert len(shapes) == 292
    per_block = {
        "attn.qkv.weight": (3456, 1152),
        "attn.qkv.bias": (3456,),
        "attn.proj.weight": (1152, 1152),
        "attn.proj.bias": (1152,),
        "mlp.fc1.weight": (4608, 1152),
        "mlp.fc1.bias": (4608,),
        "mlp.fc2.weight": (1152, 4608),
        "mlp.fc2.bias": (1152,),
        "adaLN_modulation.1.weight": (6912, 1152),
        "adaLN_modulation.1.bias": (6912,),
    }
    expected = {
        "pos_embed": (1, 256, 1152),
        "x_embedder.proj.weight": (1152, 4, 2, 2),
        "x_embedder.proj.bias": (1152,),
        "t_embedder.mlp.0.weight": (1152, 256),
        "t_embedder.mlp.0.bias": (1152,),
        "t_embedder.mlp.2.weight": (1152, 1152),
        "t_embedder.mlp.2.bias": (1152,),
        "y_embedder.embedding_table.weight": (1001, 1152),
        "final_layer.linear.weight": (32, 1152),
        "final_layer.linear.bias": (32,),
        "final_layer.adaLN_modulation.1.weight": (2304, 1152),
        "final_layer.adaLN_modulation.1.bias": (2304,),
    }
    for i in range(28):
        expected.update({f"blocks.{i}.{k}": v for k, v in per_block.items()})
    assert shapes == expected


def test_presets_follow_dit_naming():
    assert {"DiT-XL/2", "DiT-XL/4", "DiT-XL/8", "DiT-L/2", "DiT-B/4", "DiT-S/8", "tiny-digits"} <= set(DiT_models)
    for name in DiT_models:
        assert re.fullmatch(r"DiT-(XL|L|B|S)/(2|4|8)|tiny-(digits|fashion)", name)


def test_no_preset_has_more_classes_than_class_lists_accept():
    for name in DiT_models:
        with torch.device("meta"):
            model = create_model(name)
        assert model.num_classes <= MAX_CLASSES, name


def test_unknown_preset_is_a_clear_error():
    with pytest.raises(UnknownPresetError, match="unknown model preset 'DiT-XXL/2'.*DiT-XL/2"):
        create_model("DiT-XXL/2")


def test_tiny_digits_preset_shape():
    model = create_model("tiny-digits")
    assert (model.depth, model.num_tokens, model.in_channels, model.num_classes) == (12, 16, 1, 10)
    assert model.learn_sigma and model.y_embedder.embedding_table.num_embeddings == 11  # null class row


def test_forward_shape_and_learned_sigma_channels(tiny_random):
    x = torch.randn(3, 1, 8, 8)
    out = tiny_random(x, torch.tensor([0, 500, 999]), torch.tensor([1, 2, 10]))
    assert out.shape == (3, 2, 8, 8)


def test_identity_unit_fn_equals_plain_forward_bit_for_bit(tiny_random):
    x, t, y = torch.randn(4, 1, 8, 8), torch.tensor([3, 200, 600, 999]), torch.tensor([0, 1, 2, 3])
    calls = []

    def unit_fn(block, unit, compute):
        calls.append((block, unit))
        return compute()

    with torch.no_grad():
        plain = tiny_random(x, t, y)
        hooked = tiny_random(x, t, y, unit_fn=unit_fn)
    assert torch.equal(plain, hooked)
    assert calls == [(b, u) for b in range(tiny_random.depth) for u in (ATTENTION, MLP)]


def test_replacing_one_unit_changes_the_output_and_skips_its_compute(tiny_random):
    x, t, y = torch.randn(2, 1, 8, 8), torch.tensor([10, 10]), torch.tensor([0, 1])
    computed = []

    def unit_fn(block, unit, compute):
        if (block, unit) == (1, MLP):
            return torch.zeros(2, tiny_random.num_tokens, tiny_random.hidden_size)
        computed.append((block, unit))
        return compute()

    with torch.no_grad():
        plain = tiny_random(x, t, y)
        replaced = tiny_random(x, t, y, unit_fn=unit_fn)
    assert (1, MLP) not in computed and len(computed) == 2 * tiny_random.depth - 1
    assert not torch.allclose(plain, replaced)


# ------------------------------------------------------------------------- checkpoints


def _small_preset_state(name: str = "DiT-S/8"):
    return create_model(name, image_size=64).state_dict()


def test_load_plain_state_dict_train_checkpoint_and_safetensors(tmp_path):
    state = _small_preset_state()
    torch.save(state, tmp_path / "plain.pt")
    torch.save(
        {"model": state, "ema": state, "opt": {}, "args": argparse.Namespace(model="DiT-S/8")}, tmp_path / "train.pt"
    )
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "w.safetensors"))
    for name in ("plain.pt", "train.pt", "w.safetensors"):
        model = load_model("DiT-S/8", tmp_path / name, image_size=64)
        assert torch.equal(model.blocks[3].mlp.fc2.weight, state["blocks.3.mlp.fc2.weight"])
        assert not model.training


def test_pickles_with_arbitrary_objects_are_refused(tmp_path):
    torch.save({"ema": _small_preset_state(), "evil": torch.nn.Linear(2, 2)}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        read_state_dict(tmp_path / "bad.pt")


def test_mismatched_checkpoint_names_the_likely_preset(tmp_path):
    torch.save(_small_preset_state("DiT-S/8"), tmp_path / "s8.pt")
    with pytest.raises(CheckpointError) as info:
        load_model("tiny-digits", tmp_path / "s8.pt")
    message = str(info.value)
    assert "\n" not in message
    assert "use --model DiT-S/8" in message and "shape mismatches" in message


def test_same_preset_other_resolution_suggests_image_size(tmp_path):
    torch.save(_small_preset_state("DiT-S/8"), tmp_path / "s8_64px.pt")
    with pytest.raises(CheckpointError, match="8x8 input: use the matching --image-size"):
        load_model("DiT-S/8", tmp_path / "s8_64px.pt", image_size=128)


def test_guess_preset_recognises_presets_and_rejects_foreign_dicts():
    assert guess_preset({"encoder.weight": torch.zeros(3, 3)}) is None
    assert guess_preset(create_model("tiny-digits").state_dict()) == ("tiny-digits", 8)


def test_missing_and_garbage_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model("tiny-digits", tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_model("tiny-digits", tmp_path / "junk.pt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="no state dict"):
        load_model("tiny-digits", tmp_path / "list.pt")


def test_dit_xl_without_checkpoint_asks_for_one():
    with pytest.raises(CheckpointError, match="--ckpt"):
        load_model("DiT-XL/2")
