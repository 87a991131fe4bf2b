"""Zero-shot baseline: swap attention maths, the loop against stock diffusers, source-noise variants, pass counts,
layer/step selection and the trained-backbone mode — all on tiny components."""
import copy

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import Attention
from PIL import Image

from marionet.inference.zero_shot import (ZeroShotOptions, ZeroShotPoseTransferPipeline, layer_resolution_divisor,
                                 parse_swap_steps, render_zero_shot, select_swap_layers)
from marionet.inference.sampling import PoseVideoPipelineOutput, sampling_scheduler
from marionet.models import ReferenceAttnProcessor, ReferenceState

SIZE = 64  # pixels: 8x8 latents with the tiny 8x VAE


# --------------------------------------------------------------------------------------------------- helpers
def tiny_controlnet(unet):
    from diffusers import ControlNetModel

    torch.manual_seed(1)
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 16, 32, 64))
    with torch.no_grad():  # ControlNet starts with zero convs: give them weights so the pose actually matters
        for name, param in controlnet.named_parameters():
            if param.abs().sum() == 0:
                param.copy_(torch.randn_like(param) * 0.05)
    return controlnet


def dummy_ip_adapter_state_dict(unet, seed=2):
    """A random IP-Adapter state dict in the original file's layout (attn2 layers numbered 1, 3, 5, ...)."""
    from diffusers.models.embeddings import ImageProjection

    cross = unet.config.cross_attention_dim
    torch.manual_seed(seed)
    proj = ImageProjection(cross_attention_dim=cross, image_embed_dim=cross, num_image_text_embeds=4)
    layers, key_id = {}, 1
    for name in unet.attn_processors:
        if name.endswith("attn1.processor") or "motion_modules" in name:
            continue
        attn = unet.get_submodule(name[: -len(".processor")])
        hidden = attn.to_k.weight.shape[0]
        layers[f"{key_id}.to_k_ip.weight"] = torch.randn(hidden, cross) * 0.1
        layers[f"{key_id}.to_v_ip.weight"] = torch.randn(hidden, cross) * 0.1
        key_id += 2
    # the original file names the projection "proj" (diffusers' ImageProjection calls it "image_embeds")
    image_proj = {k.replace("image_embeds.", "proj."): v for k, v in proj.state_dict().items()}
    return {"image_proj": image_proj, "ip_adapter": layers}


def stock_parts(tiny_parts):
    parts = {k: copy.deepcopy(tiny_parts[k]) for k in ("unet", "vae", "image_encoder", "feature_extractor")}
    parts["scheduler"] = copy.deepcopy(tiny_parts["scheduler"])
    parts["controlnet"] = tiny_controlnet(parts["unet"])
    return parts


def zero_shot_pipe(parts, ip_state=None):
    parts = {k: copy.deepcopy(v) for k, v in parts.items()}
    pipe = ZeroShotPoseTransferPipeline(vae=parts["vae"], unet=parts["unet"], scheduler=parts["scheduler"],
                                        controlnet=parts["controlnet"], image_encoder=parts["image_encoder"],
                                        feature_extractor=parts["feature_extractor"])
    if ip_state is not None:
        pipe.load_ip_adapter(ip_state, subfolder="", weight_name="", image_encoder_folder=None)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def images(frames=1, seed=0):
    rng = np.random.default_rng(seed)
    source = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    poses = np.zeros((frames, SIZE, SIZE, 3), np.uint8)
    for f in range(frames):  # a bar that moves: a crude skeleton is enough for the machinery
        poses[f, 8:56, 10 + 8 * f:18 + 8 * f] = (255, 0, 0)
        poses[f, 20:26, 4:60] = (0, 255, 0)
    return source, poses


class PassRecorder:
    """Forward hook on the UNet: records reference-state mode, input sample and output of every call."""

    def __init__(self, pipe):
        self.calls = []
        self.pipe = pipe
        self.handle = pipe.unet.register_forward_hook(self)

    def __call__(self, module, args, output):
        sample = output[0] if isinstance(output, tuple) else output.sample
        self.calls.append((self.pipe.reference_state.mode, args[0].clone(), sample.clone()))


@pytest.fixture(scope="module")
def parts(tiny_parts):
    return stock_parts(tiny_parts)


@pytest.fixture(scope="module")
def ip_state(parts):
    return dummy_ip_adapter_state_dict(parts["unet"])


# --------------------------------------------------------------------------------------------------- attention
def explicit_attention(attn, queries_from, context, logit_scale):
    b, n, _ = queries_from.shape
    h = attn.heads
    q = attn.to_q(queries_from).view(b, n, h, -1).transpose(1, 2)
    k = attn.to_k(context).view(b, context.shape[1], h, -1).transpose(1, 2)
    v = attn.to_v(context).view(b, context.shape[1], h, -1).transpose(1, 2)
    weights = torch.softmax((q @ k.transpose(-1, -2)) * logit_scale, dim=-1)
    return attn.to_out[0]((weights @ v).transpose(1, 2).reshape(b, n, -1))


def make_attention():
    torch.manual_seed(0)
    return Attention(query_dim=32, heads=4, dim_head=8, bias=False).eval()


def test_swap_equals_attention_over_source_tokens_only():
    attn = make_attention()
    target, source = torch.randn(2, 16, 32), torch.randn(2, 24, 32)
    state = ReferenceState(mode="swap", bank={"l": source}, temperature=1.0)
    got = ReferenceAttnProcessor(state, "l")(attn, target)
    assert torch.allclose(got, explicit_attention(attn, target, source, attn.scale), atol=1e-5)
    # and it is not the plain self-attention (or the concatenated read) result
    assert not torch.allclose(got, explicit_attention(attn, target, target, attn.scale), atol=1e-3)
    assert not torch.allclose(got, explicit_attention(attn, target, torch.cat([target, source], 1), attn.scale),
                              atol=1e-3)


@pytest.mark.parametrize("temperature", [0.5, 1.3, 3.0])
def test_temperature_divides_the_logits_of_an_explicit_softmax(temperature):
    attn = make_attention()
    target, source = torch.randn(1, 16, 32), torch.randn(1, 20, 32)
    state = ReferenceState(mode="swap", bank={"l": source}, temperature=temperature)
    got = ReferenceAttnProcessor(state, "l")(attn, target)
    expected = explicit_attention(attn, target, source, attn.scale / temperature)
    assert torch.allclose(got, expected, atol=1e-5)
    assert not torch.allclose(got, explicit_attention(attn, target, source, attn.scale), atol=1e-4)


def test_temperature_above_one_flattens_the_attention():
    attn = make_attention()
    q = attn.to_q(torch.randn(1, 16, 32)).view(1, 16, 4, 8).transpose(1, 2)
    k = attn.to_k(torch.randn(1, 20, 32) * 4).view(1, 20, 4, 8).transpose(1, 2)

    def entropy(temperature):
        p = torch.softmax(q @ k.transpose(-1, -2) * attn.scale / temperature, dim=-1)
        return -(p * p.clamp_min(1e-12).log()).sum(-1).mean()

    assert entropy(1.3) > entropy(1.0) > entropy(1 / 1.3)


# --------------------------------------------------------------------------------------------------- selection
def test_layer_selection_by_part_and_resolution(parts):
    unet = parts["unet"]  # 2 blocks: down_blocks.0 at latent/1, down_blocks.1 and mid at /2; up_blocks.0 /2, .1 /1
    everything = select_swap_layers(unet, "all")
    decoder = select_swap_layers(unet, "decoder")
    assert decoder and decoder < everything and all(n.startswith("up_blocks") for n in decoder)
    full_res = select_swap_layers(unet, "decoder:1")
    assert full_res and all(n.startswith("up_blocks.1.") for n in full_res)
    assert select_swap_layers(unet, "encoder+mid") == everything - decoder
    assert layer_resolution_divisor("mid_block.attentions.0.transformer_blocks.0.attn1.processor", 4) == 8
    assert layer_resolution_divisor("up_blocks.1.attentions.0.transformer_blocks.0.attn1.processor", 4) == 4
    for bad in ("decoders", "decoder:x", "encoder:8", ""):
        with pytest.raises(ValueError):
            select_swap_layers(unet, bad)
    assert parse_swap_steps("0:0.6") == (0.0, 0.6)
    with pytest.raises(ValueError):
        ZeroShotOptions(swap_steps=(0.5, 0.2)).validate()
    with pytest.raises(ValueError):
        ZeroShotOptions(source_noise="gaussian").validate()


# --------------------------------------------------------------------------------------------------- the loop
def test_swap_off_with_guidance_reproduces_stock_controlnet_ip_adapter_pipeline(parts, ip_state):
    from diffusers import StableDiffusionControlNetPipeline
    from PIL import Image

    source, poses = images()
    prompt = torch.randn(1, 7, 32, generator=torch.Generator().manual_seed(5))
    negative = torch.zeros_like(prompt)
    stock_components = {k: copy.deepcopy(v) for k, v in parts.items()}
    stock = StableDiffusionControlNetPipeline(
        vae=stock_components["vae"], text_encoder=None, tokenizer=None, unet=stock_components["unet"],
        controlnet=stock_components["controlnet"], scheduler=stock_components["scheduler"], safety_checker=None,
        feature_extractor=stock_components["feature_extractor"], image_encoder=stock_components["image_encoder"],
        requires_safety_checker=False)
    stock.load_ip_adapter(copy.deepcopy(ip_state), subfolder="", weight_name="", image_encoder_folder=None)
    stock.set_progress_bar_config(disable=True)
    expected = stock(prompt_embeds=prompt, negative_prompt_embeds=negative, image=Image.fromarray(poses[0]),
                     ip_adapter_image=Image.fromarray(source), num_inference_steps=3, guidance_scale=3.0,
                     height=SIZE, width=SIZE, generator=torch.Generator().manual_seed(0),
                     output_type="latent").images

    pipe = zero_shot_pipe(parts, ip_state)
    got = pipe(Image.fromarray(source), poses, num_inference_steps=3, guidance_scale=3.0,
               generator=torch.Generator().manual_seed(0), options=ZeroShotOptions(swap=False),
               prompt_embeds=prompt, negative_prompt_embeds=negative, output_type="latent").frames[:, :, 0]
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()
    # the same call with the swap on gives something else: the comparison can fail
    swapped = pipe(source, poses, num_inference_steps=3, guidance_scale=3.0,
                   generator=torch.Generator().manual_seed(0), prompt_embeds=prompt,
                   negative_prompt_embeds=negative, output_type="latent").frames[:, :, 0]
    assert not torch.allclose(swapped, expected, atol=1e-3)


def test_guidance_one_runs_one_source_and_one_target_pass_per_step(parts, ip_state):
    pipe = zero_shot_pipe(parts, ip_state)
    recorder = PassRecorder(pipe)
    source, poses = images(frames=2)
    out = pipe(source, poses, num_inference_steps=4, generator=torch.Generator().manual_seed(0))
    assert [mode for mode, _, _ in recorder.calls] == ["write", "swap"] * 4
    assert recorder.calls[1][1].shape[0] == 2  # both frames in one target pass
    assert isinstance(out, PoseVideoPipelineOutput) and out.frames.shape == (1, 2, SIZE, SIZE, 3)
    recorder.calls.clear()  # outside the step window: no source pass at all, plain attention
    pipe(source, poses[:1], num_inference_steps=4, generator=torch.Generator().manual_seed(0),
         options=ZeroShotOptions(swap_steps=(0.0, 0.5)))
    assert [mode for mode, _, _ in recorder.calls] == ["write", "swap", "write", "swap", "off", "off"]
    recorder.calls.clear()  # guidance on: still one source pass, the target pass carries both halves
    pipe(source, poses, num_inference_steps=2, guidance_scale=2.0, generator=torch.Generator().manual_seed(0))
    assert [mode for mode, _, _ in recorder.calls] == ["write", "swap"] * 2
    assert recorder.calls[1][1].shape[0] == 4


@pytest.mark.parametrize("variant", ["previous-target", "previous-source", "random"])
def test_source_noise_variants_feed_the_previous_prediction(parts, variant):
    pipe = zero_shot_pipe(parts)
    recorder = PassRecorder(pipe)
    scheduler = sampling_scheduler(pipe.scheduler)  # the schedule the call samples with
    scheduler.set_timesteps(3)
    source, poses = images()
    pipe(source, poses, num_inference_steps=3, generator=torch.Generator().manual_seed(0),
         options=ZeroShotOptions(source_noise=variant))
    clean = pipe.encode_source(source, SIZE, SIZE)
    sources = [c for c in recorder.calls if c[0] == "write"]
    targets = [c for c in recorder.calls if c[0] == "swap"]
    timesteps = scheduler.timesteps
    assert len(sources) == len(targets) == 3
    for step in range(1, 3):
        alpha = scheduler.alphas_cumprod[timesteps[step]]
        fed_noise = (sources[step][1] - alpha.sqrt() * clean) / (1 - alpha).sqrt()  # the noise the source got
        previous = {"previous-target": targets[step - 1][2], "previous-source": sources[step - 1][2]}
        for name, prediction in previous.items():
            same = torch.allclose(fed_noise, prediction, atol=1e-4)
            assert same == (name == variant), (variant, name, step)
        if variant == "random":
            assert abs(fed_noise.std().item() - 1.0) < 0.5  # fresh Gaussian noise


def test_source_pose_conditions_the_source_pass_through_the_controlnet(parts):
    pipe = zero_shot_pipe(parts)
    seen = []  # (reference-state mode, ControlNet pose pixels) of every ControlNet call
    pipe.controlnet.register_forward_pre_hook(
        lambda m, a, kw: seen.append((pipe.reference_state.mode, kw["controlnet_cond"].clone())), with_kwargs=True)
    source, poses = images(frames=2)
    source_pose = np.ascontiguousarray(poses[1][:, ::-1])  # a skeleton none of the targets has
    run = lambda **kw: pipe(source, poses, num_inference_steps=2, generator=torch.Generator().manual_seed(0),  # noqa
                            **kw).frames
    plain = run()
    assert [mode for mode, _ in seen] == ["swap", "swap"]  # without it the source pass has no pose at all
    seen.clear()
    posed = run(source_pose=source_pose)
    assert [mode for mode, _ in seen] == ["write", "swap"] * 2
    expected = torch.from_numpy(source_pose).permute(2, 0, 1)[None].float() / 255.0
    for mode, pixels in seen[::2]:  # one row per source row: 1 at the first step, 2 ("previous-target") after
        assert torch.allclose(pixels, expected.expand(len(pixels), -1, -1, -1))
    assert [len(pixels) for _, pixels in seen[::2]] == [1, 2]
    assert not np.array_equal(plain, posed)
    seen.clear()  # the same skeleton at twice the size is brought to the source's framing
    bigger = np.asarray(Image.fromarray(source_pose).resize((2 * SIZE, 2 * SIZE), Image.NEAREST))
    run(source_pose=bigger)
    assert seen[0][1].shape == expected.shape and (seen[0][1] - expected).abs().mean() < 0.05


def test_source_pose_gives_the_pose_guider_backbone_its_features(tmp_path):
    from marionet.models import write_tiny_model

    pipe = ZeroShotPoseTransferPipeline.from_model_folder(write_tiny_model(tmp_path / "model"))
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():  # the Pose Guider ends in a zero conv: give it weights so the features are not all zero
        torch.manual_seed(3)
        for param in pipe.pose_guider.parameters():
            if param.abs().sum() == 0:
                param.copy_(torch.randn_like(param) * 0.05)
    seen = []  # (mode, residual added after conv_in) of every UNet call
    pipe.unet.register_forward_pre_hook(lambda m, a: seen.append(
        (pipe.reference_state.mode, None if pipe._pose_adder.residual is None else pipe._pose_adder.residual.clone())))
    source, poses = images(frames=2)
    pipe(source, poses, num_inference_steps=1, generator=torch.Generator().manual_seed(0))
    assert seen[0][0] == "write" and seen[0][1] is None
    seen.clear()
    pipe(source, poses, source_pose=poses[1], num_inference_steps=1, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = pipe.pose_guider(torch.from_numpy(poses[1]).permute(2, 0, 1)[None].float() / 255.0)
    assert seen[0][0] == "write" and expected.abs().sum() > 0 and torch.allclose(seen[0][1], expected)


def test_cli_options_reach_the_processors(parts):
    pipe = zero_shot_pipe(parts)
    seen = []
    pipe.unet.register_forward_pre_hook(lambda m, a: seen.append((pipe.reference_state.mode,
                                                                  pipe.reference_state.temperature,
                                                                  frozenset(pipe.reference_state.active_layers))))
    source, poses = images()
    pipe(source, poses, num_inference_steps=1, generator=torch.Generator().manual_seed(0),
         options=ZeroShotOptions(temperature=2.0, swap_layers="decoder:1"))
    assert seen[-1] == ("swap", 2.0, frozenset(select_swap_layers(pipe.unet, "decoder:1")))


# --------------------------------------------------------------------------------------------------- trained backbone
@pytest.mark.parametrize("with_motion", [False, True])
def test_trained_backbone_mode_runs_on_a_tiny_model_folder(tmp_path, with_motion):
    from marionet.models import write_tiny_model

    model_dir = write_tiny_model(tmp_path / "model", with_motion=with_motion)
    source, poses = images(frames=2)
    out = render_zero_shot(model_dir, source, poses, num_inference_steps=2, seed=0)
    assert out.shape == (2, SIZE, SIZE, 3) and out.dtype == np.uint8
    plain = render_zero_shot(model_dir, source, poses, num_inference_steps=2, seed=0,
                             options=ZeroShotOptions(swap=False))
    assert not np.array_equal(out, plain)  # the swap changes the result on the same weights

    pipe = ZeroShotPoseTransferPipeline.from_model_folder(model_dir)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.is_video_backbone == with_motion and pipe.controlnet is None
    recorder = PassRecorder(pipe)
    pipe(source, poses, num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    assert [c[0] for c in recorder.calls] == ["write", "swap"] * 2
    # the source pass runs with no pose features; the conditioning token is the model's zero CLIP token
    assert pipe.prompt_embeds.abs().sum() == 0


def test_from_stock_uses_the_encoded_empty_prompt_when_the_folder_has_a_text_encoder(tmp_path, tiny_parts):
    import json

    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from marionet.models import save_base_folder

    base = save_base_folder({k: tiny_parts[k] for k in ("unet", "vae", "scheduler")}, tmp_path / "sd15")
    tiny_controlnet(tiny_parts["unet"]).save_pretrained(tmp_path / "controlnet")
    without = ZeroShotPoseTransferPipeline.from_stock(base, tmp_path / "controlnet")
    assert without.prompt_embeds.shape == (1, 77, 32) and without.prompt_embeds.abs().sum() == 0
    assert not without.has_ip_adapter and without.controlnet is not None

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "a</w>": 2, "a": 3}
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    CLIPTokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"),
                  model_max_length=8).save_pretrained(base / "tokenizer")
    torch.manual_seed(0)
    encoder = CLIPTextModel(CLIPTextConfig(vocab_size=4, hidden_size=32, intermediate_size=37, num_attention_heads=4,
                                           num_hidden_layers=2, max_position_embeddings=8, eos_token_id=1,
                                           bos_token_id=0, pad_token_id=1)).eval()
    encoder.save_pretrained(base / "text_encoder")
    with_text = ZeroShotPoseTransferPipeline.from_stock(base, tmp_path / "controlnet")
    expected = encoder(torch.tensor([[0] + [1] * 7]))[0]  # "" = start token, then end/padding tokens
    assert torch.allclose(with_text.prompt_embeds, expected, atol=1e-6)


@pytest.mark.parametrize("with_motion", [False, True])
def test_trained_backbone_with_swap_off_is_the_models_own_unconditional_path(tmp_path, with_motion):
    """Same weights, same pose conditioning: swap off, the loop equals Animator.denoise with the reference dropped."""
    from diffusers import DDIMScheduler
    from diffusers.utils.torch_utils import randn_tensor

    from conftest import randomize_
    from marionet.models import Animator, write_tiny_model

    model_dir = write_tiny_model(tmp_path / "model", with_motion=with_motion)
    animator = Animator.from_pretrained(model_dir)
    randomize_(animator.pose_guider, seed=3)  # a zero conv_out would hide the pose path
    animator.pose_guider.save_pretrained(model_dir / "pose_guider")
    source, poses = images(frames=2)
    frames = len(poses)
    pipe = ZeroShotPoseTransferPipeline.from_model_folder(model_dir)
    pipe.set_progress_bar_config(disable=True)
    got = pipe(source, poses, num_inference_steps=2, generator=torch.Generator().manual_seed(0),
               options=ZeroShotOptions(swap=False), output_type="latent").frames  # (1, 4, F, h, w)
    if not with_motion:
        got = got[0].permute(1, 0, 2, 3)  # frames as independent rows, as the image backbone ran them

    scheduler = DDIMScheduler.from_pretrained(model_dir / "scheduler")
    scheduler.set_timesteps(2)
    pixels = torch.from_numpy(poses).permute(0, 3, 1, 2).float() / 255
    generator = torch.Generator().manual_seed(0)
    if with_motion:
        latents = randn_tensor((1, 4, frames, 8, 8), generator=generator)
        pose_features = animator.encode_pose(pixels.permute(1, 0, 2, 3)[None])
        rows = 1
    else:
        latents = randn_tensor((1, 4, 8, 8), generator=generator).expand(frames, -1, -1, -1)
        pose_features = animator.encode_pose(pixels)
        rows = frames
    latents = latents * scheduler.init_noise_sigma
    assert pose_features.abs().sum() > 0
    with torch.no_grad():
        for t in scheduler.timesteps:
            out = animator.denoise(latents, t, torch.zeros(rows, 1, 32), pose_features,
                                   drop_reference=torch.ones(rows, dtype=torch.bool))
            latents = scheduler.step(out, t, latents).prev_sample
    assert got.shape == latents.shape
    assert torch.allclose(got, latents, atol=1e-5), (got - latents).abs().max()


# --------------------------------------------------------------------------------------------------- shared core
def test_sizes_follow_the_same_policy_as_animate(parts):
    """Sizes that are not multiples of 8 are rounded down (as `animate` does), not rejected."""
    pipe = zero_shot_pipe(parts)
    source, poses = images(frames=2)
    odd = np.ascontiguousarray(np.pad(poses, ((0, 0), (0, 5), (0, 3), (0, 0))))  # 69 x 67
    out = pipe(source, odd, num_inference_steps=1, generator=torch.Generator().manual_seed(0)).frames
    assert out.shape == (1, 2, 64, 64, 3)
    out = pipe(source, poses, height=48, width=40, num_inference_steps=1,
               generator=torch.Generator().manual_seed(0)).frames
    assert out.shape == (1, 2, 48, 40, 3)


def test_long_video_on_a_video_backbone_is_denoised_in_windows(tmp_path):
    """More frames than the motion modules take: context windows (shared core), one callback per step."""
    from marionet.models import write_tiny_model

    pipe = ZeroShotPoseTransferPipeline.from_model_folder(write_tiny_model(tmp_path / "m", with_motion=True))
    pipe.set_progress_bar_config(disable=True)
    source, poses = images(frames=5)
    seen, passes = [], PassRecorder(pipe)
    out = pipe(source, poses, num_inference_steps=2, context_frames=3, context_overlap=1,
               generator=torch.Generator().manual_seed(0),
               callback_on_step_end=lambda p, i, t, kw: seen.append(i) or {}).frames
    assert out.shape == (1, 5, SIZE, SIZE, 3) and seen == [0, 1]
    targets = [c for c in passes.calls if c[0] == "swap"]
    assert len(targets) == 2 * 2 and all(c[1].shape[2] == 3 for c in targets)  # 2 windows of 3 frames per step
    two = pipe(source, poses[:2], num_videos_per_prompt=2, num_inference_steps=1, output_type="pt",
               generator=[torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)]).frames
    assert two.shape == (2, 2, 3, SIZE, SIZE) and not torch.allclose(two[0], two[1])
