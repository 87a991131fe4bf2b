"""`marionet compare` (methods scored against held-out videos) and the `marionet demo` entry (built by the lead)."""
from __future__ import annotations

import argparse
from pathlib import Path

from . import speed as speed_settings

COMPARE_DESCRIPTION = """\
Render held-out videos with every --method and score them against the ground truth. For each video the reference is
one frame (--ref-frame), the driving poses are the video's own skeleton frames and the ground truth is the video; all
methods get the same reference, poses, seed and step count. Writes REPORT_DIR/report.json, report.md, plots/,
grids/ and videos/ (side by side). LPIPS and FVD need local weight files (--lpips, --fvd); without them the report
says they were not computed."""

SPEC_HELP = """\
A method is NAME=SPEC. NAME labels it in the report (letters, digits, '-', '_', '.'). SPEC is KIND:KEY=VALUE,... or
a bare model folder (short for trained:model=FOLDER). Kinds:
  trained:model=DIR[,guidance=G]            a marionet model folder (stage 1 renders frame by frame, a folder with
                                            motion_adapter/ renders the video with its temporal layers; a stock
                                            folder, trained with model.reference_net=false, sees the CLIP token only)
  zero-shot:base=DIR,controlnet=DIR,ip_adapter=FILE,image_encoder=DIR[,guidance=G]
                                            training-free baseline: SD1.5 folder + openpose ControlNet + IP-Adapter
  zero-shot:model=DIR[,guidance=G]          the same cross-image-attention baseline on a marionet model folder (a
                                            stock folder: with the source's CLIP token as the image prompt)
      either zero-shot form also takes the method's switches (see `marionet zero-shot --help`):
      temperature=T, layers=all|encoder|mid|decoder[:DIVISORS with ';' between divisors], source_noise=random|
      previous-target|previous-source, swap_steps=START:END, swap=off, source_pose=on (the source pass is
      conditioned on the reference frame's own skeleton; default off: no pose in the source pass)
  pose-only:model=DIR                       a model folder with the reference dropped (no reference tokens, zero
                                            CLIP token): the lower bound showing how much appearance a method transfers
Every kind also takes speed options, over the command's --scheduler/--step-cache/--fast: scheduler=ddim|dpm++|
unipc|euler, step_cache=N, step_cache_skips=K, steps=S, fast=1 (the --fast preset).
Values cannot contain ',' or '='. Guidance defaults: trained 3.5, zero-shot 1.0 (off). Example:
  --method ours=trained:model=runs/stage2/model --method zs=zero-shot:model=runs/stage1/model"""


def register(subparsers) -> None:
    compare = subparsers.add_parser(
        "compare", help="score zero-shot, trained and other methods on held-out videos",
        description=COMPARE_DESCRIPTION, epilog=SPEC_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    compare.add_argument("--data", required=True, help="held-out videos: a meta.json, or WebDataset shards "
                                                       "(folder with manifest.json, manifest.json or .tar pattern)")
    compare.add_argument("--method", action="append", required=True, metavar="NAME=SPEC",
                         help="a method to compare (repeat; see below)")
    compare.add_argument("--out", required=True, help="report folder to create")
    compare.add_argument("--videos", type=int, default=None, help="use the first N videos (default: all)")
    compare.add_argument("--frames", type=int, default=None, help="render the first F frames of each (default: all)")
    compare.add_argument("--size", default=None, metavar="WxH", help="resize all frames (default: the videos' size)")
    compare.add_argument("--seed", type=int, default=0, help="the same seed for every method and video (default 0)")
    compare.add_argument("--ref-frame", type=int, default=0, help="which frame is the reference (default 0)")
    compare.add_argument("--lpips", default=None, metavar="PATH",
                         help="LPIPS weights: a TorchScript file, or a folder with the lpips package's alex.pth and "
                              "AlexNet trunk weights (alexnet-owt-7be5be79.pth)")
    compare.add_argument("--fvd", default=None, metavar="FILE", help="I3D TorchScript file (i3d_torchscript.pt)")
    compare.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    compare.add_argument("--grid-frames", type=int, default=8, help="frames shown in each grid (default 8)")
    compare.add_argument("--overwrite", action="store_true", help="replace an existing report folder")
    speed_settings.add_arguments(compare, default_steps=20)
    compare.set_defaults(func=run_compare)

    demo = subparsers.add_parser(
        "demo", help="offline CPU demo: synthetic data -> stage 0/1/2 training -> zero-shot vs trained comparison",
        description="Generate synthetic puppet videos, train tiny models (stage 0 autoencoder, stage 1, stage 2) "
                    "and a stock model without ReferenceNet through the real training core, and compare "
                    "trained-stage2, trained-stage1, zero-shot (on the stock model), stock and pose-only on held-out "
                    "puppets, with 95% intervals and the claimed orderings. No downloads, no GPU. About 9-15 "
                    "minutes on 2 AVX-512 CPU cores (CPU generations differ), longer on AVX2-only ones "
                    "(docs/benchmarks.md); --quick takes under a minute and its numbers mean nothing. Settings are "
                    "chosen with --set score=validation (scores the validation puppets instead).")
    demo.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    demo.add_argument("--quick", action="store_true", help="tiny step counts: a smoke test of every phase")
    demo.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    demo.add_argument("--update-readme", action="store_true",
                      help="write the README's demo table (means, 95%% intervals, claimed orderings) and "
                           "docs/images/demo_grid.png from this run's report, and keep the runs' report.json and "
                           "demo.json in docs/demo_runs/run1, run2, ... (run from the repository root)")
    demo.add_argument("--from", dest="from_dirs", action="append", metavar="DEMO_DIR",
                      help="with --update-readme: take earlier runs' folders instead of running the demo (the table "
                           "from the first; repeat it to state the spread between runs); docs/demo_runs/runN works "
                           "too")
    demo.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="override a demo setting (see inference/demo.py DemoSettings), e.g. --set stage1_steps=400")
    demo.set_defaults(func=run_demo)


def run_compare(args) -> int:
    from ..errors import UserError

    for flag in ("videos", "frames", "grid_frames"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise UserError(f"--{flag.replace('_', '-')} must be >= 1, got {value}")
    if args.ref_frame < 0:
        raise UserError(f"--ref-frame must be >= 0, got {args.ref_frame}")
    from ..atomic import OutputWriteError
    from ..models.loading import MissingWeightsError
    from .compare import CompareError, run_comparison

    try:
        speed = speed_settings.from_arguments(args)
    except ValueError as error:
        raise UserError(str(error)) from None

    device = args.device
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        report = run_comparison(args.data, args.method, args.out, videos=args.videos, frames=args.frames,
                                size=args.size, steps=speed.steps, seed=args.seed, ref_frame=args.ref_frame,
                                lpips=args.lpips, fvd=args.fvd, device=device, overwrite=args.overwrite,
                                grid_frames=args.grid_frames,
                                speed=speed_settings.Speed(speed.scheduler, speed.cache_interval, speed.cache_skips))
    except (CompareError, MissingWeightsError, FileExistsError, FileNotFoundError, OutputWriteError) as error:
        raise UserError(str(error).splitlines()[0]) from None
    for name, entry in report["methods"].items():
        print(f"{name}: PSNR {entry['psnr']['mean']:.2f} dB, PSNR* {entry['psnr_star']['mean']:.2f}, "
              f"SSIM {entry['ssim']['mean']:.4f}, {entry['seconds_per_frame']['mean']:.3f} s/frame")
    print(f"wrote {report['out_dir']}/report.md, report.json, plots/, grids/, videos/")
    return 0


def run_demo(args) -> int:
    from ..errors import UserError

    from .demo import parse_settings, run_demo as demo, update_readme

    if args.from_dirs:
        if not args.update_readme:
            raise UserError("--from DEMO_DIR is only used with --update-readme")
        for folder in args.from_dirs:
            if not (Path(folder) / "report" / "report.json").is_file():
                raise UserError(f"{folder}: no report/report.json (not a finished demo folder)")
        print("updated " + (", ".join(update_readme(args.from_dirs)) or "nothing (no <!-- demo:table --> marker)"))
        return 0

    try:
        overrides = parse_settings(args.set)
    except ValueError as error:
        raise UserError(str(error)) from None
    demo(args.out, quick=args.quick, overwrite=args.overwrite, **overrides)
    if args.update_readme:
        print("updated " + (", ".join(update_readme(args.out)) or "nothing (no <!-- demo:table --> marker)"))
    return 0
