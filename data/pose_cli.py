"""`marionet pose extract` and `marionet pose align`. Registration is cheap: handlers import what they need."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXTRACT_HELP = """\
Extract DWPose skeletons from every video under --videos (recursive) into
  OUT/poses/<name>.mp4       skeleton video (same size, fps and frame count as the source)
  OUT/keypoints/<name>.json  keypoints (OpenPose-18 body, hands; face only with --face)
Still images (png, jpg, webp, bmp) get OUT/poses/<name>.png and a one-frame keypoints JSON (e.g. the reference
image for `marionet pose align --ref-pose`).
Needs onnxruntime (pip install marionet[pose]) and the two DWPose ONNX files from the Hugging Face repository
yzd-v/DWPose: yolox_l.onnx (--det) and dw-ll_ucoco_384.onnx (--pose), or both in --models-dir.
Resumable: videos whose two outputs exist are skipped; files are written atomically. Failures are listed at the end
(exit status 1) without stopping the batch."""

ALIGN_HELP = """\
Retarget a driving pose sequence to a reference pose: each driving limb is rescaled to the reference's limb length
and the skeleton is moved to the reference's neck and scale; the transform is measured on the first driving frame and
applied to all frames, so the motion is kept. Writes OUT/keypoints/<name>.json and (unless --no-render)
OUT/poses/<name>.mp4 drawn at the reference's size."""


def register(subparsers) -> None:
    pose = subparsers.add_parser("pose", help="pose extraction (DWPose) and pose alignment",
                                 description="Pose extraction (DWPose on onnxruntime) and pose alignment.")
    pose_sub = pose.add_subparsers(dest="pose_command", metavar="SUBCOMMAND")
    pose.set_defaults(func=lambda args: (pose.print_help(), 2)[1])

    extract = pose_sub.add_parser("extract", help="skeleton videos + keypoints JSON for a folder of videos",
                                  description=EXTRACT_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    extract.add_argument("--videos", required=True, help="folder of source videos (searched recursively)")
    extract.add_argument("--out", required=True, help="output folder (gets poses/ and keypoints/)")
    extract.add_argument("--backend", default="dwpose", choices=["dwpose"], help="pose estimator (default dwpose)")
    extract.add_argument("--det", help="YOLOX detector ONNX (yolox_l.onnx)")
    extract.add_argument("--pose", help="DWPose whole-body ONNX (dw-ll_ucoco_384.onnx)")
    extract.add_argument("--models-dir", help="folder holding both ONNX files (default $MARIONET_DWPOSE_DIR or "
                                              "./pretrained_weights/DWPose)")
    extract.add_argument("--workers", type=int, default=1, help="parallel processes, one onnxruntime session each")
    extract.add_argument("--hands", action=argparse.BooleanOptionalAction, default=True,
                         help="extract and draw hands (default on)")
    extract.add_argument("--face", action=argparse.BooleanOptionalAction, default=False,
                         help="extract and draw face landmarks (default off: they were reported to distort faces)")
    extract.add_argument("--threshold", type=float, default=0.3, help="keypoint confidence threshold (default 0.3)")
    extract.add_argument("--det-threshold", type=float, default=0.3, help="person box score threshold (default 0.3)")
    extract.add_argument("--overwrite", action="store_true", help="redo videos that are already done")
    extract.add_argument("--no-progress", action="store_true", help="no progress bar")
    extract.set_defaults(func=_extract)

    align = pose_sub.add_parser("align", help="retarget driving poses to a reference pose's proportions",
                                description=ALIGN_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    align.add_argument("--ref-pose", required=True, help="keypoints JSON of the reference (its first frame is used)")
    align.add_argument("--driving", required=True, help="driving keypoints JSON, or a folder of them (recursive)")
    align.add_argument("--out", required=True, help="output folder (gets keypoints/ and poses/)")
    align.add_argument("--render", action=argparse.BooleanOptionalAction, default=True,
                       help="also write the aligned skeleton mp4 (default on)")
    align.add_argument("--threshold", type=float, default=0.3,
                       help="drawing threshold; alignment keeps every keypoint with confidence > 0 (default 0.3)")
    align.set_defaults(func=_align)


def _extract(args) -> int:
    from ..errors import UserError

    from .pose_extract import extract_videos

    if args.workers < 1:
        raise UserError(f"--workers must be at least 1, got {args.workers}")
    if not 0 <= args.threshold < 1:
        raise UserError(f"--threshold must be in [0, 1), got {args.threshold}")
    try:
        report = extract_videos(args.videos, args.out, backend=args.backend, det=args.det, pose=args.pose,
                                models_dir=args.models_dir, workers=args.workers, hands=args.hands, face=args.face,
                                threshold=args.threshold, det_threshold=args.det_threshold,
                                overwrite=args.overwrite, progress=not args.no_progress)
    except (FileNotFoundError, ImportError, ValueError) as error:
        raise UserError(str(error)) from None
    total = len(report.done) + len(report.skipped) + len(report.failed)
    if total == 0:
        raise UserError(f"{args.videos}: no videos or images found (looked for mp4, mov, avi, mkv, webm, m4v, "
                        f"png, jpg, jpeg, webp, bmp)")
    print(f"pose extract: {len(report.done)} done, {len(report.skipped)} already done (skipped), "
          f"{len(report.failed)} failed")
    print(f"skeleton videos: {report.poses_dir}")
    print(f"keypoints:       {report.keypoints_dir}")
    if report.failed:
        print(f"{len(report.failed)} video(s) failed (run the same command again to retry them):", file=sys.stderr)
        for video, error in report.failed:
            print(f"  {video}: {error}", file=sys.stderr)
        return 1
    return 0


def _align(args) -> int:
    from ..errors import UserError

    from .align import align_keypoints
    from .skeleton import draw_pose, load_keypoints, save_keypoints
    from .video import write_video

    try:
        ref = load_keypoints(args.ref_pose)
    except (FileNotFoundError, ValueError) as error:
        raise UserError(f"--ref-pose: {error}") from None
    if not ref["frames"]:
        raise UserError(f"--ref-pose {args.ref_pose}: no frames")
    driving = Path(args.driving)
    if driving.is_dir():
        sources = sorted(p for p in driving.rglob("*.json") if not p.name.startswith("."))
        names = [p.relative_to(driving).with_suffix("") for p in sources]
        if not sources:
            raise UserError(f"--driving {driving}: no keypoints JSON files in this folder")
    elif driving.is_file():
        sources, names = [driving], [Path(driving.stem)]
    else:
        raise UserError(f"--driving {driving}: no such file or folder")

    out = Path(args.out)
    failed = []
    for source, name in zip(sources, names):
        try:
            aligned = align_keypoints(ref, load_keypoints(source))
            width, height = aligned["width"], aligned["height"]
            kps_path = save_keypoints(out / "keypoints" / name.with_suffix(".json"), aligned["frames"],
                                      width=width, height=height, fps=aligned["fps"])
            print(f"aligned keypoints: {kps_path}")
            if args.render:
                frames = (draw_pose(f["body"], width, height, hands=f["hands"], face=f["face"],
                                    threshold=args.threshold) for f in aligned["frames"])
                fps = aligned["fps"] if aligned["fps"] > 0 else 25.0  # a still image's keypoints have no fps
                video_path = write_video(out / "poses" / name.with_suffix(".mp4"), frames, fps=fps, overwrite=True)
                print(f"aligned skeleton video: {video_path}")
        except (FileNotFoundError, ValueError) as error:
            failed.append((source, str(error)))
    if failed:
        if len(sources) == 1:
            raise UserError(failed[0][1])
        for source, error in failed:
            print(f"  {source}: {error}", file=sys.stderr)
        print(f"{len(failed)} of {len(sources)} driving files failed", file=sys.stderr)
        return 1
    return 0
