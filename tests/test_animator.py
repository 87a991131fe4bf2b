"""Animator: pose injection, reference gradients, freezing, layouts and save/load."""

import pytest
import torch

from marionet.models import Animator, ReferenceAttnProcessor
from tests.conftest import make_animator, randomize_


def inputs(batch=2, frames=None, seed=0, size=64, dim=32):
    gen = torch.Generator().manual_seed(seed)
    latent = size // 8
    shape = (batch, 4, frames, latent, latent) if frames else (batch, 4, latent, latent)
    pose_shape = (batch, 3, frames, size, size) if frames else (batch, 3, size, size)
    return dict(
        noisy_latents=torch.randn(shape, generator=gen),
        timesteps=torch.randint(0, 1000, (batch,), generator=gen),
        ref_latents=torch.randn(batch, 4, latent, latent, generator=gen),
        image_embeds=torch.randn(batch, 1, dim, generator=gen),
        pose_images=torch.rand(pose_shape, generator=gen),
    )


def test_processors_cover_spatial_self_attention_only(tiny_parts):
    animator = make_animator(tiny_parts, with_motion=True)
    for name, proc in animator.denoising_unet.attn_processors.items():
        is_spatial_self = name.endswith("attn1.processor") and "motion_modules" not in name
        assert isinstance(proc, ReferenceAttnProcessor) == is_spatial_self, name
    # pairing is by module name: each denoising layer reads the bank entry written under its own name
    reference_names = {n for n, p in animator.reference_unet.attn_processors.items()
                       if isinstance(p, ReferenceAttnProcessor)}
    denoising_names = {n for n, p in animator.denoising_unet.attn_processors.items()
                       if isinstance(p, ReferenceAttnProcessor)}
    assert reference_names == denoising_names and len(reference_names) == 7  # 2 down, 1 mid, 4 up


def test_reference_tokens_change_the_prediction(animator):
    x = inputs()
    with torch.no_grad():
        base = animator(**x)
        other = animator(**dict(x, ref_latents=torch.randn_like(x["ref_latents"])))
    assert not torch.allclose(base, other, atol=1e-4)


def test_zero_initialised_pose_guider_is_a_no_op_until_trained(animator):
    x = inputs()
    with torch.no_grad():
        with_pose = animator(**x)
        animator.encode_reference(x["ref_latents"], x["image_embeds"])
        without_pose = animator.denoise(x["noisy_latents"], x["timesteps"], x["image_embeds"], None)
    assert torch.equal(with_pose, without_pose)

    optimizer = torch.optim.SGD(animator.pose_guider.parameters(), lr=1.0)
    target = x["pose_images"][:, :, ::8, ::8].mean(1, keepdim=True).expand_as(x["noisy_latents"])
    loss = torch.nn.functional.mse_loss(animator(**x), target)
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        after = animator(**x)
        other_pose = animator(**dict(x, pose_images=torch.rand_like(x["pose_images"])))
    assert not torch.allclose(after, with_pose, atol=1e-6)
    # identical computations are bit-identical here, so any difference comes from the pose
    assert (after - other_pose).abs().max() > 1e-7


def test_gradients_reach_reference_net_through_bank_and_never_its_tail(animator):
    randomize_(animator.pose_guider)
    animator(**inputs()).square().mean().backward()
    no_grad = {n for n, p in animator.reference_unet.named_parameters() if p.grad is None}
    assert no_grad == animator.reference_tail
    assert {"conv_out.weight", "conv_norm_out.weight"} <= no_grad
    assert all(not p.requires_grad for n, p in animator.reference_unet.named_parameters() if n in no_grad)
    first = animator.reference_unet.down_blocks[0].attentions[0].transformer_blocks[0]
    assert first.attn1.to_q.weight.grad.abs().sum() > 0  # feeds the banked tokens of later layers
    assert all(p.grad is not None for p in animator.pose_guider.parameters())


def test_dropped_rows_equal_a_fully_dropped_call(animator):
    x = inputs(batch=3)
    drop = torch.tensor([False, True, False])
    with torch.no_grad():
        mixed = animator(**x, drop_reference=drop)
        all_dropped = animator(**x, drop_reference=torch.ones(3, dtype=torch.bool))
        none_dropped = animator(**x)
    assert torch.allclose(mixed[1], all_dropped[1], atol=1e-5)
    assert torch.allclose(mixed[0], none_dropped[0], atol=1e-5)
    assert not torch.allclose(mixed[1], none_dropped[1], atol=1e-4)


def test_fully_dropped_batch_still_gives_every_trainable_reference_parameter_a_gradient(animator):
    animator(**inputs(), drop_reference=torch.ones(2, dtype=torch.bool)).mean().backward()
    for name, param in animator.reference_unet.named_parameters():
        if param.requires_grad:
            assert param.grad is not None, name


def test_image_model_on_video_equals_frame_by_frame(animator):
    randomize_(animator.pose_guider)
    x = inputs(batch=2, frames=3)
    with torch.no_grad():
        video = animator(**x)
        for f in range(3):
            frame = animator(x["noisy_latents"][:, :, f], x["timesteps"], x["ref_latents"], x["image_embeds"],
                             x["pose_images"][:, :, f])
            assert torch.allclose(video[:, :, f], frame, atol=1e-5), f


def test_stage2_freeze_leaves_exactly_motion_modules_trainable(tiny_parts):
    animator = make_animator(tiny_parts, with_motion=True)
    trainable = animator.freeze_except_motion()
    names = {n for n, p in animator.named_parameters() if p.requires_grad}
    assert names == set(trainable) and names
    assert all("motion_modules" in n and n.startswith("denoising_unet.") for n in names)
    motion_params = {n for n, _ in animator.named_parameters() if "motion_modules" in n}
    assert names == motion_params


def test_video_model_runs_and_uses_per_frame_group_norm(tiny_parts):
    from marionet.models import PerFrameGroupNorm

    animator = make_animator(tiny_parts, with_motion=True)
    norms = [m for m in animator.denoising_unet.modules() if isinstance(m, PerFrameGroupNorm)]
    assert norms, "motion modules should normalise per frame, as the original AnimateDiff does"
    randomize_(animator.denoising_unet)
    x = inputs(batch=2, frames=4)
    with torch.no_grad():
        out = animator(**x)
    assert out.shape == x["noisy_latents"].shape
    # temporal layers mix frames: changing frame 0's latent changes frame 3's prediction
    y = dict(x, noisy_latents=x["noisy_latents"].clone())
    y["noisy_latents"][:, :, 0] += 1.0
    with torch.no_grad():
        out2 = animator(**y)
    assert not torch.allclose(out[:, :, 3], out2[:, :, 3], atol=1e-5)


def test_per_frame_group_norm_normalises_each_frame():
    from marionet.models import PerFrameGroupNorm

    norm = PerFrameGroupNorm(2, 4)
    x = torch.randn(2, 4, 3, 5, 5)
    x[:, :, 1] *= 10
    expected = torch.stack([torch.nn.functional.group_norm(x[:, :, f], 2, norm.weight, norm.bias, norm.eps)
                            for f in range(3)], dim=2)
    assert torch.allclose(norm(x), expected, atol=1e-5)


@pytest.mark.parametrize("with_motion", [False, True])
def test_save_and_load_reproduce_outputs_exactly(tiny_parts, tmp_path, with_motion):
    animator = make_animator(tiny_parts, with_motion=with_motion)
    randomize_(animator, seed=1, std=0.02)
    animator.save_pretrained(tmp_path / "model")
    loaded = Animator.from_pretrained(tmp_path / "model")
    assert loaded.is_video_model == with_motion
    x = inputs(frames=4 if with_motion else None)
    with torch.no_grad():
        assert torch.equal(animator(**x), loaded(**x))
    assert (tmp_path / "model" / "motion_adapter").exists() == with_motion
    assert not [p for p in (tmp_path / "model").iterdir() if p.name.startswith(".")]


def test_missing_model_subfolder_is_named(tmp_path):
    from marionet.models import MissingWeightsError

    with pytest.raises(MissingWeightsError, match="reference_unet"):
        (tmp_path / "m").mkdir()
        Animator.from_pretrained(tmp_path / "m")
    with pytest.raises(MissingWeightsError, match="nowhere"):
        Animator.from_pretrained(tmp_path / "nowhere")


def test_pose_guider_initialises_from_controlnet(tiny_parts):
    from diffusers import ControlNetModel

    from marionet.models import PoseGuider

    controlnet = ControlNetModel.from_unet(tiny_parts["unet"], conditioning_embedding_out_channels=(8, 16, 32, 64))
    randomize_(controlnet.controlnet_cond_embedding, seed=3)
    guider = PoseGuider.from_controlnet(controlnet)
    embedding = controlnet.controlnet_cond_embedding
    assert torch.equal(guider.conv_in.weight, embedding.conv_in.weight)
    assert torch.equal(guider.blocks[3].weight, embedding.blocks[3].weight)
    assert guider.conv_out.weight.abs().sum() == 0
    assert guider.downsample_factor == 8
