"""`marionet synth` and `marionet data index|shard|bench`: the data-preparation commands.

Registration stays import-light (no torch, decord or numpy); each handler imports what it needs.
"""
from __future__ import annotations

import argparse
from pathlib import Path


def _synth(args) -> int:
    from ..errors import UserError
    from .synth import generate_dataset

    try:
        meta = generate_dataset(args.out, args.videos, args.frames, args.size, args.seed, fps=args.fps,
                                hands=not args.no_hands, overwrite=args.overwrite, progress=True)
    except (ValueError, FileExistsError) as error:
        raise UserError(str(error)) from None
    out = Path(args.out)
    print(f"wrote {args.videos} videos to {out / 'videos'}, skeletons to {out / 'poses'}, "
          f"keypoints to {out / 'keypoints'}")
    print(f"index: {meta}")
    return 0


def _index(args) -> int:
    from ..errors import UserError
    from .index import build_index

    try:
        out, accepted, rejected = build_index(args.videos, args.poses, args.out, min_frames=args.min_frames,
                                              overwrite=args.overwrite, progress=True)
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        raise UserError(str(error)) from None
    for video, reason in rejected:
        print(f"rejected {video}: {reason}")
    print(f"wrote {out}: {len(accepted)} pairs accepted, {len(rejected)} rejected")
    return 0 if accepted else 1


def _shard(args) -> int:
    from ..errors import UserError
    from .shards import write_shards

    try:
        manifest_path, manifest, rejected = write_shards(args.meta, args.out, max_size=args.max_size,
                                                         max_count=args.max_count, min_frames=args.min_frames,
                                                         progress=True)
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        raise UserError(str(error)) from None
    for video, reason in rejected:
        print(f"rejected {video}: {reason}")
    print(f"wrote {len(manifest['shards'])} shards with {manifest['num_samples']} samples to {args.out}; "
          f"manifest: {manifest_path}")
    return 0


def _bench(args) -> int:
    from .bench import run_benchmark

    run_benchmark(sizes=args.sizes, workers=args.workers, videos=args.videos, frames=args.frames,
                  seconds=args.seconds)
    return 0


def register(subparsers) -> None:
    synth = subparsers.add_parser(
        "synth", help="generate a synthetic puppet-dance dataset (videos, skeleton videos, keypoints, meta.json)",
        description="Write DIR/videos, DIR/poses, DIR/keypoints and DIR/meta.json: 2D puppets dancing, with their "
                    "exact OpenPose skeletons. Deterministic by --seed; different seeds give different puppets and "
                    "motions.")
    synth.add_argument("--out", required=True, help="output folder")
    synth.add_argument("--videos", type=int, default=16, help="number of videos (default 16)")
    synth.add_argument("--frames", type=int, default=48, help="frames per video (default 48)")
    synth.add_argument("--size", type=int, default=64, help="square frame size in pixels (default 64)")
    synth.add_argument("--seed", type=int, default=0, help="dataset seed (default 0)")
    synth.add_argument("--fps", type=float, default=12.0, help="frames per second (default 12)")
    synth.add_argument("--no-hands", action="store_true", help="leave hands out of the skeleton videos")
    synth.add_argument("--overwrite", action="store_true", help="replace an existing dataset in --out")
    synth.set_defaults(func=_synth)

    data = subparsers.add_parser("data", help="index, shard and benchmark training data",
                                 description="Prepare training data: index video/pose pairs, pack them into "
                                             "WebDataset shards, measure loading speed.")
    data_sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    data.set_defaults(func=lambda args: data.print_help() or 2)

    index = data_sub.add_parser("index", help="pair videos with pose videos, validate them, write meta.json",
                                description="Pair VIDEOS/<name>.mp4 with POSES/<name>.mp4, check both decode, have the "
                                            "same frame count and at least --min-frames, and write the meta.json "
                                            "index (paths relative to its folder when below it). Rejected pairs "
                                            "are listed with the reason.")
    index.add_argument("--videos", required=True, help="folder of videos")
    index.add_argument("--poses", required=True, help="folder of skeleton videos with the same file names")
    index.add_argument("--out", required=True, help="meta.json to write")
    index.add_argument("--min-frames", type=int, default=1, help="reject videos shorter than this (default 1)")
    index.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    index.set_defaults(func=_index)

    shard = data_sub.add_parser("shard", help="pack a meta.json into WebDataset tar shards",
                                description="Write tar shards (video mp4, pose mp4 and json per sample) and a "
                                            "manifest.json listing shards and sample counts.")
    shard.add_argument("--meta", required=True, help="meta.json to pack")
    shard.add_argument("--out", required=True, help="output folder for the shards")
    shard.add_argument("--max-size", default="1GB", help="maximum shard size (default 1GB)")
    shard.add_argument("--max-count", type=int, default=100000, help="maximum samples per shard (default 100000)")
    shard.add_argument("--min-frames", type=int, default=1, help="skip videos shorter than this (default 1)")
    shard.set_defaults(func=_shard)

    bench = data_sub.add_parser("bench", help="measure data-loading samples/s on generated synthetic data",
                                description="Generate synthetic data in a temporary folder and print samples/s of "
                                            "the stage-1 and stage-2 datasets, folder vs shards, for each image "
                                            "size and DataLoader worker count.")
    bench.add_argument("--sizes", type=int, nargs="+", default=[256, 512], help="image sizes (default 256 512)")
    bench.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="DataLoader workers (default 0 2)")
    bench.add_argument("--videos", type=int, default=6, help="synthetic videos per size (default 6)")
    bench.add_argument("--frames", type=int, default=96, help="frames per synthetic video (default 96)")
    bench.add_argument("--seconds", type=float, default=4.0, help="time budget per measurement (default 4)")
    bench.set_defaults(func=_bench)


if __name__ == "__main__":  # pragma: no cover - convenience for `python -m data.cli`
    parser = argparse.ArgumentParser(prog="marionet")
    register(parser.add_subparsers(dest="command"))
    parsed = parser.parse_args()
    raise SystemExit(parsed.func(parsed) if getattr(parsed, "func", None) else 0)
