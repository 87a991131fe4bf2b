"""Motion-module converter: formats built independently (tests/test_convert_formats.py) -> converted -> same
numbers."""
from __future__ import annotations

import copy

import pytest
import torch

from test_convert_formats import (motion_module_locations, original_motion_state, original_temporal_module,
                                  replace_motion_modules, sinusoid)

HEADS = 2  # the tiny motion modules' head count (32 and 64 channels)


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


# ------------------------------------------------------------------------------------------- motion modules
@pytest.fixture(scope="module")
def motion_ckpt(tmp_path_factory):
    state = original_motion_state(channels=(32, 64), layers=1, max_len=24, seed=3)
    path = tmp_path_factory.mktemp("mm") / "mm_tiny.ckpt"
    torch.save(state, path)
    return path, state


def test_motion_module_equals_original_forward(motion_ckpt):
    from marionet.models.convert.motion_module import load_motion_adapter
    from marionet.models.motion import use_per_frame_norm

    path, state = motion_ckpt
    adapter, info = load_motion_adapter(path, heads=HEADS)
    assert info["config"]["motion_max_seq_length"] == 24 and info["config"]["use_motion_mid_block"]
    assert use_per_frame_norm(adapter) == len(motion_module_locations((32, 64), 1))
    modules = dict(adapter.named_modules())
    torch.manual_seed(0)
    for prefix, channels in motion_module_locations((32, 64), 1):
        x = torch.randn(2 * 5, channels, 4, 4)  # two samples of five frames, batch-major
        with torch.no_grad():
            ours = modules[prefix.rstrip(".")](x, num_frames=5)
            theirs = original_temporal_module(state, prefix, x, 5, HEADS)
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5, msg=prefix)


def test_motion_unet_equals_original_and_stock_diffusers_differs(motion_ckpt, tiny_parts):
    from diffusers import UNetMotionModel

    from marionet.models.convert.motion_module import load_motion_adapter
    from marionet.models.motion import to_motion_unet

    path, state = motion_ckpt
    adapter, _ = load_motion_adapter(path, heads=HEADS)
    unet = copy.deepcopy(tiny_parts["unet"])
    ours = to_motion_unet(unet, adapter).eval()
    stock = UNetMotionModel.from_unet2d(unet, adapter).eval()  # diffusers' cross-frame GroupNorm
    reference = UNetMotionModel.from_unet2d(unet, copy.deepcopy(tiny_parts["motion_adapter"])).eval()
    replace_motion_modules(reference, state, HEADS, groups=32)  # the original computation, not our weights

    torch.manual_seed(1)
    latents = torch.randn(2, 4, 4, 8, 8)
    context = torch.randn(2 * 4, 1, 32)
    with torch.no_grad():
        expected = reference(latents, 400, encoder_hidden_states=context).sample
        got = ours(latents, 400, encoder_hidden_states=context).sample
        got_stock = stock(latents, 400, encoder_hidden_states=context).sample
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    stock_error = _rel(got_stock, expected)
    print(f"relative difference, stock diffusers GroupNorm vs original: {stock_error:.2e}; "
          f"ours: {_rel(got, expected):.2e}")
    assert stock_error > 1e-3  # the documented cross-frame vs per-frame GroupNorm difference is real


def test_motion_module_cli_round_trip(motion_ckpt, tmp_path):
    from marionet.cli import main
    from marionet.models.convert.motion_module import load_motion_adapter

    path, _ = motion_ckpt
    out = tmp_path / "adapter"
    assert main(["convert", "motion-module", "--ckpt", str(path), "--out", str(out),
                 "--motion-heads", str(HEADS)]) == 0
    assert (out / "config.json").is_file() and (out / "diffusion_pytorch_model.safetensors").is_file()
    card = (out / "README.md").read_text()  # a model card naming the source and the command
    assert str(path) in card and "marionet convert motion-module" in card and "library_name: marionet" in card
    direct, _ = load_motion_adapter(path, heads=HEADS)
    loaded, _ = load_motion_adapter(out)
    assert loaded.config.motion_num_attention_heads == HEADS
    a, b = direct.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # never overwritten silently
    assert main(["convert", "motion-module", "--ckpt", str(path), "--out", str(out)]) == 2


@pytest.mark.parametrize("damage", ["unexpected", "shape", "pe", "not_motion"])
def test_motion_module_bad_checkpoints_are_named(motion_ckpt, tmp_path, damage):
    from marionet.models.convert.common import ConversionError
    from marionet.models.convert.motion_module import load_motion_adapter

    _, state = motion_ckpt
    state = dict(state)
    block = "down_blocks.0.motion_modules.0.temporal_transformer.transformer_blocks.0."
    if damage == "unexpected":
        state[block + "attention_blocks.0.to_q.bias"] = torch.zeros(32)
        match = "unexpected keys: down_blocks.0.motion_modules.0.transformer_blocks.0.attn1.to_q.bias"
    elif damage == "shape":
        state[block + "ff_norm.weight"] = torch.ones(31)
        match = "shape mismatches: down_blocks.0.motion_modules.0.transformer_blocks.0.norm3.weight"
    elif damage == "pe":
        state[block + "attention_blocks.1.pos_encoder.pe"] = state[block + "attention_blocks.1.pos_encoder.pe"] * 2
        match = "differs from the other positional table"
    else:
        state = {"conv_in.weight": torch.zeros(4, 4, 3, 3)}
        match = "no `temporal_transformer` keys"
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(ConversionError, match=match) as error:
        load_motion_adapter(path, heads=HEADS)
    assert str(path) in str(error.value)


def test_unsafe_pickle_is_refused_with_the_file_named(tmp_path):
    from marionet.models.convert.common import ConversionError, read_state_dict

    path = tmp_path / "weird.pth"
    torch.save({"w": torch.zeros(1), "obj": _Opaque()}, path)
    with pytest.raises(ConversionError, match="weights_only=True") as error:
        read_state_dict(path, "test weights")
    assert str(path) in str(error.value)
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ConversionError, match="cannot (be )?read") as error:
        read_state_dict(garbage, "test weights")
    assert str(garbage) in str(error.value)


class _Opaque:
    pass


def test_sd15_motion_layout_gives_animatediffs_adapter_config():
    """mm_sd_v15_v2.ckpt's layout (shapes only, on the meta device): 21 modules x 28 tensors, 32-frame tables."""
    from diffusers import MotionAdapter

    from marionet.models.convert.motion_module import adapter_config_from_state, convert_original_motion_state

    state = {}
    for prefix, c in motion_module_locations((320, 640, 1280, 1280), 2):
        shapes = {"norm.weight": (c,), "norm.bias": (c,), "proj_in.weight": (c, c), "proj_in.bias": (c,),
                  "proj_out.weight": (c, c), "proj_out.bias": (c,)}
        block = "transformer_blocks.0."
        for a in range(2):
            for name in ("to_q", "to_k", "to_v", "to_out.0"):
                shapes[f"{block}attention_blocks.{a}.{name}.weight"] = (c, c)
            shapes.update({f"{block}attention_blocks.{a}.to_out.0.bias": (c,), f"{block}norms.{a}.weight": (c,),
                           f"{block}norms.{a}.bias": (c,), f"{block}attention_blocks.{a}.pos_encoder.pe": (1, 32, c)})
        shapes.update({block + "ff.net.0.proj.weight": (8 * c, c), block + "ff.net.0.proj.bias": (8 * c,),
                       block + "ff.net.2.weight": (c, 4 * c), block + "ff.net.2.bias": (c,),
                       block + "ff_norm.weight": (c,), block + "ff_norm.bias": (c,)})
        for name, shape in shapes.items():
            state[prefix + "temporal_transformer." + name] = torch.empty(shape, device="meta")
    assert len(state) == 588
    converted, info = convert_original_motion_state(state)
    config = adapter_config_from_state(converted, max_seq_length=info["max_seq_length"])
    with torch.device("meta"):
        adapter = MotionAdapter(**config)
    import inspect

    defaults = {k: p.default for k, p in inspect.signature(MotionAdapter.__init__).parameters.items()}
    for key, value in config.items():  # AnimateDiff's SD1.5 adapter is diffusers' default MotionAdapter
        assert value == defaults[key], key
    expected = adapter.state_dict()
    assert expected.keys() == converted.keys()
    assert all(expected[k].shape == converted[k].shape for k in expected)


def test_longer_frame_limit_keeps_the_numbers(motion_ckpt):
    """--max-frames 48 on a 24-frame checkpoint: diffusers' longer sinusoid extends the checkpoint's table."""
    from marionet.models.convert.motion_module import load_motion_adapter
    from marionet.models.motion import use_per_frame_norm

    path, state = motion_ckpt
    short, _ = load_motion_adapter(path, heads=HEADS)
    long, info = load_motion_adapter(path, heads=HEADS, max_seq_length=48)
    assert info["config"]["motion_max_seq_length"] == 48
    use_per_frame_norm(short), use_per_frame_norm(long)
    x = torch.randn(6, 32, 4, 4)
    with torch.no_grad():
        a = short.down_blocks[0].motion_modules[0](x, num_frames=6)
        b = long.down_blocks[0].motion_modules[0](x, num_frames=6)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)  # the two tables differ by float rounding
    x = torch.randn(40, 32, 2, 2)  # 40 frames: beyond the checkpoint's own table
    with torch.no_grad():
        got = long.down_blocks[0].motion_modules[0](x, num_frames=40)
    long_table = dict(state)
    for key in [k for k in long_table if k.endswith("pos_encoder.pe")]:
        long_table[key] = sinusoid(48, long_table[key].shape[2])
    expected = original_temporal_module(long_table, "down_blocks.0.motion_modules.0.", x, 40, HEADS)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
