"""`marionet animate`: render a reference image performing a pose sequence with a trained model folder."""
from __future__ import annotations

import argparse

from . import speed as speed_settings

DESCRIPTION = """\
Animate the person in --ref with the poses in --pose (a skeleton video, a skeleton image, or a folder of skeleton
images) using a model folder (`marionet tiny-model` writes a random-weight one for smoke tests). Or give a real
--driving video with --extract-pose (DWPose ONNX files via --det/--pose-model) and optionally --align-pose to retarget
its skeleton to the reference's proportions. An image --out (.png/.jpg) renders a single pose.

Costs: guidance runs 2 UNet rows per step (--guidance 1 runs 1); --pose-guidance runs 3 (1.5x the work of plain
guidance). --reroll-mask re-draws the initial noise under a mask from --reroll-seed (same cost as a normal run)."""

DTYPES = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}


def register(subparsers) -> None:
    p = subparsers.add_parser("animate", help="render a reference image driven by a pose sequence",
                              description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="model folder (model_index.json, reference_unet/, ...)")
    p.add_argument("--ref", required=True, help="reference image of the person")
    p.add_argument("--pose", help="pose skeleton video (.mp4), image, or folder of images")
    p.add_argument("--out", required=True, help="output .mp4 (or .gif), or .png/.jpg for a single pose")
    p.add_argument("--driving", help="real driving video to extract poses from (with --extract-pose)")
    p.add_argument("--extract-pose", action="store_true", help="run DWPose on --driving to get the poses")
    p.add_argument("--align-pose", action="store_true",
                   help="retarget the extracted skeleton to the reference's limb lengths and position")
    p.add_argument("--det", help="DWPose detector ONNX (yolox_l.onnx) for --extract-pose")
    p.add_argument("--pose-model", help="DWPose whole-body ONNX (dw-ll_ucoco_384.onnx) for --extract-pose")
    p.add_argument("--width", type=int, help="output width (default: the pose frames'; rounded to a multiple of 8)")
    p.add_argument("--height", type=int, help="output height (default: the pose frames'; multiple of 8)")
    p.add_argument("--guidance", type=float, default=3.5, help="reference guidance scale; 1 disables (default 3.5)")
    p.add_argument("--pose-guidance", type=float, default=None,
                   help="separate pose guidance scale (off by default; costs a third UNet row)")
    p.add_argument("--context", type=int, default=24, help="frames per context window (default 24)")
    p.add_argument("--overlap", type=int, default=4, help="frames shared by neighbouring windows (default 4)")
    p.add_argument("--closed-loop", action="store_true", help="wrap the last window onto the first frames")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--reroll-mask", help="mask image (white = re-roll) whose initial noise is re-drawn")
    p.add_argument("--reroll-seed", type=int, help="seed of the re-drawn noise (with --reroll-mask)")
    p.add_argument("--decode-chunk", type=int, default=8, help="frames per VAE decode call (default 8)")
    p.add_argument("--low-memory", action="store_true",
                   help="model CPU offload (on CUDA), guidance rows one UNet call at a time and 2 frames per VAE "
                        "call: the same video in ~5 GiB at 24 frames 768x512 (see README, What fits where)")
    p.add_argument("--fps", type=float, help="output fps (default: the pose/driving video's, else 25)")
    p.add_argument("--device", choices=["cuda", "cpu"], help="default: cuda when available")
    p.add_argument("--dtype", choices=sorted(DTYPES), help="default: fp16 on cuda, fp32 on cpu")
    p.add_argument("--side-by-side", action="store_true", help="also write OUT_side_by_side (reference|pose|result)")
    p.add_argument("--gif", action="store_true", help="also write OUT.gif")
    p.add_argument("--lossless", action="store_true",
                   help="lossless H.264 (several times larger; the frames bit for bit, e.g. to compare runs)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    speed_settings.add_arguments(p, default_steps=25)
    p.set_defaults(func=run_animate)


def _check_arguments(args, UserError) -> None:
    if args.extract_pose and not args.driving:
        raise UserError("--extract-pose needs --driving VIDEO")
    if args.driving and not args.extract_pose:
        raise UserError("--driving is only used with --extract-pose (or pass a skeleton video with --pose)")
    if args.align_pose and not args.extract_pose:
        raise UserError("--align-pose needs --extract-pose (it aligns the keypoints DWPose extracts)")
    if bool(args.pose) == bool(args.extract_pose):
        raise UserError("give either --pose SKELETON or --driving VIDEO --extract-pose")
    if args.reroll_mask and args.reroll_seed is None:
        raise UserError("--reroll-mask needs --reroll-seed")
    for name in ("context", "decode_chunk"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1")
    if not 0 <= args.overlap < args.context:
        raise UserError(f"--overlap must be in [0, --context), got {args.overlap}")


def run_animate(args) -> int:
    import resource
    import time
    from pathlib import Path

    from ..atomic import OutputWriteError
    from ..errors import UserError

    _check_arguments(args, UserError)
    try:
        speed = speed_settings.from_arguments(args)
    except ValueError as error:
        raise UserError(str(error)) from None
    out = Path(args.out)
    from .io import IMAGE_EXTENSIONS

    image_out = out.suffix.lower() in IMAGE_EXTENSIONS and out.suffix.lower() != ".gif"
    if not image_out and out.suffix.lower() not in (".mp4", ".gif"):
        raise UserError(f"--out {out}: use .mp4, .gif, or .png/.jpg for one frame")
    targets = [out] + ([out.with_suffix(".gif")] if args.gif else [])
    if args.side_by_side:
        targets.append(out.with_name(out.stem + "_side_by_side" + (".png" if image_out else ".mp4")))
    existing = [str(p) for p in targets if p.exists()]
    if existing and not args.overwrite:
        raise UserError(f"{', '.join(existing)} already exist(s) (use --overwrite to replace)")

    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda requested but no CUDA device is available (use --device cpu)")
    dtype_name = args.dtype or ("fp16" if device == "cuda" else "fp32")
    dtype = getattr(torch, DTYPES[dtype_name])

    from .io import as_rgb_array, round_size, side_by_side, write_outputs

    reference = read_reference(args.ref)
    if args.extract_pose:
        poses, fps = _extract_poses(args, reference, UserError)
    else:
        poses, fps = read_poses(args.pose)
    fps = args.fps or fps or 25.0
    if image_out and len(poses) != 1:
        raise UserError(f"--out {out} is an image but the pose sequence has {len(poses)} frames (use .mp4)")

    width, height, changed = round_size(args.width or poses.shape[2], args.height or poses.shape[1])
    if changed:
        print(f"note: size rounded down to {width}x{height} (multiples of 8)")

    from ..models.loading import MissingWeightsError
    from .pipeline import PoseToVideoPipeline
    from .sampling import to_uint8

    try:
        pipe = PoseToVideoPipeline.from_pretrained(args.model, torch_dtype=dtype)
    except MissingWeightsError as error:
        raise UserError(str(error)) from None
    try:
        speed_settings.apply(pipe, speed)
    except ValueError as error:  # e.g. more step-cache skips than this UNet has
        raise UserError(str(error)) from None
    if args.low_memory and device == "cuda":
        pipe.enable_model_cpu_offload()
    else:
        pipe.to(device)
    reroll_mask = None
    if args.reroll_mask:
        try:
            reroll_mask = as_rgb_array(args.reroll_mask)[..., 0]
        except (FileNotFoundError, ValueError) as error:
            raise UserError(f"--reroll-mask: {error}") from None

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    try:
        frames = pipe(reference, poses, height=height, width=width, num_inference_steps=speed.steps,
                      guidance_scale=args.guidance, pose_guidance_scale=args.pose_guidance,
                      context_frames=args.context, context_overlap=args.overlap, closed_loop=args.closed_loop,
                      decode_chunk_size=2 if args.low_memory else args.decode_chunk,
                      batch_guidance_rows=not args.low_memory, generator=torch.Generator().manual_seed(args.seed),
                      reroll_mask=reroll_mask, reroll_seed=args.reroll_seed).frames
        frames = to_uint8(frames[0])
    except ValueError as error:  # bad mask shape, sizes the model cannot take, ...
        raise UserError(str(error)) from None
    seconds = time.perf_counter() - start

    comparison = side_by_side(reference, poses, frames) if args.side_by_side else None
    try:
        written = write_outputs(out, frames, fps, overwrite=args.overwrite, gif=args.gif, comparison=comparison,
                                lossless=args.lossless)
    except (FileExistsError, ValueError, OutputWriteError) as error:
        raise UserError(str(error)) from None
    if device == "cuda":
        peak = f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB GPU (allocated)"
    else:
        peak = f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB RAM (process peak RSS)"
    for path in written:
        print(f"wrote {path}")
    print(f"{len(frames)} frames at {width}x{height}, {speed.steps} steps ({speed.describe()}): {seconds:.1f} s "
          f"({seconds / len(frames):.2f} s/frame), peak memory {peak}")
    return 0


def read_reference(path):
    """The reference image as uint8 (H, W, 3), or a UserError naming it (the CLI's and the app's message)."""
    from ..errors import UserError
    from .io import as_rgb_array

    try:
        return as_rgb_array(path)
    except (FileNotFoundError, ValueError) as error:
        raise UserError(f"--ref: {error}") from None


def read_poses(path):
    """The pose sequence -> (uint8 (F, H, W, 3), fps or None), or a UserError naming the file."""
    from ..errors import UserError
    from .io import load_pose_frames

    try:
        return load_pose_frames(path)
    except (FileNotFoundError, ValueError) as error:
        raise UserError(f"--pose: {error}") from None


def _extract_poses(args, reference, UserError):
    """DWPose on every driving frame (and on the reference for --align-pose) -> drawn skeletons, fps."""
    import numpy as np
    from tqdm import tqdm

    from ..data.skeleton import draw_pose
    from ..data.video import read_video, video_info

    try:
        _, fps, width, height = video_info(args.driving)
        driving = read_video(args.driving)
    except (FileNotFoundError, ValueError) as error:
        raise UserError(f"--driving: {error}") from None
    try:
        from ..data.dwpose import create_estimator

        estimator = create_estimator("dwpose", det=args.det, pose=args.pose_model)
    except (FileNotFoundError, ImportError) as error:
        raise UserError(str(error).replace("--pose PATH", "--pose-model PATH")) from None
    records = [_record(estimator(frame)) for frame in tqdm(driving, desc="extracting poses", unit="frame")]
    if not args.align_pose:
        return np.stack([draw_pose(r["body"], width, height, hands=r["hands"], face=r["face"]) for r in records]), fps

    from ..data.align import align_keypoints

    ref_height, ref_width = reference.shape[:2]
    aligned = align_keypoints(
        {"width": ref_width, "height": ref_height, "fps": fps, "frames": [_record(estimator(reference))]},
        {"width": width, "height": height, "fps": fps, "frames": records})
    poses = [draw_pose(f["body"], ref_width, ref_height, hands=f["hands"], face=f["face"])
             for f in aligned["frames"]]
    return np.stack(poses), fps


def _record(result) -> dict:
    return {"body": result.body, "hands": result.hands, "face": result.face}
