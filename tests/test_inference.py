"""PoseToVideoPipeline: windows, determinism, ReferenceNet reuse, batched guidance, re-roll, save/load."""
import copy

import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel

from marionet.inference.pipeline import PoseToVideoPipeline, combine_guidance, guidance_rows
from marionet.inference.windows import context_windows, position_weights
from tests.conftest import randomize_

SIZE = 64  # pixels; latents 8x8
FRAMES = 6


def build_pipeline(parts, with_motion: bool) -> PoseToVideoPipeline:
    """A tiny pipeline whose zero-initialised layers (Pose Guider output, motion outputs) have random weights."""
    unet = copy.deepcopy(parts["unet"])
    reference = UNet2DConditionModel.from_config(unet.config)
    reference.load_state_dict(unet.state_dict())
    guider = copy.deepcopy(parts["pose_guider"])
    randomize_(guider, seed=1, std=0.2)
    adapter = None
    if with_motion:
        adapter = copy.deepcopy(parts["motion_adapter"])
        randomize_(adapter, seed=2)
    pipe = PoseToVideoPipeline(reference_unet=reference, denoising_unet=unet, pose_guider=guider, vae=parts["vae"],
                               image_encoder=parts["image_encoder"], feature_extractor=parts["feature_extractor"],
                               scheduler=parts["scheduler"], motion_adapter=adapter)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def video_pipe(tiny_parts):
    return build_pipeline(tiny_parts, with_motion=True)


@pytest.fixture(scope="module")
def image_pipe(tiny_parts):
    return build_pipeline(tiny_parts, with_motion=False)


def sample_inputs(frames=FRAMES, size=SIZE, seed=0):
    rng = np.random.default_rng(seed)
    reference = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    poses = np.zeros((frames, size, size, 3), np.uint8)
    for i in range(frames):  # a moving bright square as a stand-in skeleton
        x = 8 + 4 * i
        poses[i, 16:40, x:x + 12] = (255, 128, 0)
    return reference, poses


# ------------------------------------------------------------------------------------------------ windows
def test_windows_cover_every_frame_without_wrapping():
    windows = context_windows(10, 4, 1)
    assert windows == [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9]]
    windows = context_windows(11, 4, 1)
    assert windows[-1] == [7, 8, 9, 10] and all(max(w) < 11 for w in windows)
    assert sorted({i for w in windows for i in w}) == list(range(11))
    assert context_windows(5, 24, 4) == [list(range(5))]


def test_closed_loop_wraps_only_when_asked():
    loop = context_windows(10, 4, 1, closed_loop=True)
    assert loop[-1] == [9, 0, 1, 2]
    assert all(len(w) == 4 for w in loop)
    with pytest.raises(ValueError, match="overlap"):
        context_windows(10, 4, 4)


def test_position_weights_favour_the_centre():
    w = position_weights(6)
    assert torch.all(w > 0)
    assert w[2] > w[0] and w[3] > w[5] and torch.equal(w, w.flip(0))


# ------------------------------------------------------------------------------------------------ pipeline
def plain_loop(pipe, reference, poses, steps, guidance, seed):
    """The textbook computation on the whole video at once (no windows), for comparison."""
    generator = torch.Generator().manual_seed(seed)
    latents = pipe.prepare_latents(len(poses), SIZE, SIZE, generator)
    scheduler = pipe.sampling_scheduler()
    scheduler.set_timesteps(steps)
    latents = latents * scheduler.init_noise_sigma
    ref_latents, embeds = pipe.encode_reference_image(reference, SIZE, SIZE)
    animator = pipe.animator
    animator.encode_reference(ref_latents, embeds)
    animator.reference_state.repeat_bank(2)
    pose = torch.from_numpy(poses).permute(3, 0, 1, 2)[None].float() / 255.0  # (1, 3, F, H, W)
    features = animator.encode_pose(pose)
    with torch.no_grad():
        for t in scheduler.timesteps:
            sample = torch.cat([latents] * 2)
            pred = animator.denoise(sample, t, torch.cat([embeds] * 2), torch.cat([features] * 2),
                                    torch.tensor([True, False]))
            pred = pred[:1] + guidance * (pred[1:] - pred[:1])
            latents = scheduler.step(pred, t, latents).prev_sample
    return latents


def test_window_path_equals_single_pass_when_the_window_covers_the_video(video_pipe):
    reference, poses = sample_inputs()
    out = video_pipe(reference, poses, num_inference_steps=3, guidance_scale=2.5, seed=3, context_frames=24,
                     output_type="latent").frames
    expected = plain_loop(video_pipe, reference, poses, steps=3, guidance=2.5, seed=3)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_seed_makes_results_exactly_reproducible(video_pipe):
    reference, poses = sample_inputs()
    kwargs = dict(num_inference_steps=2, context_frames=4, context_overlap=2)
    first = video_pipe(reference, poses, seed=7, **kwargs).frames
    again = video_pipe(reference, poses, seed=7, **kwargs).frames
    other = video_pipe(reference, poses, seed=8, **kwargs).frames
    assert first.shape == (FRAMES, SIZE, SIZE, 3) and first.dtype == np.uint8
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


@pytest.mark.parametrize("steps,context", [(2, 24), (3, 4)])
def test_reference_net_runs_once_per_video(video_pipe, steps, context):
    calls = []
    hook = video_pipe.reference_unet.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        reference, poses = sample_inputs()
        video_pipe(reference, poses, num_inference_steps=steps, context_frames=context, context_overlap=1, seed=0,
                   output_type="latent")
        windows = video_pipe.timings["windows"]
        assert len(calls) == 1
        calls.clear()  # the counter does see every call: the benchmark's naive mode runs it per step and window
        video_pipe(reference, poses, num_inference_steps=steps, context_frames=context, context_overlap=1, seed=0,
                   output_type="latent", recompute_reference_every_step=True)
        assert len(calls) == steps * windows
    finally:
        hook.remove()
    assert (context == 4) == (windows > 1)


@pytest.mark.parametrize("pose_scale", [None, 2.0])
def test_batched_guidance_equals_sequential_rows(video_pipe, pose_scale):
    """All guidance rows in one UNet batch give what separate, one-row calls give."""
    pipe, animator = video_pipe, video_pipe.animator
    reference, poses = sample_inputs(frames=4)
    ref_latents, embeds = pipe.encode_reference_image(reference, SIZE, SIZE)
    pose = torch.from_numpy(poses).permute(0, 3, 1, 2).float() / 255.0
    features = animator.encode_pose(pose)
    latents = torch.randn(1, 4, 4, SIZE // 8, SIZE // 8, generator=torch.Generator().manual_seed(0))
    rows = guidance_rows(3.0, pose_scale)
    from marionet.inference.pipeline import Conditioning

    cond = Conditioning(embeds, features, rows, 3.0, pose_scale)
    with torch.no_grad():
        pipe._encode_reference(ref_latents, embeds, len(rows))
        batched = pipe.predict_window(latents, 500, cond, [0, 1, 2, 3])
        sequential = []
        for dropped, use_pose in rows:
            animator.encode_reference(ref_latents, embeds)  # a one-row bank
            sequential.append(animator.denoise(latents, 500, embeds, features if use_pose else None,
                                               torch.tensor([dropped])))
    expected = combine_guidance(torch.cat(sequential), rows, 3.0, pose_scale)
    torch.testing.assert_close(batched, expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(sequential[0], sequential[-1], atol=1e-3)  # the rows really differ


def test_guidance_one_or_zero_runs_a_single_row():
    assert guidance_rows(1.0, None) == ((False, True),)
    assert guidance_rows(0.0, None) == ((True, True),)  # the reference-dropped path alone
    assert len(guidance_rows(3.5, None)) == 2 and len(guidance_rows(3.5, 1.5)) == 3


def test_image_model_shares_initial_noise_and_renders_frames(image_pipe):
    noise = image_pipe.prepare_latents(4, SIZE, SIZE, torch.Generator().manual_seed(0))
    assert torch.equal(noise[:, :, 0], noise[:, :, 3])
    reference, poses = sample_inputs(frames=3)
    frames = image_pipe(reference, poses, num_inference_steps=2, seed=0, context_frames=2).frames
    assert frames.shape == (3, SIZE, SIZE, 3)
    assert not np.array_equal(frames[0], frames[2])  # the poses differ, so the frames do


def test_reroll_changes_only_the_masked_noise_and_mostly_the_masked_output(image_pipe):
    reference, poses = sample_inputs(frames=1)
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[:, SIZE // 2:] = 255  # re-roll the right half
    base_noise = image_pipe.prepare_latents(1, SIZE, SIZE, torch.Generator().manual_seed(0))
    new_noise = image_pipe.prepare_latents(1, SIZE, SIZE, torch.Generator().manual_seed(0), mask, reroll_seed=9)
    half = SIZE // 16
    assert torch.equal(new_noise[..., :half], base_noise[..., :half])
    assert not torch.allclose(new_noise[..., half:], base_noise[..., half:])

    kwargs = dict(num_inference_steps=3, output_type="latent")
    before = image_pipe(reference, poses, seed=0, **kwargs).frames
    rerolled = image_pipe(reference, poses, seed=0, reroll_mask=mask, reroll_seed=9, **kwargs).frames
    reseeded = image_pipe(reference, poses, seed=9, **kwargs).frames  # what a whole new seed changes

    def change(latents, decoded: bool):
        a, b = (image_pipe.decode_latents(x) for x in (latents, before)) if decoded else (latents, before)
        diff = (a - b).abs()
        middle = diff.shape[-1] // 2
        return float(diff[..., :middle].mean()), float(diff[..., middle:].mean())

    (out_latent, in_latent), (out_full, in_full) = change(rerolled, False), change(reseeded, False)
    assert in_latent > 0.8 * in_full  # the masked half is regenerated as much as by a new seed
    assert out_latent < 0.35 * out_full, (out_latent, out_full)  # the rest mostly stays
    # Decoded, the tiny random VAE's global mid-block attention spreads any change, so the margin is smaller.
    (out_pixels, _), (out_pixels_full, _) = change(rerolled, True), change(reseeded, True)
    assert out_pixels < 0.6 * out_pixels_full, (out_pixels, out_pixels_full)


def test_reroll_mask_needs_a_seed_and_a_fitting_shape(image_pipe):
    with pytest.raises(ValueError, match="reroll_seed"):
        image_pipe.prepare_latents(1, SIZE, SIZE, torch.Generator(), np.ones((SIZE, SIZE)))
    with pytest.raises(ValueError, match="reroll_mask"):
        image_pipe.prepare_latents(2, SIZE, SIZE, torch.Generator(), np.ones((3, SIZE, SIZE)), reroll_seed=1)


def test_save_and_load_round_trip(video_pipe, tmp_path):
    video_pipe.save_pretrained(tmp_path / "model")
    loaded = PoseToVideoPipeline.from_pretrained(tmp_path / "model")
    loaded.set_progress_bar_config(disable=True)
    assert loaded.is_video_model
    reference, poses = sample_inputs(frames=3)
    kwargs = dict(num_inference_steps=2, seed=1, output_type="latent")
    torch.testing.assert_close(loaded(reference, poses, **kwargs).frames, video_pipe(reference, poses, **kwargs).frames)


def test_render_video_returns_uint8_frames(image_pipe):
    from marionet.inference.pipeline import render_video

    reference, poses = sample_inputs(frames=2)
    frames = render_video(image_pipe, reference, list(poses), num_inference_steps=1, guidance_scale=1.0, seed=0)
    assert frames.shape == (2, SIZE, SIZE, 3) and frames.dtype == np.uint8


def test_vae_decodes_in_chunks_with_the_same_result(image_pipe):
    latents = torch.randn(1, 4, 5, SIZE // 8, SIZE // 8, generator=torch.Generator().manual_seed(0))
    sizes = []
    hook = image_pipe.vae.decoder.register_forward_pre_hook(lambda module, args: sizes.append(args[0].shape[0]))
    try:
        with torch.no_grad():
            chunked = image_pipe.decode_latents(latents, chunk_size=2)
            whole = image_pipe.decode_latents(latents, chunk_size=8)
    finally:
        hook.remove()
    assert sizes == [2, 2, 1, 5]
    torch.testing.assert_close(chunked, whole, rtol=1e-4, atol=1e-5)


def test_registered_components_are_the_weights_that_run(video_pipe):
    """save_pretrained writes the registered 2-D UNet and adapter: they must share the motion UNet's tensors."""
    running = dict(video_pipe.animator.denoising_unet.named_parameters())
    saved = {**dict(video_pipe.denoising_unet.named_parameters()), **dict(video_pipe.motion_adapter.named_parameters())}
    assert set(saved) == set(running)
    assert all(saved[name] is running[name] for name in saved)


@pytest.mark.parametrize("rho", [0.0, 0.75, 1.0])
def test_video_noise_follows_the_trained_frame_correlation(video_pipe, rho):
    video_pipe.register_to_config(frame_noise_correlation=rho)
    try:
        noise = torch.cat([video_pipe.prepare_latents(8, SIZE, SIZE, torch.Generator().manual_seed(s))
                           for s in range(24)])  # (24, 4, 8, h, w)
    finally:
        video_pipe.register_to_config(frame_noise_correlation=0.0)
    a, b = noise[:, :, 0].flatten(), noise[:, :, 5].flatten()
    correlation = torch.corrcoef(torch.stack([a, b]))[0, 1].item()
    assert abs(correlation - rho) < 0.05, correlation
    assert abs(noise.std().item() - 1.0) < 0.05  # still unit variance per element


def test_frame_noise_correlation_is_saved_with_the_model_and_read_back(tmp_path):
    import json

    from diffusers import UNet2DConditionModel

    from marionet.inference.pipeline import PoseToVideoPipeline
    from marionet.models import Animator, build_tiny_components, export_model_folder

    parts = build_tiny_components(seed=0, with_motion=True)
    unet = parts.pop("unet")
    reference = UNet2DConditionModel.from_config(unet.config)
    animator = Animator(reference, unet, parts.pop("pose_guider"), parts.pop("motion_adapter"))
    export_model_folder(tmp_path / "m", animator, frame_noise_correlation=0.6, **parts)
    assert json.loads((tmp_path / "m" / "model_index.json").read_text())["frame_noise_correlation"] == 0.6
    assert PoseToVideoPipeline.from_pretrained(tmp_path / "m").config.frame_noise_correlation == 0.6


def test_reference_is_centre_cropped_to_the_output_aspect_not_squashed():
    from marionet.inference.io import fit_reference

    image = np.zeros((40, 80, 3), np.uint8)  # landscape: left quarter red, right quarter blue, centre green
    image[:, :20] = (255, 0, 0)
    image[:, 20:60] = (0, 255, 0)
    image[:, 60:] = (0, 0, 255)
    square = fit_reference(image, 32, 32)
    assert square.shape == (32, 32, 3)
    assert square[:, :, 1].min() > 200 and square[:, :, 0].max() < 60  # only the green centre survives
    assert fit_reference(image, 80, 40) is image


def test_a_scheduler_without_eta_samples_too(image_pipe):
    from diffusers import EulerDiscreteScheduler

    reference, poses = sample_inputs(frames=2)
    original = image_pipe.scheduler
    image_pipe.scheduler = EulerDiscreteScheduler.from_config(original.config)
    try:
        frames = image_pipe(reference, poses, num_inference_steps=2, seed=0).frames
    finally:
        image_pipe.scheduler = original
    assert frames.shape == (2, SIZE, SIZE, 3)
