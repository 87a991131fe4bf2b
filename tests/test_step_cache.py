"""Step caching (inference.step_cache): which layers cached steps skip, exactness where it must be exact, and that
it reaches every pipeline with reference attention, Pose Guider, guidance rows, windows and motion modules."""
import pytest
import torch

from marionet.inference.step_cache import StepCache, partition
from marionet.train.memory import flop_counter
from tests.test_inference import image_pipe, sample_inputs, video_pipe  # noqa: F401 - fixtures (this module's own)
from tests.test_zero_shot import images, stock_parts, zero_shot_pipe


def render(pipe, steps=6, **kwargs):
    reference, poses = sample_inputs(frames=kwargs.pop("frames", 6))
    return pipe(reference, poses, num_inference_steps=steps, guidance_scale=kwargs.pop("guidance_scale", 2.5),
                generator=torch.Generator().manual_seed(0), output_type="latent", **kwargs).frames


# ------------------------------------------------------------------------------------------------ the partition
def test_partition_follows_the_skip_connections(tiny_parts):
    """The tiny UNet's skips: 0 conv_in, 1 down_blocks.0's layer, 2 its downsampler, 3 down_blocks.1's layer;
    up_blocks.0's two layers consume 3 and 2, up_blocks.1's consume 1 and 0."""
    unet = tiny_parts["unet"]
    names = {module: name for name, module in unet.named_modules()}
    expected = {  # skips -> (the kept output, the first and last skipped layers)
        1: ("up_blocks.1.attentions.0", "down_blocks.0.resnets.0", "up_blocks.1.resnets.0"),
        2: ("up_blocks.0.upsamplers.0", "down_blocks.0.downsamplers.0", "up_blocks.0.attentions.1"),
        3: ("up_blocks.0.attentions.0", "down_blocks.1.resnets.0", "up_blocks.0.resnets.0"),
    }
    for skips, (kept, first, last) in expected.items():
        deep, boundary = partition(unet, skips)
        assert (names[boundary], names[deep[0]], names[deep[-1]]) == (kept, first, last), skips
        assert "mid_block" in [names[m] for m in deep]
    deep, boundary = partition(unet, 4)  # every skip live: only the mid block is reused
    assert deep == [] and boundary is unet.mid_block
    with pytest.raises(ValueError, match="skips must be between 1 and 4"):
        partition(unet, 5)


# ------------------------------------------------------------------------------------------------ exactness
def test_a_cached_call_on_unchanged_input_equals_the_full_call(video_pipe):
    """The kept deep features are what the full pass computed: with the same input, a cached call must give the
    full call's output (so placeholders never reach a live layer and the right output is kept)."""
    pipe, animator = video_pipe, video_pipe.animator
    reference, poses = sample_inputs(frames=4)
    ref_latents, embeds = pipe.encode_reference_latents(reference, 64, 64), pipe.encode_image(reference)
    features = pipe.encode_pose(poses)
    latents = torch.randn(2, 4, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    for skips in (1, 2, 3):
        cache = StepCache(interval=4, skips=skips).attach(pipe.denoising_unet)
        try:
            with torch.no_grad():
                animator.encode_reference(ref_latents, embeds)
                args = (latents, 500, embeds.expand(2, -1, -1), torch.cat([features] * 2), (True, False))
                with cache.call(0, "window") as full:
                    expected = animator.denoise(*args)
                with cache.call(1, "window") as full_again, flop_counter() as cached_flops:
                    got = animator.denoise(*args)
                with flop_counter() as full_flops:
                    animator.denoise(*args)
        finally:
            cache.detach()
        assert full and not full_again
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
        assert cached_flops.get_total_flops() < 0.9 * full_flops.get_total_flops(), skips
        with torch.no_grad():  # and the hooks are gone
            torch.testing.assert_close(animator.denoise(*args), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("model", ["video", "image"])
def test_interval_one_equals_no_caching(video_pipe, image_pipe, model):
    pipe = video_pipe if model == "video" else image_pipe
    plain = render(pipe, frames=10, context_frames=6, context_overlap=2)  # two windows, guidance rows
    pipe.enable_step_cache(interval=1)
    try:
        same = render(pipe, frames=10, context_frames=6, context_overlap=2)
        cache = pipe.step_cache
        assert cache.cached_calls == 0 and cache.full_calls > 0
    finally:
        pipe.disable_step_cache()
    torch.testing.assert_close(same, plain, rtol=0, atol=0)


@pytest.mark.parametrize("batch_rows", [True, False])
def test_caching_reuses_deep_features_per_window_and_guidance_group(video_pipe, batch_rows):
    plain = render(video_pipe, steps=6, frames=10, context_frames=6, context_overlap=2,
                   batch_guidance_rows=batch_rows)
    cache = video_pipe.enable_step_cache(interval=3, skips=2)
    try:
        cached = render(video_pipe, steps=6, frames=10, context_frames=6, context_overlap=2,
                        batch_guidance_rows=batch_rows)
        calls_per_step = 2 * (1 if batch_rows else 2)  # windows x guidance groups
        assert cache.full_calls == 2 * calls_per_step and cache.cached_calls == 4 * calls_per_step
        assert cache.kept == {}  # forgotten after the video
    finally:
        video_pipe.disable_step_cache()
    assert cached.shape == plain.shape and torch.isfinite(cached).all()
    assert not torch.equal(cached, plain)  # cached steps really reuse features
    assert (cached - plain).norm() / plain.norm() < 0.5  # ... and stay near the uncached render
    torch.testing.assert_close(render(video_pipe, steps=6, frames=10, context_frames=6, context_overlap=2,
                                      batch_guidance_rows=batch_rows), plain, rtol=0, atol=0)


def test_zero_shot_with_controlnet_caches_both_passes(tiny_parts):
    pipe = zero_shot_pipe(stock_parts(tiny_parts))
    source, poses = images(frames=2)
    kwargs = dict(num_inference_steps=4, guidance_scale=2.0, output_type="latent")
    plain = pipe(source, poses, generator=torch.Generator().manual_seed(0), **kwargs).frames
    cache = pipe.enable_step_cache(interval=1)
    same = pipe(source, poses, generator=torch.Generator().manual_seed(0), **kwargs).frames
    torch.testing.assert_close(same, plain, rtol=0, atol=0)
    assert len(cache.models) == 2  # the UNet and the ControlNet
    cache = pipe.enable_step_cache(interval=2, skips=1)
    cached = pipe(source, poses, generator=torch.Generator().manual_seed(0), **kwargs).frames
    pipe.disable_step_cache()
    # Target pass: steps 0, 2 full, 1, 3 cached. Source pass: the same, except that step 1's source has F frames
    # ("previous-target" noise) where step 0's had one, a new call shape and so a full call.
    assert (cache.full_calls, cache.cached_calls) == (5, 3)
    assert not torch.equal(cached, plain) and torch.isfinite(cached).all()


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="interval"):
        StepCache(interval=0)
    with pytest.raises(ValueError, match="skips"):
        StepCache(skips=0)
