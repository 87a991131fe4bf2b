"""`marionet zero-shot`: the training-free baseline (cross-image attention) on stock weights or a trained backbone."""
from __future__ import annotations

from pathlib import Path

from . import speed as speed_settings

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}
VIDEO_OUT_SUFFIXES = {".mp4", ".gif"}


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "zero-shot", help="training-free pose transfer (ControlNet + IP-Adapter + cross-image attention)",
        description="Render the person in --ref in the pose(s) of --pose without training: each step the source "
                    "image is noised and passed through the UNet, and the generated image's self-attention reads "
                    "the source's keys/values. Stock backbone: --base SD15_DIR --controlnet CN_DIR "
                    "[--ip-adapter FILE [--image-encoder DIR]]. Trained backbone: --model TRAINED_DIR (denoising "
                    "UNet + Pose Guider with the reference dropped).")
    backbone = p.add_argument_group("backbone (either --model, or --base and --controlnet)")
    backbone.add_argument("--model", help="trained model folder (marionet export layout)")
    backbone.add_argument("--base", help="SD1.5 diffusers folder (unet/ vae/ scheduler/ [text_encoder/ tokenizer/])")
    backbone.add_argument("--controlnet", help="ControlNet (openpose) diffusers folder")
    backbone.add_argument("--ip-adapter",
                          help="IP-Adapter weights file (.bin or .safetensors), e.g. ip-adapter_sd15.bin")
    backbone.add_argument("--image-encoder", help="CLIP image encoder folder for the IP-Adapter "
                                                  "(default: BASE/image_encoder)")
    p.add_argument("--ref", required=True, help="source image of the person")
    p.add_argument("--pose", required=True, help="target pose skeleton: an image (.png ...) or a video (.mp4 ...)")
    p.add_argument("--source-pose", help="the --ref image's own skeleton (an image): conditions the source pass "
                                         "on it (default: the source pass runs without a pose)")
    p.add_argument("--out", required=True, help="output .png (one pose) or .mp4 / .gif")
    method = p.add_argument_group("method")
    method.add_argument("--source-noise", default="previous-target",
                        choices=("random", "previous-target", "previous-source"),
                        help="noise added to the source latent each step: fresh Gaussian, the generated image's "
                             "previous noise prediction, or the source pass's own previous prediction "
                             "(default: %(default)s)")
    method.add_argument("--temperature", type=float, default=1.3,
                        help="swapped attention logits are divided by this: >1 flattens, <1 sharpens, 1 = plain "
                             "(default: the study's %(default)s)")
    method.add_argument("--swap-layers", default="all",
                        help="all | encoder | mid | decoder, '+'-joined, optionally ':' latent-resolution "
                             "divisors, e.g. decoder:1,2 (default: %(default)s)")
    method.add_argument("--swap-steps", default="0:1",
                        help="START:END fractions of the steps that swap, e.g. 0:0.6 (default: %(default)s)")
    method.add_argument("--no-swap", action="store_true", help="turn cross-image attention off (plain ControlNet)")
    method.add_argument("--guidance", type=float, default=1.0,
                        help="classifier-free guidance scale; 1.0 = off (default: %(default)s)")
    method.add_argument("--controlnet-scale", type=float, default=1.0, help="ControlNet conditioning scale")
    method.add_argument("--ip-adapter-scale", type=float, default=1.0, help="IP-Adapter scale")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--frames", type=int, default=None, help="use at most this many pose frames")
    p.add_argument("--context", type=int, default=24,
                   help="frames per window (video backbone) or per UNet batch (image backbone) (default 24)")
    p.add_argument("--overlap", type=int, default=4, help="frames shared by neighbouring windows (default 4)")
    p.add_argument("--fps", type=float, default=None, help="output fps (default: the pose video's, else 8)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    speed_settings.add_arguments(p, default_steps=25)
    p.set_defaults(func=run_zero_shot)


def _read_poses(path: Path, max_frames):
    """uint8 (F, H, W, 3) skeletons and the video's fps (None for an image)."""
    from ..data.video import load_image_rgb, read_video, video_info

    if path.suffix.lower() in IMAGE_SUFFIXES:
        return load_image_rgb(path)[None], None
    count, fps, _, _ = video_info(path)
    count = min(count, max_frames) if max_frames else count
    return read_video(path, indices=range(count)), fps


def _check_args(args):
    from ..errors import UserError

    if args.model and (args.base or args.controlnet or args.ip_adapter or args.image_encoder):
        raise UserError("--model (trained backbone) cannot be combined with --base/--controlnet/--ip-adapter")
    if not args.model and not (args.base and args.controlnet):
        raise UserError("give --model TRAINED_DIR, or --base SD15_DIR and --controlnet CN_DIR")
    if args.image_encoder and not args.ip_adapter:
        raise UserError("--image-encoder is only used with --ip-adapter")
    if args.context < 1 or (args.frames is not None and args.frames < 1):
        raise UserError("--frames and --context must be at least 1")
    if not 0 <= args.overlap < args.context:
        raise UserError(f"--overlap must be in [0, --context), got {args.overlap}")
    out = Path(args.out)
    if out.suffix.lower() not in IMAGE_SUFFIXES | VIDEO_OUT_SUFFIXES:
        raise UserError(f"{out}: output must end in .png/.jpg (one pose) or .mp4/.gif")
    if out.exists() and not args.overwrite:
        raise UserError(f"{out} already exists (use --overwrite to replace it)")
    for name in ("ref", "pose", "source_pose"):
        value = getattr(args, name)
        if value is not None and not Path(value).is_file():
            raise UserError(f"--{name.replace('_', '-')}: file not found: {value}")
    if args.source_pose and Path(args.source_pose).suffix.lower() not in IMAGE_SUFFIXES:
        raise UserError(f"--source-pose: {args.source_pose} is not an image (.png, .jpg, ...)")
    return out


def _write(out: Path, frames, fps, overwrite: bool) -> None:
    from ..atomic import atomic_path
    from ..data.video import write_gif, write_video
    from PIL import Image

    suffix = out.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        with atomic_path(out, overwrite) as temp:
            Image.fromarray(frames[0]).save(temp)
    elif suffix == ".gif":
        write_gif(out, frames, fps, overwrite=overwrite)
    else:
        write_video(out, frames, fps, overwrite=overwrite)


def run_zero_shot(args) -> int:
    import time

    from ..errors import UserError

    out = _check_args(args)
    try:
        speed = speed_settings.from_arguments(args)
    except ValueError as error:
        raise UserError(str(error)) from None
    import torch

    from ..data.video import load_image_rgb
    from .io import round_size
    from .sampling import to_uint8
    from .zero_shot import ZeroShotOptions, ZeroShotPoseTransferPipeline, parse_swap_steps
    from ..models.loading import MissingWeightsError

    try:
        options = ZeroShotOptions(swap=not args.no_swap, source_noise=args.source_noise,
                                  temperature=args.temperature, swap_layers=args.swap_layers,
                                  swap_steps=parse_swap_steps(args.swap_steps)).validate()
        reference = load_image_rgb(args.ref)
        source_pose = load_image_rgb(args.source_pose) if args.source_pose else None
        poses, pose_fps = _read_poses(Path(args.pose), args.frames)
    except (ValueError, OSError) as error:
        raise UserError(str(error)) from None
    if len(poses) > 1 and out.suffix.lower() in IMAGE_SUFFIXES:
        raise UserError(f"{args.pose} has {len(poses)} frames: write a .mp4 or .gif, or pass --frames 1")
    width, height, changed = round_size(poses.shape[2], poses.shape[1])  # the size policy `animate` has
    if changed:
        print(f"note: size rounded down to {width}x{height} (multiples of 8)")

    started = time.perf_counter()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float16 if device.startswith("cuda") else None
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # per-file "Loading weights" bars would bury the one that matters
    try:
        if args.model:
            pipe = ZeroShotPoseTransferPipeline.from_model_folder(args.model, torch_dtype=dtype)
        else:
            pipe = ZeroShotPoseTransferPipeline.from_stock(args.base, args.controlnet, args.ip_adapter,
                                                           args.image_encoder, torch_dtype=dtype)
            if args.ip_adapter:
                pipe.set_ip_adapter_scale(args.ip_adapter_scale)
    except (MissingWeightsError, OSError, ValueError) as error:
        raise UserError(str(error).splitlines()[0]) from None
    try:
        speed_settings.apply(pipe, speed)
    except ValueError as error:  # e.g. more step-cache skips than this UNet has
        raise UserError(str(error)) from None
    if device != "cpu":
        pipe.to(device)
    loaded = time.perf_counter()
    try:
        frames = pipe(reference, poses, source_pose=source_pose, height=height, width=width,
                      num_inference_steps=speed.steps,
                      guidance_scale=args.guidance, generator=torch.Generator().manual_seed(args.seed),
                      options=options, controlnet_conditioning_scale=args.controlnet_scale,
                      context_frames=args.context, context_overlap=args.overlap).frames
        frames = to_uint8(frames[0])
    except ValueError as error:
        raise UserError(str(error)) from None
    rendered = time.perf_counter()
    _write(out, frames, args.fps or pose_fps or 8.0, args.overwrite)
    backbone = f"trained backbone {args.model}" if args.model else "SD1.5 + ControlNet" + (
        " + IP-Adapter" if args.ip_adapter else "")
    swap = "off" if args.no_swap else (f"{args.swap_layers} layers, steps {args.swap_steps}, source noise "
                                       f"{args.source_noise}, temperature {args.temperature}, source pose "
                                       f"{'given' if args.source_pose else 'none'}")
    print(f"zero-shot on {backbone}; swap: {swap}; guidance {args.guidance}")
    print(f"load {loaded - started:.1f} s, render {len(frames)} frame(s) x {speed.steps} steps ({speed.describe()}) "
          f"{rendered - loaded:.1f} s on {device}")
    print(f"wrote {out} ({len(frames)} frame(s), {width}x{height})")
    return 0
