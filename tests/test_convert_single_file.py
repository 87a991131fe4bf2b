"""`convert single-file`, base loading and the ControlNet -> Pose Guider init, on tiny models written in the
foreign formats (LDM names built in tests/test_convert_formats.py from the format's layout)."""
from __future__ import annotations

import pytest
import torch

from test_convert_formats import ldm_unet_state, ldm_vae_state


def _randomized(model, seed):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.02)
    return model


@pytest.fixture(scope="module")
def sd_file(tmp_path_factory, tiny_parts):
    """A tiny original-format checkpoint (UNet + VAE + a text-encoder key and a schedule buffer to ignore)."""
    import copy

    from safetensors.torch import save_file

    from marionet.models import save_base_folder

    root = tmp_path_factory.mktemp("sd")
    unet = _randomized(copy.deepcopy(tiny_parts["unet"]), 1)
    vae = _randomized(copy.deepcopy(tiny_parts["vae"]), 2)
    state = {**ldm_unet_state(unet), **ldm_vae_state(vae),
             "cond_stage_model.transformer.text_model.final_layer_norm.weight": torch.ones(8),
             "alphas_cumprod": torch.linspace(1, 0, 10)}
    save_file({k: v.contiguous() for k, v in state.items()}, str(root / "tiny_sd.safetensors"))
    config = save_base_folder({"unet": tiny_parts["unet"], "vae": tiny_parts["vae"],
                               "scheduler": tiny_parts["scheduler"]}, root / "config")
    return root / "tiny_sd.safetensors", config, unet, vae


def _same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_single_file_converts_back_exactly(sd_file):
    from marionet.models.convert.single_file import convert_single_file

    path, config, unet, vae = sd_file
    parts = convert_single_file(path, config_dir=config)
    assert _same(parts["unet"], unet) and _same(parts["vae"], vae)
    assert parts["ignored"] == ["alphas_cumprod", "cond_stage_model.transformer.text_model.final_layer_norm.weight"]
    x, context = torch.randn(1, 4, 8, 8), torch.randn(1, 1, 32)
    with torch.no_grad():
        assert torch.equal(parts["unet"](x, 10, encoder_hidden_states=context).sample,
                           unet(x, 10, encoder_hidden_states=context).sample)
        image = torch.rand(1, 3, 32, 32)
        torch.testing.assert_close(parts["vae"].encode(image).latent_dist.mean, vae.encode(image).latent_dist.mean,
                                   rtol=0, atol=0)


def test_single_file_cli_and_base_loading_round_trip(sd_file, tiny_parts, tmp_path):
    from marionet.cli import main
    from marionet.models import save_base_folder
    from marionet.models.convert.base import load_base_components

    path, config, unet, vae = sd_file
    out = tmp_path / "sd"
    assert main(["convert", "single-file", "--ckpt", str(path), "--config", str(config), "--out", str(out)]) == 0
    assert "marionet convert single-file" in (out / "README.md").read_text()
    encoder_root = save_base_folder({"image_encoder": tiny_parts["image_encoder"],
                                     "feature_extractor": tiny_parts["feature_extractor"]}, tmp_path / "variations")
    parts = load_base_components(out, image_encoder=encoder_root / "image_encoder")
    assert _same(parts["unet"], unet) and _same(parts["vae"], vae)
    assert _same(parts["image_encoder"], tiny_parts["image_encoder"])
    assert parts["feature_extractor"].crop_size == tiny_parts["feature_extractor"].crop_size  # found beside it
    # the single file itself also works as a base
    direct = load_base_components(path, config_dir=config, image_encoder=encoder_root / "image_encoder")
    assert _same(direct["unet"], unet)


def test_single_file_errors(sd_file, tmp_path):
    from safetensors.torch import load_file, save_file

    from marionet.models.convert.common import ConversionError
    from marionet.models.convert.single_file import convert_single_file

    path, config, _, _ = sd_file
    state = load_file(str(path))
    state["model.diffusion_model.input_blocks.1.0.in_layers.2.weight"] = torch.zeros(32, 32, 5, 5)
    bad = tmp_path / "bad.safetensors"
    save_file(state, str(bad))
    with pytest.raises(ConversionError, match="shape mismatches: down_blocks.0.resnets.0.conv1.weight") as error:
        convert_single_file(bad, config_dir=config)
    assert str(bad) in str(error.value)
    only_vae = tmp_path / "vae_only.safetensors"
    save_file({k: v for k, v in load_file(str(path)).items() if k.startswith("first_stage_model.")}, str(only_vae))
    with pytest.raises(ConversionError, match="original SD format"):
        convert_single_file(only_vae, config_dir=config)


def test_missing_base_folders_are_all_named(tmp_path):
    from marionet.models.convert.base import load_base_components
    from marionet.models.loading import MissingWeightsError

    (tmp_path / "base").mkdir()
    with pytest.raises(MissingWeightsError) as error:
        load_base_components(tmp_path / "base", vae=tmp_path / "no_vae", image_encoder=tmp_path / "no_clip")
    message = str(error.value)
    assert str(tmp_path / "base" / "unet") in message and str(tmp_path / "no_vae") in message
    assert str(tmp_path / "no_clip") in message


def test_pose_guider_from_controlnet_folder(tiny_parts, tmp_path):
    from diffusers import ControlNetModel

    from marionet.cli import main
    from marionet.models import PoseGuider
    from marionet.models.convert.base import load_pose_guider_init

    torch.manual_seed(0)
    controlnet = ControlNetModel.from_unet(tiny_parts["unet"], conditioning_embedding_out_channels=(4, 8, 8, 16))
    _randomized(controlnet.controlnet_cond_embedding, 3)
    controlnet.save_pretrained(tmp_path / "controlnet")
    guider = load_pose_guider_init(tmp_path / "controlnet")
    assert guider.config.block_out_channels == (4, 8, 8, 16)
    assert guider.conv_out.weight.abs().sum() == 0 and guider.conv_out.bias.abs().sum() == 0
    pose = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert guider(pose).abs().max() == 0  # zero output: the UNet starts unchanged
        guider.conv_out.load_state_dict(controlnet.controlnet_cond_embedding.conv_out.state_dict())
        torch.testing.assert_close(guider(pose), controlnet.controlnet_cond_embedding(pose), rtol=1e-6, atol=1e-6)
    out = tmp_path / "guider"
    assert main(["convert", "pose-guider", "--controlnet", str(tmp_path / "controlnet"), "--out", str(out)]) == 0
    assert "Pose Guider initial weights" in (out / "README.md").read_text()
    assert PoseGuider.from_pretrained(out).conv_in.weight.equal(load_pose_guider_init(tmp_path / "controlnet")
                                                                 .conv_in.weight)


def test_builtin_sd15_configs_match_the_real_checkpoint_layout():
    """v1-5-pruned-emaonly's layout (686 UNet and 248 VAE tensors, known key names), on the meta device."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint

    from marionet.models.convert.single_file import SD15_UNET_CONFIG, SD15_VAE_CONFIG

    with torch.device("meta"):
        unet, vae = UNet2DConditionModel(**SD15_UNET_CONFIG), AutoencoderKL(**SD15_VAE_CONFIG)
    ldm_unet, ldm_vae = ldm_unet_state(unet), ldm_vae_state(vae)
    assert (len(ldm_unet), len(ldm_vae)) == (686, 248)
    for key in ("model.diffusion_model.input_blocks.3.0.op.weight",
                "model.diffusion_model.output_blocks.2.1.conv.weight",
                "model.diffusion_model.output_blocks.5.2.conv.weight", "first_stage_model.encoder.mid.attn_1.q.weight",
                "first_stage_model.decoder.up.3.upsample.conv.weight"):
        assert key in ldm_unet or key in ldm_vae, key
    for model, converted in ((unet, convert_ldm_unet_checkpoint(ldm_unet, dict(unet.config))),
                             (vae, convert_ldm_vae_checkpoint(ldm_vae, dict(vae.config)))):
        expected = model.state_dict()
        assert converted.keys() == expected.keys()
        assert all(converted[k].shape == expected[k].shape for k in expected)
