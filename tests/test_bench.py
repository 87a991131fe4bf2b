"""The benchmarks' CPU-side parts: the memory estimator (tiny model, fake vs real tensors), the speed benchmark on a
tiny model, and the GPU acceptance run's plan, wheel list, argument parsing and report writer (the GPU parts themselves run on a GPU machine)."""
from __future__ import annotations

import json

import pytest


def test_fake_tensor_estimate_equals_real_tensors_on_a_tiny_model():
    from marionet.train.memory import TrainCase, track_training

    case = TrainCase(1, 32, 2, precision="fp32")
    fake, real = track_training(case, sd15=False, fake=True), track_training(case, sd15=False, fake=False)
    assert fake.phases.keys() == real.phases.keys() == {"forward+backward", "optimizer step"}
    for phase in fake.phases:
        for category in ("weights", "frozen", "gradients", "optimizer"):
            assert fake.phases[phase][category] == real.phases[phase][category], (phase, category)
        assert abs(fake.phases[phase]["activations"] - real.phases[phase]["activations"]) <= \
            0.01 * real.phases[phase]["activations"] + 4096
    total, split = fake.peak("ddp")
    assert split["phase"] == "optimizer step" and split["optimizer"] > 2 * split["gradients"]  # states + foreach
    eight_bit, _ = fake.peak("adamw8bit")
    assert eight_bit < total and fake.peak("zero2x8")[0] < fake.peak("zero2x4")[0]


def test_docs_tables_are_rewritten_between_their_markers(tmp_path):
    from marionet.train.memory import markdown_tables, update_docs

    report = {"training": [{"label": "stage 1, 512², batch 1", "trainable_m": 1717.7, "tflop_per_sample": 7.55,
                            "options": {o: {"peak_gib": 1.0, "weights": 0.1, "frozen": 0.1, "gradients": 0.1,
                                            "optimizer": 0.1, "activations": 0.1, "phase": "optimizer step"}
                                        for o in ("ddp", "adamw8bit", "zero2x4", "zero2x8", "zero2_offload")}}],
              "inference": []}
    doc = tmp_path / "doc.md"
    doc.write_text("before\n<!-- memory:training -->\nold\n<!-- /memory:training -->\nafter\n")
    assert update_docs(report, [doc]) == [str(doc)]
    text = doc.read_text()
    assert "old" not in text and markdown_tables(report)["training"] in text and text.endswith("after\n")


def test_gpu_run_plan_wheels_and_report(tmp_path, capsys):
    from marionet.cli import main
    from marionet.train import bench_gpu

    kinds = [kind for kind, _ in bench_gpu.plan()]
    assert kinds[0] == "tests" and kinds.count("train") == 3 and kinds.count("render") >= 2
    assert len(bench_gpu.plan(quick=True)) < len(bench_gpu.plan())
    specs = bench_gpu.wheel_specs()
    assert any(s.startswith("diffusers==") for s in specs) and any(s.startswith("omegaconf==") for s in specs)
    results = [{"part": "train", "ok": True, "case": "stage 1, 512², batch 4", "optimizer": "ddp", "s_per_step": 1.0,
                "samples_per_s": 4.0, "mfu": 0.3, "max_allocated_gib": 30.0, "estimate_gib": 31.0},
               {"part": "render", "ok": False, "error": "OutOfMemoryError: ..."}]
    json_path, md_path = bench_gpu.write_report(results, tmp_path / "out")
    assert json.loads(json_path.read_text())["results"][0]["mfu"] == 0.3
    md = md_path.read_text()
    assert "| stage 1, 512², batch 4 | ddp | 1.0 |" in md and "Failed parts: render: OutOfMemoryError" in md
    assert main(["bench", "gpu", "--out", str(tmp_path / "x")]) == 2  # no CUDA here: one clear line
    assert "no CUDA device" in capsys.readouterr().err


def test_speed_benchmark_counts_and_scores_on_a_tiny_model(tmp_path, monkeypatch):
    """`marionet bench speed` on a random tiny model: cached calls cost less than full ones, the per-frame FLOPs
    follow from the counted calls, the reference render scores identical to itself, the doc sections are written."""
    from marionet.data.synth import generate_dataset
    from marionet.inference import bench_speed as B
    from marionet.models.tiny import write_tiny_model

    model = write_tiny_model(tmp_path / "model", with_motion=True)
    data = generate_dataset(tmp_path / "data", videos=1, frames=4, size=32, seed=0)
    counted, original = [], B.call_flops
    monkeypatch.setattr(B, "call_flops", lambda *a, **k: counted.append(original(*a, **k)) or counted[-1])
    # The SD1.5 count runs the same `call_flops` on the meta device (slow here): stand-in per-call figures.
    monkeypatch.setattr(B, "sd15_call_flops", lambda **kwargs: {"full": 4.0, "cached/1": 1.0, "cached/2": 2.0,
                                                                "cached/3": 3.0})
    cached = B._s("ddim-25 cache 3/2", "ddim", 25, 3, 2)
    report = B.run(model, data, [B.REFERENCE, B.BASELINE, cached], videos=1, frames=4, context=4,
                   progress=lambda *a: None)
    counts = counted[0]
    assert counts["cached/1"] < counts["cached/2"] < counts["cached/3"] < counts["full"]
    rows = {r["label"]: r for r in report["rows"]}
    assert rows["ddim-50"]["psnr_vs_ddim50"] == 99.0 and rows["ddim-25"]["flops_vs_ddim25"] == 1.0
    c = rows[cached.label]
    assert c["calls"] == {"full": 9, "cached": 16}  # steps 0, 3, ..., 24 full; one window
    assert c["sd15_tflop_per_frame"] * 1e12 == pytest.approx((9 * 4.0 + 16 * 2.0) / 24)
    assert c["model_gflop_per_frame"] * 1e9 == pytest.approx((9 * counts["full"] + 16 * counts["cached/2"]) / 4)
    assert c["uncached"] == "ddim-25" and 0 < c["psnr_vs_uncached"] <= 99 and c["flops_vs_uncached"] < 1
    doc = tmp_path / "bench.md"
    doc.write_text("<!-- speed:table -->\n<!-- /speed:table -->\n<!-- speed:goals -->\nold\n<!-- /speed:goals -->\n")
    assert B.update_docs(report, [doc]) == [str(doc)]
    text = doc.read_text()
    assert "| ddim-25 cache 3/2 | ddim | 25 | 3/2 |" in text and "old" not in text
