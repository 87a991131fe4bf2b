"""WebDataset tar shards: writing them from a meta.json, and streaming training samples out of them.

Each sample in a shard is `<key>.video.mp4`, `<key>.pose.mp4` and `<key>.json` (the index entry plus its position
"index" in the meta file). Reading yields exactly the samples folder mode gives for the same seed, epoch and index,
because both call data.datasets.build_sample with the same per-item generator.

Splitting: shards are dealt out across (rank, worker) pairs when there are at least as many shards as pairs; with
fewer shards every pair reads all of them and keeps every n-th sample. Either way each sample is seen once per epoch
across all ranks and workers. Corrupt or truncated shards and samples are skipped with a warning naming the shard.
"""
from __future__ import annotations

import io
import json
import logging
import os
import re
import shutil
import tarfile
from pathlib import Path

import numpy as np
import torch

from ..atomic import publish_file, staging_folder, write_json
from .datasets import BadSample, SampleSpec, build_sample, item_rng

logger = logging.getLogger("marionet.data")

MANIFEST = "manifest.json"


def parse_size(text) -> int:
    """'1GB', '500MB', '2e8' or an int -> bytes (decimal units: 1GB = 1e9)."""
    if isinstance(text, (int, float)):
        return int(text)
    match = re.fullmatch(r"\s*([0-9.eE+]+)\s*([kKmMgGtT]?)[iI]?[bB]?\s*", str(text))
    if not match:
        raise ValueError(f"cannot read size {text!r} (use e.g. 500MB, 1GB)")
    factor = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}[match.group(2).lower()]
    return int(float(match.group(1)) * factor)


# ---------------------------------------------------------------- writing

def write_shards(meta_path, out_dir, max_size="1GB", max_count: int = 100000, min_frames: int = 1,
                 progress: bool = False) -> tuple[Path, dict, list[tuple[str, str]]]:
    """Pack every valid pair of a meta.json into tar shards under out_dir, plus out_dir/manifest.json.

    Returns (manifest path, manifest, [(video, reason) for rejected entries]). Shards are written in a temporary
    folder and moved in place when complete; an existing manifest is never replaced.
    """
    import webdataset as wds

    from .index import check_pair, load_index

    out = Path(out_dir)
    if (out / MANIFEST).exists():
        raise FileExistsError(f"{out / MANIFEST}: shards already exist here (choose another --out)")
    entries = load_index(meta_path)
    if not entries:
        raise ValueError(f"{meta_path}: the index has no entries")
    out.mkdir(parents=True, exist_ok=True)
    staging = staging_folder(out / "shards")
    counts: dict[str, int] = {}
    rejected = []
    iterator = enumerate(entries)
    if progress:
        from tqdm import tqdm
        iterator = tqdm(iterator, total=len(entries), desc="shard", unit="video")
    try:
        with wds.ShardWriter(str(staging / "shard-%06d.tar"), maxcount=max_count, maxsize=parse_size(max_size),
                             verbose=0) as writer:
            for index, entry in iterator:
                checked, reason = check_pair(entry["video_path"], entry["pose_path"], min_frames)
                if checked is None:
                    rejected.append((entry["video_path"], reason))
                    continue
                info = {key: checked[key] for key in ("num_frames", "fps", "width", "height")}
                info.update(index=index, video_id=entry.get("video_id") or Path(entry["video_path"]).stem)
                writer.write({"__key__": f"{index:08d}", "video.mp4": Path(entry["video_path"]).read_bytes(),
                              "pose.mp4": Path(entry["pose_path"]).read_bytes(), "json": json.dumps(info).encode()})
                name = Path(writer.fname).name
                counts[name] = counts.get(name, 0) + 1
        shards = []
        for name in sorted(counts):
            publish_file(staging / name, out / name)
            shards.append({"path": name, "samples": counts[name], "bytes": (out / name).stat().st_size})
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    manifest = {"shards": shards, "num_samples": sum(counts.values()), "num_rejected": len(rejected),
                "source": str(Path(meta_path).resolve())}
    write_json(out / MANIFEST, manifest, overwrite=False)
    return out / MANIFEST, manifest, rejected


# ---------------------------------------------------------------- reading

def expand_urls(urls) -> list[str]:
    """A shard folder (uses its manifest), a manifest file, a brace pattern, a URL, or a list of those -> shard URLs."""
    from webdataset.shardlists import expand_urls as wds_expand

    if isinstance(urls, (list, tuple)):
        return [u for item in urls for u in expand_urls(item)]
    text = str(urls)
    path = Path(text)
    if path.is_dir():
        manifest = path / MANIFEST
        if manifest.is_file():
            return [str(path / s["path"]) for s in json.loads(manifest.read_text())["shards"]]
        found = sorted(str(p) for p in path.glob("*.tar"))
        if not found:
            raise FileNotFoundError(f"{path}: no manifest.json and no .tar shards")
        return found
    if path.name == MANIFEST and path.is_file():
        return [str(path.parent / s["path"]) for s in json.loads(path.read_text())["shards"]]
    urls = list(wds_expand(text))
    local = [u for u in urls if "://" not in u and not u.startswith("pipe:")]
    missing = [u for u in local if not Path(u).exists()]
    if missing:
        raise FileNotFoundError(f"{missing[0]}: shard not found")
    return urls


def _rank_world(rank, world_size) -> tuple[int, int]:
    if rank is not None and world_size is not None:
        return int(rank), int(world_size)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def iter_tar_samples(url: str, stats: dict):
    """Yield {"__key__", "video.mp4", "pose.mp4", "json"} groups from one shard; problems are counted, not raised."""
    from webdataset import gopen

    current, key = {}, None
    try:
        stream = gopen(url, "rb")
    except Exception as error:
        logger.warning("skipping shard %s: cannot open (%s)", url, error)
        stats["bad_shards"] = stats.get("bad_shards", 0) + 1
        return
    try:
        with tarfile.open(fileobj=stream, mode="r|*") as archive:
            for member in archive:
                if not member.isfile():
                    continue
                name = member.name.rsplit("/", 1)[-1]
                member_key, _, suffix = name.partition(".")
                if member_key != key:
                    if current:
                        yield current
                    current, key = {"__key__": member_key, "__url__": url}, member_key
                current[suffix] = archive.extractfile(member).read()
    except (tarfile.TarError, EOFError, OSError, ValueError) as error:
        logger.warning("shard %s is corrupt or truncated after sample %s (%s); skipping the rest", url, key, error)
        stats["bad_shards"] = stats.get("bad_shards", 0) + 1
        current = {}  # the last group may be incomplete
    finally:
        stream.close()
    if current:
        yield current


class ShardDataset(torch.utils.data.IterableDataset):
    """Stage-1 or stage-2 samples streamed from WebDataset shards (same dicts as Stage1Dataset/Stage2Dataset).

    `stats` counts skipped samples and bad shards in this process (each DataLoader worker has its own copy).
    """

    def __init__(self, urls, stage: int, image_size, clip_processor, min_gap: int = 30, n_frames: int = 1,
                 frame_stride: int = 1, seed: int = 0, shuffle_buffer: int = 64, max_zoom: float = 1.1,
                 rank: int | None = None, world_size: int | None = None):
        self.urls = expand_urls(urls)
        if not self.urls:
            raise ValueError(f"no shards found for {urls!r}")
        self.spec = SampleSpec(stage, image_size, clip_processor, min_gap=min_gap, n_frames=n_frames,
                               frame_stride=frame_stride, max_zoom=max_zoom)
        self.seed, self.epoch, self.shuffle_buffer = int(seed), 0, int(shuffle_buffer)
        self.rank, self.world_size = rank, world_size
        self.stats = {"skipped": 0, "bad_shards": 0}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _raw_samples(self, split: int, splits: int, order: np.random.Generator):
        urls = list(self.urls)
        order.shuffle(urls)  # the same permutation in every process: seeded by (seed, epoch) only
        by_shard = len(urls) >= splits
        number = 0
        for shard_index, url in enumerate(urls):
            if by_shard and shard_index % splits != split:
                continue
            for raw in iter_tar_samples(url, self.stats):
                if not by_shard:
                    number += 1
                    if (number - 1) % splits != split:
                        continue
                yield raw

    def _decode(self, raw: dict):
        url = raw.get("__url__", "?")
        try:
            info = json.loads(raw["json"])
            video, pose = raw["video.mp4"], raw["pose.mp4"]
            index = int(info["index"])
        except (KeyError, ValueError, TypeError) as error:
            raise BadSample(f"shard {url}, sample {raw.get('__key__')}: incomplete sample ({error!r})") from None
        name = f"{url}:{raw.get('__key__')}"
        return build_sample(self.spec, io.BytesIO(video), io.BytesIO(pose), item_rng(self.seed, self.epoch, index),
                            info.get("video_id", name))

    def __iter__(self):
        rank, world = _rank_world(self.rank, self.world_size)
        worker = torch.utils.data.get_worker_info()
        workers, worker_id = (worker.num_workers, worker.id) if worker else (1, 0)
        splits, split = world * workers, rank * workers + worker_id
        order = np.random.default_rng([self.seed & 0xFFFFFFFF, self.epoch, 0x5A4D])
        shuffle = np.random.default_rng([self.seed & 0xFFFFFFFF, self.epoch, split, 0xB0FF])
        buffer = []
        for raw in self._raw_samples(split, splits, order):
            if self.shuffle_buffer <= 1:
                yield from self._emit(raw)
                continue
            buffer.append(raw)
            if len(buffer) >= self.shuffle_buffer:
                yield from self._emit(buffer.pop(int(shuffle.integers(len(buffer)))))
        while buffer:
            yield from self._emit(buffer.pop(int(shuffle.integers(len(buffer)))))

    def _emit(self, raw):
        try:
            yield self._decode(raw)
        except (BadSample, OSError, ValueError, RuntimeError) as error:
            self.stats["skipped"] += 1
            logger.warning("skipping sample %s of shard %s: %s", raw.get("__key__"), raw.get("__url__", "?"), error)


class ShardStage1Dataset(ShardDataset):
    def __init__(self, urls, image_size, clip_processor, min_gap: int = 30, seed: int = 0, **kwargs):
        super().__init__(urls, 1, image_size, clip_processor, min_gap=min_gap, seed=seed, **kwargs)


class ShardStage2Dataset(ShardDataset):
    def __init__(self, urls, image_size, n_frames: int, frame_stride: int, clip_processor, seed: int = 0, **kwargs):
        super().__init__(urls, 2, image_size, clip_processor, n_frames=n_frames, frame_stride=frame_stride,
                         seed=seed, **kwargs)
