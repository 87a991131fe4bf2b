"""`marionet compare`: the comparison machinery with stand-in methods (exact hand-computed metrics, every artefact,
overwrite rules, meta.json and shard input, the CLI), and the built-in methods on a tiny random model."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from marionet.cli import main as marionet_main
from marionet.inference import metrics as M
from marionet.inference.compare import (Clip, CompareError, build_method, load_clips, parse_method, register_method_kind,
                               run_comparison)

SIZE, FRAMES = 16, 4
LEVELS = (100, 110, 120, 130)  # ground-truth frame t is flat grey LEVELS[t]; the reference is frame 0


class CopyReference:
    """Renders the reference in every frame: no motion at all."""
    name = "copy-ref"

    def render(self, reference, poses, steps, seed):
        return np.repeat(reference[None], len(poses), axis=0)


class NoisyTruth:
    """Ground truth plus a fixed +-8 checkerboard (no clipping: the test images stay inside [8, 247])."""
    name = "noisy-truth"

    def __init__(self, clips):
        self.clips = clips

    def render(self, reference, poses, steps, seed):
        clip = next(c for c in self.clips if np.array_equal(c.reference, reference))
        checker = np.indices(clip.truth.shape[1:3]).sum(axis=0) % 2 * 16 - 8
        return (clip.truth.astype(np.int16) + checker[None, :, :, None]).astype(np.uint8)


def _hand_clips() -> list[Clip]:
    clips = []
    for number, offset in enumerate((0, 40)):
        truth = np.stack([np.full((SIZE, SIZE, 3), level + offset, np.uint8) for level in LEVELS])
        poses = np.zeros_like(truth)
        poses[:, 4:12, 6:10] = 255
        clips.append(Clip(f"video{number}", truth[0].copy(), poses, truth, 12.0, f"hand/{number}", 0))
    return clips


def test_stand_in_methods_give_hand_computed_metrics_and_every_artefact(tmp_path):
    clips = _hand_clips()
    out = tmp_path / "report"
    report = run_comparison(clips, [CopyReference(), NoisyTruth(clips)], out, steps=3, seed=7, progress=False)

    # copy-ref: per-frame error of 0, 10, 20, 30 levels; frame 0 is exact (the 100 dB cap)
    copy_psnr = np.mean([M.PSNR_CAP_DB] + [20 * math.log10(255 / d) for d in (10, 20, 30)])
    noisy_psnr = 20 * math.log10(255 / 8)
    per_video = report["per_video"]
    for clip in clips:
        copy, noisy = per_video[clip.video_id]["copy-ref"], per_video[clip.video_id]["noisy-truth"]
        assert copy["psnr"] == pytest.approx(copy_psnr, abs=1e-9)
        assert noisy["psnr"] == pytest.approx(noisy_psnr, abs=1e-9)
        # copy-ref never moves while the truth brightens by 10 levels a frame
        assert copy["temporal"] == pytest.approx(10 / 255, abs=1e-12)
        assert noisy["temporal"] == pytest.approx(0.0, abs=1e-12)
        assert noisy["psnr_star"] == pytest.approx(noisy_psnr, abs=1e-9)  # |d| < 16: no wrap-around yet
    assert report["methods"]["noisy-truth"]["psnr"] == {"mean": pytest.approx(noisy_psnr), "std": pytest.approx(0.0),
                                                        "n": 2, "ci95": pytest.approx([noisy_psnr, noisy_psnr])}
    assert report["methods"]["copy-ref"]["lpips"]["note"] == "not computed: weights not supplied"
    assert report["methods"]["copy-ref"]["fvd"] == {"value": None, "note": "not computed: weights not supplied"}
    assert report["settings"]["steps"] == 3 and report["settings"]["seed"] == 7
    assert report["software"]["numpy"] == np.__version__

    # the report on disk is the returned report
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["methods"] == json.loads(json.dumps(report["methods"]))
    assert set(on_disk["per_video"]) == {"video0", "video1"}
    markdown = (out / "report.md").read_text()
    # best per column in bold: copy-ref's exact frame 0 (capped at 100 dB) lifts its mean PSNR above noisy-truth's
    assert f"**{copy_psnr:.2f} ± 0.00**" in markdown and f"| {noisy_psnr:.2f} ± 0.00 |" in markdown
    assert "**0.0000 ± 0.0000**" in markdown  # noisy-truth's temporal error
    assert "not computed: weights not supplied" in markdown
    for name in ("plots/metrics.png", "plots/per_video.png"):
        assert (out / name).stat().st_size > 1000
    from PIL import Image

    from marionet.data.video import read_video

    grid = np.asarray(Image.open(out / "grids" / "video0.png"))
    assert grid.shape == (4 * SIZE, 96 + FRAMES * SIZE, 3)  # rows: truth, pose, two methods
    assert np.array_equal(grid[:SIZE, 96:96 + SIZE], clips[0].truth[0])
    video = read_video(out / "videos" / "video1.mp4")
    assert video.shape == (FRAMES, SIZE + 14, 4 * SIZE, 3)  # name strip above truth | pose | two methods
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folders left


def test_ssim_in_the_report_is_the_metric_of_the_rendered_frames(tmp_path):
    clips = _hand_clips()
    method = NoisyTruth(clips)
    report = run_comparison(clips, [method], tmp_path / "r", progress=False)
    for clip in clips:
        expected = M.ssim(method.render(clip.reference, clip.poses, 1, 0), clip.truth)
        assert report["per_video"][clip.video_id]["noisy-truth"]["ssim"] == pytest.approx(expected, abs=1e-12)


def test_existing_report_is_kept_unless_overwrite(tmp_path):
    clips = _hand_clips()
    out = tmp_path / "report"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="--overwrite"):
        run_comparison(clips, [CopyReference()], out, progress=False)
    assert (out / "keep.txt").read_text() == "mine"
    run_comparison(clips, [CopyReference()], out, overwrite=True, progress=False)
    assert (out / "report.json").is_file() and not (out / "keep.txt").exists()


def test_a_failing_method_leaves_nothing_behind(tmp_path):
    class Broken:
        name = "broken"

        def render(self, reference, poses, steps, seed):
            return np.zeros((1, 2, 2), np.float32)

    with pytest.raises(CompareError, match="broken"):
        run_comparison(_hand_clips(), [CopyReference(), Broken()], tmp_path / "r", progress=False)
    assert list(tmp_path.iterdir()) == []


class _FakeI3D(torch.nn.Module):
    """Stand-in for an I3D TorchScript file: features = per-channel means and the frame-to-frame change."""

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False,
                return_features: bool = False) -> torch.Tensor:
        means = x.mean(dim=(2, 3, 4))
        motion = (x[:, :, 1:] - x[:, :, :-1]).abs().mean(dim=(1, 2, 3, 4))[:, None]
        return torch.cat([means, motion], dim=1)


def test_fvd_from_a_local_torchscript_file(tmp_path):
    path = tmp_path / "i3d.pt"
    torch.jit.script(_FakeI3D()).save(str(path))
    clips = _hand_clips()
    report = run_comparison(clips, [CopyReference()], tmp_path / "r", fvd=path, progress=False)
    features = M.load_i3d(path)
    rendered = np.stack([features(CopyReference().render(c.reference, c.poses, 1, 0)) for c in clips])
    truth = np.stack([features(c.truth) for c in clips])
    assert report["methods"]["copy-ref"]["fvd"]["value"] == pytest.approx(M.frechet_distance(rendered, truth))
    assert report["methods"]["copy-ref"]["fvd"]["value"] > 0
    # one video is not enough for a covariance: said, not failed
    single = run_comparison(clips[:1], [CopyReference()], tmp_path / "r1", fvd=path, progress=False)
    assert "at least 2 videos" in single["methods"]["copy-ref"]["fvd"]["note"]


def test_method_spec_grammar(tmp_path):
    spec = parse_method("ours=trained:model=/m,guidance=2.5")
    assert (spec.name, spec.kind, spec.options) == ("ours", "trained", {"model": "/m", "guidance": "2.5"})
    assert parse_method("ours=runs/model").options == {"model": "runs/model"}  # a bare folder means trained
    zs = parse_method("zs=zero-shot:base=/sd,controlnet=/cn,ip_adapter=/ip.bin,image_encoder=/enc")
    assert zs.kind == "zero-shot" and zs.options["ip_adapter"] == "/ip.bin"
    for bad, message in (("noequals", "NAME=SPEC"), ("a b=x", "may only use"),
                         ("x=warp:model=/m", "unknown kind"), ("x=trained:model", "KEY=VALUE")):
        with pytest.raises(CompareError, match=message):
            parse_method(bad)
    with pytest.raises(CompareError, match="missing option 'controlnet'"):
        build_method("zs=zero-shot:base=/sd,ip_adapter=/f,image_encoder=/e")
    with pytest.raises(CompareError, match="unknown option 'guidance'"):
        build_method("p=pose-only:model=/m,guidance=3")
    with pytest.raises(CompareError, match="unknown scheduler 'plms'"):
        build_method("ours=trained:model=/m,scheduler=plms")
    with pytest.raises(CompareError, match="step cache interval"):
        build_method("ours=trained:model=/m,step_cache=0")
    from marionet.models.loading import MissingWeightsError

    with pytest.raises(MissingWeightsError, match="method ours"):
        build_method(f"ours=trained:model={tmp_path / 'absent'}")


@pytest.fixture(scope="module")
def synth_data(tmp_path_factory):
    from marionet.data.synth import generate_dataset

    return generate_dataset(tmp_path_factory.mktemp("synth"), videos=2, frames=6, size=32, seed=0)


def _copy_ref_factory(spec, context):
    method = CopyReference()
    method.name = spec.name
    return method


def test_cli_on_synthetic_data_and_shards(synth_data, tmp_path, capsys):
    from marionet.data.shards import write_shards

    register_method_kind("test-copy-ref", _copy_ref_factory)
    clips = load_clips(synth_data, frames=4, ref_frame=2)
    assert [c.truth.shape for c in clips] == [(4, 32, 32, 3)] * 2
    assert np.array_equal(clips[0].reference, load_clips(synth_data, frames=3)[0].truth[2])  # frame 2
    manifest, _, _ = write_shards(synth_data, tmp_path / "shards")
    from_shards = load_clips(tmp_path / "shards", frames=4, ref_frame=2)
    assert [c.video_id for c in from_shards] == [c.video_id for c in clips]
    assert all(np.array_equal(a.truth, b.truth) and np.array_equal(a.poses, b.poses) for a, b in
               zip(clips, from_shards))

    out = tmp_path / "report"
    args = ["compare", "--data", str(synth_data), "--method", "copy=test-copy-ref:", "--out", str(out),
            "--frames", "4", "--size", "24x16", "--steps", "1", "--videos", "1"]
    assert marionet_main(args) == 0
    printed = capsys.readouterr().out
    assert "copy: PSNR" in printed and str(out) in printed
    report = json.loads((out / "report.json").read_text())
    assert report["videos"][0]["width"] == 24 and report["videos"][0]["height"] == 16
    assert report["settings"]["size"] == [24, 16] and len(report["per_video"]) == 1
    assert marionet_main(args) == 2  # refuses to overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert marionet_main(args + ["--overwrite"]) == 0
    assert marionet_main(["compare", "--data", str(tmp_path / "none.json"), "--method", "a=b", "--out",
                          str(tmp_path / "x")]) == 2
    assert "index file not found" in capsys.readouterr().err
    assert marionet_main(["compare", "--data", str(manifest), "--method", "a=nope:x=1", "--out",
                          str(tmp_path / "y")]) == 2
    assert "unknown kind" in capsys.readouterr().err


def test_builtin_methods_on_a_tiny_model(tmp_path, synth_data):
    """trained / pose-only / zero-shot on a model folder: right shapes, and pose-only ignores the reference."""
    from marionet.models.tiny import write_tiny_model

    model = write_tiny_model(tmp_path / "tiny", with_motion=False, seed=0)
    clip = load_clips(synth_data, videos=1, frames=2)[0]
    other_reference = np.ascontiguousarray(clip.reference[::-1])
    outputs = {}
    for spec in (f"ours=trained:model={model}", f"po=pose-only:model={model}", f"zs=zero-shot:model={model}"):
        method = build_method(spec)
        first = method.render(clip.reference, clip.poses, 2, 0)
        assert first.dtype == np.uint8 and first.shape == clip.truth.shape
        outputs[method.name] = (first, method.render(other_reference, clip.poses, 2, 0))
        assert np.array_equal(method.render(clip.reference, clip.poses, 2, 0), first)  # same seed, same frames
    assert np.array_equal(*outputs["po"])          # the reference is dropped
    assert not np.array_equal(*outputs["ours"])    # ...and it does matter to the trained method


def test_zero_shot_spec_with_source_pose_gets_the_reference_frames_skeleton(tmp_path, synth_data):
    """source_pose=on: the method is handed the skeleton of the reference frame (not of a driving frame)."""
    from marionet.models.tiny import write_tiny_model

    clips = load_clips(synth_data, videos=1, frames=2, ref_frame=4)
    all_poses = load_clips(synth_data, videos=1, frames=6)[0].poses
    assert np.array_equal(clips[0].reference_pose, all_poses[4]) and len(clips[0].poses) == 2
    model = write_tiny_model(tmp_path / "tiny", with_motion=False, seed=0)
    method = build_method(f"zs=zero-shot:model={model},source_pose=on")
    assert method.uses_reference_pose and method.settings["source_pose"] is True
    assert not build_method(f"zs=zero-shot:model={model}").uses_reference_pose  # off unless asked for
    handed = []
    call = method.call
    method.call = lambda pipe, *args, **kw: handed.append(kw["reference_pose"]) or call(pipe, *args, **kw)
    report = run_comparison(clips, [method], tmp_path / "report", steps=1, progress=False)
    assert len(handed) == 1 and np.array_equal(handed[0], all_poses[4])
    assert report["methods"]["zs"]["settings"]["source_pose"] is True
    with pytest.raises(CompareError, match="source_pose must be on or off"):
        build_method(f"zs=zero-shot:model={model},source_pose=maybe")


def test_stock_zero_shot_spec_on_tiny_folders(tmp_path, tiny_parts, synth_data):
    """zero-shot:base=...,controlnet=...,ip_adapter=...,image_encoder=... loads local folders and renders."""
    from test_zero_shot import dummy_ip_adapter_state_dict, tiny_controlnet

    from marionet.models import save_base_folder

    base = save_base_folder({k: tiny_parts[k] for k in ("unet", "vae", "image_encoder", "feature_extractor",
                                                        "scheduler")}, tmp_path / "sd15")
    tiny_controlnet(tiny_parts["unet"]).save_pretrained(tmp_path / "controlnet")
    torch.save(dummy_ip_adapter_state_dict(tiny_parts["unet"]), tmp_path / "ip.bin")
    method = build_method(f"zs=zero-shot:base={base},controlnet={tmp_path / 'controlnet'},"
                          f"ip_adapter={tmp_path / 'ip.bin'},image_encoder={base / 'image_encoder'}")
    assert method.settings["backbone"] == "sd15"
    clip = load_clips(synth_data, videos=1, frames=2)[0]
    first = method.render(clip.reference, clip.poses, 1, 0)
    assert first.dtype == np.uint8 and first.shape == clip.truth.shape
    assert np.array_equal(method.render(clip.reference, clip.poses, 1, 0), first)
    assert not np.array_equal(method.render(np.ascontiguousarray(clip.reference[::-1]), clip.poses, 1, 0), first)


def test_intervals_and_paired_claims_by_hand():
    from marionet.inference.report import Claim, check_claims, ci95, claims_table

    low, high = ci95([1.0, 2.0, 3.0])  # mean 2, sample std 1, t(2) = 4.303
    assert (low, high) == (pytest.approx(2 - 4.303 / 3 ** 0.5), pytest.approx(2 + 4.303 / 3 ** 0.5))
    assert ci95([5.0]) is None
    # a beats b by 1 dB on every video: holds however large the spread between videos; c vs b alternates
    per_video = {f"v{i}": {"a": {"psnr": 10.0 + 3 * i + 1, "temporal": 0.1}, "b": {"psnr": 10.0 + 3 * i,
                                                                                   "temporal": 0.2},
                           "c": {"psnr": 10.0 + 3 * i + (1 if i % 2 else -1), "temporal": 0.1}} for i in range(6)}
    claims = [Claim("a", "b", "psnr"), Claim("c", "b", "psnr"), Claim("a", "b", "temporal"),
              Claim("b", "a", "psnr", margin=-0.5)]
    results = check_claims(per_video, claims)
    assert [r["holds"] for r in results] == [True, False, True, False]
    assert results[0]["mean_difference"] == pytest.approx(1.0) and results[0]["ci95"] == pytest.approx([1.0, 1.0])
    assert results[2]["mean_difference"] == pytest.approx(0.1)  # lower is better: sign flipped
    table = claims_table({"claims": results})
    assert "| a > b on PSNR (dB) | 6 | +1.00 | [1.00, 1.00] | yes |" in table and "**no**" in table
    with pytest.raises(CompareError, match="not compared: x"):
        run_comparison(_hand_clips(), [CopyReference()], "/nonexistent/r", claims=[Claim("x", "copy-ref", "psnr")],
                       progress=False)
