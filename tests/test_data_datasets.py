"""data.datasets: stage-1/2 samples, reproducible randomness, and bad samples that never stop training."""
import json
import logging

import numpy as np
import pytest
import torch
from transformers import CLIPImageProcessor

from marionet.data.datasets import Stage1Dataset, Stage2Dataset, collate_skipping, stage1_frames
from marionet.data.synth import generate_dataset
from marionet.data.video import write_video


@pytest.fixture(scope="module")
def processor():
    return CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return generate_dataset(tmp_path_factory.mktemp("synth") / "ds", videos=3, frames=40, size=48, seed=7)


def test_stage1_sample_contract(synth, processor):
    dataset = Stage1Dataset(synth, 32, processor, min_gap=10, seed=0)
    assert len(dataset) == 3
    sample = dataset[1]
    assert sample["target"].shape == (3, 32, 32) and sample["target"].dtype == torch.float32
    assert sample["pose"].shape == (3, 32, 32) and sample["reference"].shape == (3, 32, 32)
    assert sample["clip_image"].shape == (3, 32, 32) and sample["clip_image"].dtype == torch.float32
    assert -1 <= sample["target"].min() and sample["target"].max() <= 1 and sample["target"].std() > 0.05
    assert 0 <= sample["pose"].min() and sample["pose"].max() <= 1 and sample["pose"].max() > 0.3
    assert sample["clip_image"].min() < -1.0  # CLIP-normalised, not [-1, 1] or [0, 1]
    assert sample["video_id"] == "synth_s7_00001"


def test_reference_gap_and_clamping():
    rng = np.random.default_rng(0)
    for _ in range(200):
        target, reference = stage1_frames(rng, 100, 30)
        assert abs(target - reference) >= 30
        target, reference = stage1_frames(rng, 20, 30)  # too short: the farthest frame
        assert abs(target - reference) == max(target, 19 - target)
    assert stage1_frames(rng, 1, 30) == (0, 0)


def test_same_crop_for_target_and_pose(tmp_path, processor):
    """With the video itself as its 'pose' video, target and pose crops must show the same pixels."""
    frames = (np.random.default_rng(0).random((12, 40, 56, 3)) * 255).astype(np.uint8)
    frames = np.repeat(np.repeat(frames[:, ::4, ::4], 4, 1), 4, 2)[:, :40, :56]  # blocky, survives compression
    write_video(tmp_path / "v.mp4", frames, fps=10)
    meta = [{"video_path": str(tmp_path / "v.mp4"), "pose_path": str(tmp_path / "v.mp4")}]
    dataset = Stage1Dataset(meta, (24, 32), processor, min_gap=3, seed=1)
    for index_epoch in range(3):
        dataset.set_epoch(index_epoch)
        sample = dataset[0]
        assert sample["target"].shape == (3, 24, 32)
        torch.testing.assert_close(sample["target"] * 0.5 + 0.5, sample["pose"], atol=1e-5, rtol=0)
        assert not torch.allclose(sample["target"], sample["reference"])  # own crop, another frame


def test_randomness_depends_on_seed_epoch_index_only(synth, processor):
    a = Stage1Dataset(synth, 32, processor, min_gap=10, seed=3)
    b = Stage1Dataset(synth, 32, processor, min_gap=10, seed=3)
    _ = b[0], b[2]  # other items first: no hidden state may leak between items
    torch.testing.assert_close(a[1]["target"], b[1]["target"])
    torch.testing.assert_close(a[1]["reference"], b[1]["reference"])
    first = a[1]["target"]
    a.set_epoch(1)
    assert not torch.equal(first, a[1]["target"])
    np.random.seed(0), torch.manual_seed(0)  # global RNGs must not matter
    b.set_epoch(1)
    torch.testing.assert_close(a[1]["target"], b[1]["target"])
    c = Stage1Dataset(synth, 32, processor, min_gap=10, seed=4)
    assert not torch.equal(c[1]["target"], Stage1Dataset(synth, 32, processor, min_gap=10, seed=3)[1]["target"])


def test_stage2_clip(synth, processor):
    dataset = Stage2Dataset(synth, (32, 24), n_frames=6, frame_stride=3, clip_processor=processor, seed=0)
    sample = dataset[0]
    assert sample["target"].shape == (6, 3, 32, 24) and sample["pose"].shape == (6, 3, 32, 24)
    assert sample["reference"].shape == (3, 32, 24) and sample["clip_image"].shape == (3, 32, 32)
    assert not torch.equal(sample["target"][0], sample["target"][-1])  # frames of a moving clip
    batch = collate_skipping([dataset[0], dataset[1]])
    assert batch["target"].shape == (2, 6, 3, 32, 24) and batch["num_skipped"] == 0
    assert batch["video_id"] == ["synth_s7_00000", "synth_s7_00001"]


def test_small_frames_are_scaled_up(synth, processor):
    sample = Stage1Dataset(synth, 96, processor, min_gap=10)[0]  # the videos are 48 px
    assert sample["target"].shape == (3, 96, 96) and sample["pose"].shape == (3, 96, 96)


def test_clip_processor_from_folder(tmp_path, synth, processor):
    processor.save_pretrained(tmp_path / "feature_extractor")
    sample = Stage1Dataset(synth, 32, tmp_path / "feature_extractor", min_gap=10)[0]
    assert sample["clip_image"].shape == (3, 32, 32)
    with pytest.raises(FileNotFoundError, match="preprocessor_config.json"):
        Stage1Dataset(synth, 32, tmp_path, min_gap=10)


def test_bad_samples_are_skipped_with_a_warning(tmp_path, synth, processor, caplog):
    entries = json.loads(synth.read_text())
    base = synth.parent
    good = {"video_path": str(base / entries[0]["video_path"]), "pose_path": str(base / entries[0]["pose_path"])}
    (tmp_path / "junk.mp4").write_text("junk")
    write_video(tmp_path / "short_pose.mp4", np.zeros((5, 48, 48, 3), np.uint8), fps=12)
    write_video(tmp_path / "tiny.mp4", np.zeros((4, 48, 48, 3), np.uint8), fps=12)
    meta = [
        good,
        {"video_path": str(tmp_path / "missing.mp4"), "pose_path": good["pose_path"]},
        {"video_path": str(tmp_path / "junk.mp4"), "pose_path": good["pose_path"]},
        {"video_path": good["video_path"], "pose_path": str(tmp_path / "short_pose.mp4")},
        {"video_path": str(tmp_path / "tiny.mp4"), "pose_path": str(tmp_path / "tiny.mp4")},
    ]
    stage2 = Stage2Dataset(meta, 32, n_frames=4, frame_stride=2, clip_processor=processor)
    with caplog.at_level(logging.WARNING, logger="marionet.data"):
        samples = [stage2[i] for i in range(len(meta))]
    assert samples[0] is not None and all(s is None for s in samples[1:])
    log = caplog.text
    assert "missing.mp4" in log and "not found" in log
    assert "junk.mp4" in log and "cannot be read" in log
    assert "40 frames but its pose video has 5" in log
    assert "tiny.mp4" in log and "fewer than the 7" in log
    batch = collate_skipping(samples)
    assert batch["num_skipped"] == 4 and batch["target"].shape[0] == 1
    assert collate_skipping([None, None]) is None
    # Through a DataLoader: training sees batches with the good samples only.
    loader = torch.utils.data.DataLoader(stage2, batch_size=5, collate_fn=collate_skipping)
    assert next(iter(loader))["num_skipped"] == 4
    with pytest.raises(ValueError, match="no videos"):
        Stage1Dataset([], 32, processor)
    with pytest.raises(ValueError, match="entry 0"):
        Stage1Dataset([{"video": "x.mp4"}], 32, processor)
    # Stage 1 on the 4-frame video is fine (reference clamped to the farthest frame).
    assert Stage1Dataset(meta[4:], 32, processor, min_gap=30)[0] is not None


def test_decoded_cache_gives_the_same_samples_and_keeps_to_its_budget(tmp_path):
    """data.decode_cache_mb: the same samples as reading the files, bounded memory, bad files still skipped."""
    from marionet.data.synth import generate_dataset
    from marionet.data.video import DecodedCache

    meta = generate_dataset(tmp_path / "ds", videos=3, frames=12, size=32, seed=4)
    plain = Stage1Dataset(meta, 32, None, min_gap=2, seed=1)
    cached = Stage1Dataset(meta, 32, None, min_gap=2, seed=1, decode_cache_mb=64)
    for index in (0, 1, 2, 0):
        a, b = plain[index], cached[index]
        for key in ("target", "pose", "reference"):
            assert torch.equal(a[key], b[key]), key
    assert len(cached.decoded.videos) == 6 and cached.decoded.bytes == 6 * 12 * 32 * 32 * 3

    small = DecodedCache(megabytes=2.5 * 12 * 32 * 32 * 3 / 2 ** 20)  # room for two videos
    paths = sorted((tmp_path / "ds" / "videos").glob("*.mp4"))
    for path in paths:
        small.get(path)
    assert list(small.videos) == [str(p) for p in paths[1:]] and small.bytes <= small.budget
    assert DecodedCache(0).get(paths[0]) == paths[0]  # off: the path itself, read on demand

    (tmp_path / "ds" / "videos" / paths[0].name).write_bytes(b"not a video")
    assert Stage1Dataset(meta, 32, None, min_gap=2, seed=1, decode_cache_mb=64)[0] is None  # skipped, not fatal
