"""Data-loading benchmark: samples/s of the stage-1 and stage-2 datasets, folder vs shards, per size and workers.

Run `python -m data.bench` or `marionet data bench`. It generates synthetic videos in a temporary folder (nothing is
downloaded), so the figures measure decoding, cropping and CLIP preprocessing on this machine.
"""
from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

STAGE2_FRAMES, STAGE2_STRIDE = 24, 4  # the reference recipe's stage-2 clip


def _measure(dataset, workers: int, seconds: float, min_samples: int = 4) -> tuple[float, float | None]:
    """(samples/s of wall time, CPU ms per sample) after the first batch, which pays worker start-up.

    CPU time is only measurable in-process, so it is None with workers: on a shared machine it is the figure that
    does not depend on what else runs."""
    import torch

    from .datasets import collate_skipping

    loader = torch.utils.data.DataLoader(dataset, batch_size=1, num_workers=workers, collate_fn=collate_skipping)
    count, start, cpu_start, epoch = 0, None, None, 0
    while True:
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)
        for batch in loader:
            if start is None:
                start, cpu_start = time.perf_counter(), time.process_time()
                continue
            count += 0 if batch is None else len(batch["video_id"])
            if time.perf_counter() - start >= seconds and count >= min_samples:
                cpu = None if workers else 1000 * (time.process_time() - cpu_start) / count
                return count / (time.perf_counter() - start), cpu
        epoch += 1


def run_benchmark(sizes=(256, 512), workers=(0, 2), videos: int = 6, frames: int = 96, seconds: float = 4.0,
                  stages=(1, 2)) -> list[dict]:
    import torch
    from ..models.loading import clip_image_processor_class
    from .datasets import Stage1Dataset, Stage2Dataset
    from .shards import ShardStage1Dataset, ShardStage2Dataset, write_shards
    from .synth import generate_dataset

    torch.set_num_threads(1)
    processor = clip_image_processor_class()()  # the standard 224 px CLIP preprocessing, built locally
    frames = max(frames, (STAGE2_FRAMES - 1) * STAGE2_STRIDE + 1)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; "
          f"{torch.get_num_threads()} torch thread per process; stage 2 = {STAGE2_FRAMES} frames x stride "
          f"{STAGE2_STRIDE}; CLIP preprocessing at 224 px")
    print(f"{'stage':>5} {'size':>5} {'source':>7} {'workers':>7} {'samples/s':>10} {'CPU ms/sample':>14}")
    results = []
    with tempfile.TemporaryDirectory(prefix="marionet-bench-") as tmp:
        for size in sizes:
            data_dir = Path(tmp) / f"synth{size}"
            meta = generate_dataset(data_dir, videos, frames, size, seed=1234)
            shard_dir = Path(tmp) / f"shards{size}"
            write_shards(meta, shard_dir, max_size="50MB")
            for stage in stages:
                for source in ("folder", "shards"):
                    for n_workers in workers:
                        if stage == 1:
                            dataset = (Stage1Dataset(meta, size, processor, seed=0) if source == "folder" else
                                       ShardStage1Dataset(shard_dir, size, processor, seed=0, shuffle_buffer=4))
                        else:
                            dataset = (Stage2Dataset(meta, size, STAGE2_FRAMES, STAGE2_STRIDE, processor, seed=0)
                                       if source == "folder" else
                                       ShardStage2Dataset(shard_dir, size, STAGE2_FRAMES, STAGE2_STRIDE, processor,
                                                          seed=0, shuffle_buffer=4))
                        rate, cpu = _measure(dataset, n_workers, seconds)
                        results.append({"stage": stage, "size": size, "source": source, "workers": n_workers,
                                        "samples_per_s": rate, "cpu_ms_per_sample": cpu})
                        cpu_text = "-" if cpu is None else f"{cpu:.0f}"
                        print(f"{stage:>5} {size:>5} {source:>7} {n_workers:>7} {rate:>10.2f} {cpu_text:>14}",
                              flush=True)
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--videos", type=int, default=6)
    parser.add_argument("--frames", type=int, default=96)
    parser.add_argument("--seconds", type=float, default=4.0)
    args = parser.parse_args(argv)
    run_benchmark(args.sizes, args.workers, args.videos, args.frames, args.seconds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
