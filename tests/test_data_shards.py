"""data.shards: writing WebDataset shards and streaming the same samples as folder mode."""
import io
import json
import logging
import tarfile

import pytest
import torch
from transformers import CLIPImageProcessor

from marionet.data.datasets import Stage1Dataset, Stage2Dataset
from marionet.data.shards import ShardStage1Dataset, ShardStage2Dataset, expand_urls, parse_size, write_shards
from marionet.data.synth import generate_dataset


@pytest.fixture(scope="module")
def processor():
    return CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    meta = generate_dataset(root / "ds", videos=5, frames=24, size=32, seed=9)
    manifest_path, manifest, rejected = write_shards(meta, root / "shards", max_size="30KB")
    return meta, root / "shards", manifest


def assert_same(a, b):
    assert a["video_id"] == b["video_id"]
    for key in ("target", "pose", "reference", "clip_image"):
        assert torch.equal(a[key], b[key]), key


def test_manifest_and_sizes(dataset):
    meta, shard_dir, manifest = dataset
    assert manifest["num_samples"] == 5 and len(manifest["shards"]) >= 2
    assert sum(s["samples"] for s in manifest["shards"]) == 5
    assert json.loads((shard_dir / "manifest.json").read_text()) == manifest
    assert len(expand_urls(shard_dir)) == len(manifest["shards"])
    pattern = str(shard_dir / "shard-{000000..000001}.tar")
    assert expand_urls(pattern) == [str(shard_dir / "shard-000000.tar"), str(shard_dir / "shard-000001.tar")]
    assert parse_size("1GB") == 10**9 and parse_size("500MB") == 5 * 10**8 and parse_size(1234) == 1234
    with pytest.raises(FileExistsError, match="manifest.json"):
        write_shards(meta, shard_dir)


@pytest.mark.parametrize("epoch", [0, 2])
def test_shard_samples_equal_folder_samples(dataset, processor, epoch):
    meta, shard_dir, _ = dataset
    folder = Stage1Dataset(meta, 24, processor, min_gap=5, seed=11)
    shards = ShardStage1Dataset(shard_dir, 24, processor, min_gap=5, seed=11, shuffle_buffer=3)
    folder.set_epoch(epoch)
    shards.set_epoch(epoch)
    by_id = {folder[i]["video_id"]: folder[i] for i in range(len(folder))}
    streamed = list(shards)
    assert sorted(s["video_id"] for s in streamed) == sorted(by_id)
    for sample in streamed:
        assert_same(sample, by_id[sample["video_id"]])

    folder2 = Stage2Dataset(meta, 24, 4, 2, processor, seed=5)
    shards2 = ShardStage2Dataset(shard_dir, 24, 4, 2, processor, seed=5, shuffle_buffer=1)
    streamed2 = {s["video_id"]: s for s in shards2}
    for i in range(len(folder2)):
        assert_same(streamed2[folder2[i]["video_id"]], folder2[i])


@pytest.mark.parametrize("world", [2, 3, 8])  # 8 splits > shards: falls back to splitting by sample
def test_ranks_see_disjoint_samples(dataset, processor, world):
    _, shard_dir, _ = dataset
    seen = []
    for rank in range(world):
        ds = ShardStage1Dataset(shard_dir, 16, processor, min_gap=5, rank=rank, world_size=world)
        seen += [s["video_id"] for s in ds]
    assert sorted(seen) == sorted(set(seen)) and len(seen) == 5


def test_dataloader_workers_split_without_duplicates(dataset, processor):
    _, shard_dir, _ = dataset
    ds = ShardStage1Dataset(shard_dir, 16, processor, min_gap=5, rank=0, world_size=1)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)
    ids = [s["video_id"] for s in loader]
    assert sorted(ids) == sorted(set(ids)) and len(ids) == 5


def test_corrupt_and_truncated_shards_are_skipped(dataset, processor, tmp_path, caplog):
    _, shard_dir, manifest = dataset
    first = shard_dir / manifest["shards"][0]["path"]
    data = first.read_bytes()
    truncated = tmp_path / "truncated.tar"
    truncated.write_bytes(data[: len(data) // 2 + 100])
    garbage = tmp_path / "garbage.tar"
    garbage.write_bytes(b"\x00garbage" * 100)
    # A shard whose second sample has a broken video and whose third lacks its pose.
    broken = tmp_path / "broken.tar"
    with tarfile.open(first) as source, tarfile.open(broken, "w") as out:
        members = [(m, source.extractfile(m).read()) for m in source.getmembers()]
        for m, payload in members:
            if m.name.endswith("video.mp4") and m.name.startswith(members[-1][0].name.split(".")[0]):
                payload = b"not an mp4"
            m.size = len(payload)
            out.addfile(m, io.BytesIO(payload))
        info = tarfile.TarInfo("99999999.json")
        body = json.dumps({"index": 0}).encode()
        info.size = len(body)
        out.addfile(info, io.BytesIO(body))
    urls = [str(truncated), str(garbage), str(broken), str(shard_dir / manifest["shards"][1]["path"])]
    ds = ShardStage1Dataset(urls, 16, processor, min_gap=5, world_size=1, rank=0)
    with caplog.at_level(logging.WARNING, logger="marionet.data"):
        samples = list(ds)
    assert ds.stats["bad_shards"] >= 2 and ds.stats["skipped"] >= 2
    assert "truncated.tar" in caplog.text and "garbage.tar" in caplog.text and "broken.tar" in caplog.text
    good_in_first = manifest["shards"][0]["samples"]
    assert len(samples) >= (good_in_first - 1) + manifest["shards"][1]["samples"]
    with pytest.raises(FileNotFoundError, match="none.tar"):
        ShardStage1Dataset(str(tmp_path / "none.tar"), 16, processor)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no manifest"):
        expand_urls(tmp_path / "empty")
