"""`marionet demo`: the one-command, offline, CPU-only proof that the system learns.

1. synthetic puppet videos: a training set, a validation set and a held-out set (three seeds: unseen puppets, unseen
   motions);
2. tiny components; "stage 0" fits the tiny autoencoder to puppet frames (SD1.5 users never need this);
3. stage 1, the stock model and stage 2, trained through the same training core and config mechanism as
   train/stage1.py and train/stage2.py (configs/tiny/*.yaml plus overrides), with checkpoints and TensorBoard logs.
   The stock model is stage 1 without a ReferenceNet (`model.reference_net=false`): pose + CLIP token only, the
   stand-in for SD1.5 + ControlNet + IP-Adapter that the zero-shot method is meant for;
4. `compare` on the held-out set (`score="validation"`: on the validation set, where every setting was chosen):
   trained-stage2, trained-stage1, zero-shot (the attention swap on the stock model), stock, pose-only;
5. prints the table with 95% intervals, the claimed orderings, the elapsed time per phase and where the report is.

The sizes below were chosen so that learning happens inside the time budget on 2 CPU cores; docs/benchmarks.md
records the measured numbers for these choices.
"""
from __future__ import annotations

import dataclasses
import json
import os
import platform
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .compare import parse_on_off
from .zero_shot import ZeroShotOptions, parse_swap_steps


@dataclass
class DemoSettings:
    size: int = 64                       # frame size in pixels (square)
    train_videos: int = 32
    train_frames: int = 48
    heldout_videos: int = 24             # scored only: no choice (settings, checkpoints) is made on them
    heldout_frames: int = 24
    validation_videos: int = 36          # puppets of their own: every setting was chosen on them (score=
                                         # "validation" scores all of them); training validation renders the first
                                         # two. 12 gave intervals too wide to choose by (+-0.5-1 dB paired)
    # stage 0: tiny autoencoder (4x downsampling -> 16x16 latents at 64 px)
    vae_channels: tuple = (16, 32, 32)
    vae_norm_groups: int = 4             # 4 channels per group: per-channel GroupNorm would erase colour
    vae_steps: int = 2000
    vae_batch: int = 16
    vae_crop: int = 32                   # trains on random crops: the network is convolutional
    # tiny UNet / CLIP / Pose Guider (factor 4, like the VAE)
    unet_channels: tuple = (32, 64)
    norm_num_groups: int = 8             # UNet and motion modules: 4 channels per group at the first width
    pose_guider_channels: tuple = (8, 16, 32)
    # Heads per UNet attention (ReferenceNet and denoising UNet alike; same weights, only the split changes): 2, i.e.
    # 16 and 32 channels per head. CPU attention cost grows with the heads at a fixed width (one softmax per head):
    # fwd+bwd of a 256-token self-attention at batch 8 takes 19 ms with 8 heads, 3 with 2. With 8 (the runs before
    # the twelfth session) a held-out run took 1115 s on the 2-core AVX-512 EPYC, over the 15-minute budget.
    unet_attention_heads: int = 2
    # stage 1 (frames) and stage 2 (clips, motion modules only). 1000 steps, not 800: with 2 heads the stronger
    # zero-shot swap had squeezed stage 1's PSNR lead (validation, 36 puppets: +0.07 dB [-0.17, 0.30] at 800); at 1000
    # +0.65 [0.40, 0.90] and 10/10 orderings (AVX-512 EPYC, 2 threads; docs/benchmarks.md, twelfth session).
    stage1_steps: int = 1000
    stage1_batch: int = 8
    # Stage 1 fine-tunes the stock model, so at a lower rate than the stock model trains from scratch: on the
    # validation puppets 2e-4 beat 5e-4 (stage 1 vs zero-shot +0.43 dB [0.12, 0.75] vs -0.15 [-0.57, 0.27]).
    stage1_lr: float = 2e-4
    # The usual 0.1 (stage 1 and stock): on the validation puppets it beat 0.3 for every trained method (stage 2
    # +0.79 dB, stock +0.87 dB); 0.3 was needed only while zero-shot ran on stage 1's unconditional path.
    reference_dropout: float = 0.1
    stock_steps: int = 800               # the stock model: stage 1's recipe without the ReferenceNet
    stock_lr: float = 5e-4
    # Where stage 1 starts: "stock" (the stock model's UNet becomes both UNets and its Pose Guider is kept, as Animate
    # Anyone starts from SD1.5 and a pose encoder) or "base" (the untrained tiny UNet, a new Pose Guider).
    stage1_init: str = "stock"
    # 300, not 150: on 36 validation puppets stage 2's temporal error fell below stage 1's (+0.0010 [0.0001, 0.0018])
    # and it kept +0.26 dB [0.02, 0.51] over stage 1 on PSNR; at 150 the temporal errors were level.
    stage2_steps: int = 300
    stage2_batch: int = 2
    stage2_frames: int = 8
    stage2_frame_stride: int = 2         # stage 2 clips take every n-th frame; 1 (the rate compare scores at) did
                                         # not change stage 2 on validation (-0.05 dB, temporal error +0.0002)
    # 2e-3, not 5e-4: on the 36 validation puppets (stage 2 retrained on the same stage 1, three arithmetics: native
    # 2 and 1 threads, AVX2-pinned 1 thread) stage 2's temporal lead over stage 1 rose from +0.0009 / +0.0004 /
    # +0.0008 (the 1-thread interval across zero) to +0.0018 / +0.0019 / +0.0015, and its PSNR stayed within
    # -0.14 dB (lower bounds) of stage 1's; 1e-3 lay between (docs/benchmarks.md, twelfth session).
    stage2_lr: float = 2e-3
    frame_noise_correlation: float = 1.0  # stage 2 noise prior: frames share their noise, as the image model's do
    lr_scheduler: str = "constant"       # stages 1, stock, 2 (diffusers get_scheduler name)
    # EMA of the trained weights (what is exported; 0: none), stock model and stages 1 and 2. diffusers' EMAModel
    # caps the decay at (1 + t) / (10 + t): 0.989 at step 800, 0.971 at step 300. On the 36 validation puppets at 2
    # threads on Intel AVX-512: 10/10 orderings (without it 9/10: stage 1 vs zero-shot +0.14 dB [-0.19, 0.47], with
    # it +0.42 [0.11, 0.73]; without EMA on stage 2, stage 2 fell 0.19 dB below stage 1). At 1 thread: 7/10 (the PSNR
    # leads over zero-shot level); on an AMD AVX2 box 8/10 (zero-shot vs stock on SSIM level, stage 2 0.17 dB below
    # stage 1), see docs/benchmarks.md.
    ema_decay: float = 0.995
    # comparison
    compare_videos: int = 24             # held-out videos scored (validation: all of them); more videos with fewer
                                         # frames: the intervals are over videos
    compare_frames: int = 8
    inference_steps: int = 20
    guidance: float = 3.5                # every method but pose-only: trained over the reference, stock over its CLIP
                                         # token, zero-shot as the stock model it runs on (unconditional rows: no token,
                                         # no swap); validation: zero-shot at 3.5 beat its 1.0 by 0.05-1.0 dB
    # zero-shot: the source pass sees the reference frame's own skeleton (as the stock model saw a pose with every
    # image in training); chosen on the validation puppets (docs/benchmarks.md, "How the settings were chosen").
    zero_shot_source_pose: bool = True
    # zero-shot swaps in the noisiest 75% of the steps only (the study swaps in every step: "0:1"). Chosen on the
    # validation puppets with the stock models of four arithmetics (AVX-512 and AVX2 EPYC, 1 and 2 threads): zero-shot
    # over stock on SSIM held on 3 of 4 (every step: 1 of 4), the swap's SSIM gain rising on all four, for 0.1-0.2 dB
    # of zero-shot's PSNR; 0:0.5 also 3 of 4 at up to 0.5 dB; 0.5:1 worse everywhere (docs/benchmarks.md).
    zero_shot_swap_steps: str = "0:0.75"
    score: str = "heldout"               # "heldout" (the report) or "validation" (choosing settings)
    seed: int = 0
    # torch's CPU threads for the whole run: the thread count changes the arithmetic (summation order), and at this
    # scale that trains different models; a fixed count gives the same figures wherever the CPU is the same kind.
    torch_threads: int = 2


def parse_settings(items) -> dict:
    """`--set KEY=VALUE` items -> DemoSettings overrides, each value of its field's type (tuples: comma-separated
    ints, booleans: on/off); ValueError naming the item otherwise."""
    defaults = DemoSettings()
    names = [f.name for f in dataclasses.fields(DemoSettings)]
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in names:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE with KEY one of {', '.join(names)}")
        default = getattr(defaults, key)
        try:
            if isinstance(default, bool):
                overrides[key] = parse_on_off(value)
            elif isinstance(default, tuple):
                overrides[key] = tuple(int(v) for v in value.split(","))
            else:
                overrides[key] = type(default)(value)
        except ValueError:
            kind = "on/off" if isinstance(default, bool) else type(default).__name__
            raise ValueError(f"--set {item!r}: {value!r} is not a valid {kind}") from None
    return overrides


QUICK = dict(train_videos=4, train_frames=24, heldout_videos=2, heldout_frames=12, validation_videos=2, vae_steps=30,
             stage1_steps=10, stage1_batch=2, stock_steps=10, stage2_steps=4, stage2_batch=1, stage2_frames=4,
             compare_videos=2, compare_frames=4, inference_steps=3)

METHOD_ORDER = ("trained-stage2", "trained-stage1", "zero-shot", "stock", "pose-only")


# Each phase's share of a full run's time (data, stage 0, stock, stage 1, stage 2, compare), for the ETA printed after
# each phase: measured on a 2-core AMD EPYC (AVX-512) with 2 threads, 540 s in all (docs/benchmarks.md).
PHASE_SHARES = (0.01, 0.14, 0.15, 0.33, 0.17, 0.20)


class PhaseClock:
    """Elapsed time per phase, printed as each one ends, with an ETA for the rest from PHASE_SHARES."""

    def __init__(self, shares=PHASE_SHARES):
        self.phases: dict[str, float] = {}
        self.shares = shares
        self._start = time.perf_counter()

    def run(self, name: str, work):
        print(f"\n== {name} ==", flush=True)
        start = time.perf_counter()
        result = work()
        self.phases[name] = round(time.perf_counter() - start, 1)
        done = sum(self.shares[:len(self.phases)])
        left = sum(self.shares[len(self.phases):])
        eta = f"; about {self.total * left / done:.0f} s to go" if left and done else ""
        print(f"-- {name}: {self.phases[name]:.1f} s (total {self.total:.0f} s{eta})", flush=True)
        return result

    @property
    def total(self) -> float:
        return round(time.perf_counter() - self._start, 1)


def make_data(settings: DemoSettings, out: Path) -> tuple[Path, Path, Path]:
    """Training, validation and held-out puppets (three seeds: no puppet or motion in two sets)."""
    from ..data.synth import generate_dataset

    train = generate_dataset(out / "data" / "train", settings.train_videos, settings.train_frames, settings.size,
                             seed=settings.seed)
    validation = generate_dataset(out / "data" / "validation", settings.validation_videos, settings.heldout_frames,
                                  settings.size, seed=settings.seed + 2000)
    heldout = generate_dataset(out / "data" / "heldout", settings.heldout_videos, settings.heldout_frames,
                               settings.size, seed=settings.seed + 1000)
    return Path(train), Path(validation), Path(heldout)


def load_frames(meta: Path, every: int = 1):
    import numpy as np

    from ..data.index import load_index
    from ..data.video import read_video

    return np.concatenate([read_video(entry["video_path"])[::every] for entry in load_index(meta)])


def make_base(settings: DemoSettings, train_meta: Path, validation_meta: Path, out: Path) -> dict:
    """Tiny base folder in the SD1.5 layout, with an autoencoder fitted to the puppets (stage 0)."""
    import torch
    from diffusers import AutoencoderKL

    from ..models.tiny import build_tiny_components, save_base_folder, tiny_vae_config
    from ..train.autoencoder import fit_autoencoder, reconstruction_psnr, set_latent_scaling

    parts = build_tiny_components(seed=settings.seed, with_motion=True, unet_channels=settings.unet_channels,
                                  vae_channels=settings.vae_channels, norm_num_groups=settings.norm_num_groups,
                                  pose_guider_channels=settings.pose_guider_channels,
                                  attention_heads=settings.unet_attention_heads)
    parts.pop("pose_guider")  # stage 1 builds it from model.pose_guider_channels
    torch.manual_seed(settings.seed)
    # No attention in the autoencoder's mid block: purely convolutional, so it can train on crops.
    vae = AutoencoderKL(**tiny_vae_config(settings.vae_channels, settings.vae_norm_groups,
                                          mid_block_attention=False))
    frames = load_frames(train_meta)
    losses = fit_autoencoder(vae, frames, steps=settings.vae_steps, batch_size=settings.vae_batch, lr=3e-3,
                             seed=settings.seed, crop_size=settings.vae_crop)
    scaling = set_latent_scaling(vae, frames[::5])
    psnr = reconstruction_psnr(vae, load_frames(validation_meta))
    print(f"stage 0: autoencoder reconstruction PSNR on validation frames: {psnr:.2f} dB "
          f"({len(losses)} steps, latent scaling factor {scaling:.3f})")
    parts["vae"] = vae
    base = out / "base"
    save_base_folder(parts, base)
    return {"reconstruction_psnr_db": round(psnr, 2), "steps": len(losses), "scaling_factor": round(scaling, 4),
            "final_loss": round(losses[-1], 4)}


def train_stage(stage: int, settings: DemoSettings, out: Path, train_meta: Path, validation_meta: Path,
                stock: bool = False):
    """Stage 1 or 2 through the training core (`stock`: stage 1 without a ReferenceNet, into OUT/stock)."""
    from ..train.config import load_config
    from ..train.core import run

    folder = "stock" if stock else f"stage{stage}"
    common = [
        f"output_dir={out / folder}", f"seed={settings.seed}", "tiny.enabled=false",
        f"model.base_model={out / 'base'}", f"data.meta={train_meta}", f"data.validation_meta={validation_meta}",
        f"data.image_size={settings.size}", "data.synthetic_videos=0", "log_every=25", "validation.num_samples=2",
        f"optim.lr_scheduler={settings.lr_scheduler}", "data.decode_cache_mb=256",  # the puppets: ~20 MB decoded
    ]
    if settings.ema_decay > 0:
        common += ["optim.use_ema=true", f"optim.ema_decay={settings.ema_decay}"]
    if stage == 1:
        steps, lr = (settings.stock_steps, settings.stock_lr) if stock else (settings.stage1_steps, settings.stage1_lr)
        overrides = common + [
            f"model.pose_guider_channels=[{','.join(map(str, settings.pose_guider_channels))}]",
            f"model.reference_net={'false' if stock else 'true'}",
            f"optim.train_batch_size={settings.stage1_batch}", f"optim.learning_rate={lr}",
            f"optim.max_train_steps={steps}", f"checkpoint.checkpointing_steps={max(1, steps // 2)}",
            f"validation.validation_steps={steps}", "data.min_gap=8",
            f"noise.reference_dropout={settings.reference_dropout}",
        ]
        if not stock and settings.stage1_init == "stock":
            overrides.append(f"model.init_model={out / 'stock' / 'model'}")
    else:
        overrides = common + [
            f"model.stage1_model={out / 'stage1' / 'model'}", f"model.motion_module={out / 'base' / 'motion_adapter'}",
            f"optim.train_batch_size={settings.stage2_batch}", f"optim.learning_rate={settings.stage2_lr}",
            f"optim.max_train_steps={settings.stage2_steps}", f"data.n_frames={settings.stage2_frames}",
            f"data.frame_stride={settings.stage2_frame_stride}",
            f"validation.frames={settings.stage2_frames}",
            f"noise.frame_noise_correlation={settings.frame_noise_correlation}",
            f"checkpoint.checkpointing_steps={max(1, settings.stage2_steps // 2)}",
            f"validation.validation_steps={settings.stage2_steps}",
        ]
    config = load_config(f"tiny/stage{stage}.yaml", overrides)  # the shipped tiny config
    result = run(config)
    losses = list(result.losses.values())
    window = max(1, len(losses) // 10)
    first, last = sum(losses[:window]) / window, sum(losses[-window:]) / window
    print(f"{folder}: mean loss of the first {window} steps {first:.4f} -> last {window} steps {last:.4f}")
    return {"model": str(result.model_dir), "loss_first": round(first, 4), "loss_last": round(last, 4),
            "steps": len(losses)}


# What each method stands for (one line per method in the report and the README).
METHOD_LABELS = {
    "trained-stage2": "trained-stage2 (ReferenceNet + motion modules: the method, video)",
    "trained-stage1": "trained-stage1 (ReferenceNet, frame by frame)",
    "zero-shot": "zero-shot (attention swap on the stock model, source pass posed with the reference's skeleton: "
                 "the training-free baseline)",
    "stock": "stock (pose + CLIP token, no ReferenceNet: stands for SD1.5 + ControlNet + IP-Adapter)",
    "pose-only": "pose-only (the stock model without its CLIP token: no appearance; the floor)",
}


def method_labels(settings: dict) -> dict:
    """METHOD_LABELS for a run's settings (demo.json's): says where stage 1 started and in which steps zero-shot
    swaps (runs made before the setting existed swapped in all of them)."""
    labels = dict(METHOD_LABELS)
    start, end = parse_swap_steps(settings.get("zero_shot_swap_steps", "0:1"))
    if (start, end) != (0.0, 1.0):
        span = f"the noisiest {end:.0%} of the steps" if start == 0 else f"{start:.0%} to {end:.0%} of the steps"
        labels["zero-shot"] = labels["zero-shot"].replace("attention swap on the stock model",
                                                          f"attention swap on the stock model in {span}")
    if settings.get("stage1_init") == "stock":
        labels["trained-stage1"] = ("trained-stage1 (ReferenceNet, frame by frame; fine-tuned from the stock model, "
                                    "as the method is from SD1.5)")
    return labels


def demo_claims():
    """The orderings the demo is run to show, each tested on paired per-video differences (95% interval)."""
    from .report import Claim

    claims = [Claim(a, b, metric) for a, b in (("trained-stage2", "zero-shot"), ("trained-stage1", "zero-shot"),
                                               ("zero-shot", "stock"), ("stock", "pose-only"))
              for metric in ("psnr", "ssim")]
    claims.append(Claim("trained-stage2", "trained-stage1", "temporal"))
    claims.append(Claim("trained-stage2", "trained-stage1", "psnr", margin=-0.2))  # loses at most 0.2 dB
    return claims


def compare(settings: DemoSettings, out: Path, meta: Path) -> dict:
    from .compare import run_comparison

    stage1, stage2, stock = (out / name / "model" for name in ("stage1", "stage2", "stock"))
    g = settings.guidance
    methods = [f"trained-stage2=trained:model={stage2},guidance={g}",
               f"trained-stage1=trained:model={stage1},guidance={g}",
               f"zero-shot=zero-shot:model={stock},guidance={g},"
               f"source_pose={'on' if settings.zero_shot_source_pose else 'off'},"
               f"swap_steps={settings.zero_shot_swap_steps}",
               f"stock=trained:model={stock},guidance={g}",
               f"pose-only=pose-only:model={stock}"]
    videos = settings.compare_videos if settings.score == "heldout" else settings.validation_videos
    return run_comparison(meta, methods, out / "report", videos=videos,
                          frames=settings.compare_frames, steps=settings.inference_steps, seed=settings.seed,
                          overwrite=True, claims=demo_claims())


# Environment variables that pin the math libraries' code paths (read when torch starts): oneDNN's instruction set
# and MKL's reproducibility branch. torch's own (ATEN_CPU_CAPABILITY) shows in get_cpu_capability().
MATH_PINS = ("ONEDNN_MAX_CPU_ISA", "MKL_CBWR")


def cpu_description() -> str:
    """The CPU's model name, the vector unit torch dispatches to and any math-library pins, e.g. 'AMD EPYC (AVX2)' or
    'AMD EPYC (AVX2; ONEDNN_MAX_CPU_ISA=AVX2)': what changes the arithmetic between machines."""
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.partition(":")[2].strip()
                break
    except OSError:
        pass
    pins = "".join(f"; {key}={os.environ[key]}" for key in MATH_PINS if os.environ.get(key))
    return f"{name} ({torch.backends.cpu.get_cpu_capability()}{pins})"


def _run_line(report: dict, summary: dict) -> str:
    s = report["settings"]
    scored = summary.get("settings", {}).get("score", "heldout").replace("heldout", "held-out")
    cpu = f"{summary['cpu']}, " if summary.get("cpu") else ""
    return (f"{s['videos']} {scored} videos x {s['frames']} frames, {s['steps']} DDIM steps, seed {s['seed']}; "
            f"{cpu}{summary.get('cpu_threads', '?')} CPU cores, {summary.get('torch_threads', '?')} torch thread(s), "
            f"torch {report['software'].get('torch')}, {summary.get('total_s', '?')} s in all")


def _load_run(demo_dir: Path) -> tuple[dict, dict]:
    report = json.loads((demo_dir / "report" / "report.json").read_text())
    summary = json.loads((demo_dir / "demo.json").read_text()) if (demo_dir / "demo.json").is_file() else {}
    return report, summary


def spread(runs: list[tuple[dict, dict]], metrics=("psnr", "ssim", "temporal")) -> str:
    """How far the runs' per-method means moved (max - min over runs, worst method), and which claims held in all."""
    reports = [r for r, _ in runs]
    moved = {m: max(max(r["methods"][name][m]["mean"] for r in reports) - min(r["methods"][name][m]["mean"]
                                                                          for r in reports)
                    for name in reports[0]["methods"]) for m in metrics}
    held = [c["claim"] for c in reports[0].get("claims", [])
            if all(next((d for d in r.get("claims", []) if d["claim"] == c["claim"]), {}).get("holds") for r in reports)]
    total = len(reports[0].get("claims", []))
    lines = [f"Spread over {len(runs)} separate runs (" + "; ".join(f"run {i + 1}: {_run_line(r, s)}" for i, (r, s)
                                                                  in enumerate(runs)) + "): a "
             f"method's mean moved by at most {moved['psnr']:.2f} dB PSNR, {moved['ssim']:.4f} SSIM and "
             f"{moved['temporal']:.4f} temporal error between runs; {len(held)} of {total} claimed orderings held in "
             "every run" + (": " + "; ".join(held) if held else "") + "."]
    return "\n".join(lines)


def archive_runs(runs: list[tuple[dict, dict]], folder) -> Path:
    """Keep the runs a README section was made from: FOLDER/run<i>/report/report.json and demo.json, a demo folder's
    layout, so `--update-readme --from FOLDER/run1 --from FOLDER/run2 ...` remakes the section from the repository
    alone (and later runs can be set beside them). The folder is replaced as a whole, atomically."""
    from ..atomic import atomic_folder

    with atomic_folder(folder) as temp:
        for i, (report, summary) in enumerate(runs, 1):
            (temp / f"run{i}" / "report").mkdir(parents=True)
            (temp / f"run{i}" / "report" / "report.json").write_text(json.dumps(report, indent=1) + "\n")
            if summary:
                (temp / f"run{i}" / "demo.json").write_text(json.dumps(summary, indent=2) + "\n")
    return Path(folder)


def update_readme(demo_dirs, files=("README.md", "docs/benchmarks.md"), grid="docs/images/demo_grid.png",
                  archive="docs/demo_runs") -> list[str]:
    """Write the README's demo section (table with 95% intervals, claimed orderings, run line, and the spread over
    all given runs) and the grid, from the first run's report.json; nothing in it is typed by hand. The runs'
    report.json and demo.json are kept under `archive` (None: not kept), in the order given."""
    from ..atomic import atomic_path
    from ..markers import replace_marked
    from .report import claims_table, summary_table

    demo_dirs = [Path(d) for d in ([demo_dirs] if isinstance(demo_dirs, (str, Path)) else demo_dirs)]
    runs = [_load_run(d) for d in demo_dirs]  # all read before the archive (which may be among them) is replaced
    report, summary = runs[0]
    labels = method_labels(summary.get("settings", {}))
    section = (f"Run: {_run_line(report, summary)}. Each figure: mean over the held-out videos and its 95% interval "
               "(Student's t).\n\n" + summary_table(report, labels=labels) + "\n\nThe orderings the demo "
               "claims, on paired per-video differences (better minus worse, in the metric's good direction):\n\n"
               + claims_table(report))
    if len(runs) > 1:
        section += "\n\n" + spread(runs)
    changed = replace_marked(files, {"table": section}, "demo")
    grids = sorted((demo_dirs[0] / "report" / "grids").glob("*.png"))
    if grids and Path(grid).parent.is_dir():
        with atomic_path(Path(grid)) as temp:
            shutil.copyfile(grids[0], temp)
        changed.append(str(grid))
    if archive is not None and Path(archive).parent.is_dir():
        changed.append(str(archive_runs(runs, archive)) + "/")
    return changed


def run_demo(out_dir, quick: bool = False, overwrite: bool = False, **overrides) -> dict:
    """Run every phase; returns a summary (also written to OUT/demo.json)."""
    from ..errors import UserError

    out = Path(out_dir)
    settings = DemoSettings(**{**(QUICK if quick else {}), **overrides})
    if settings.score not in ("heldout", "validation"):
        raise UserError(f"score must be heldout or validation, got {settings.score!r}")
    if settings.stage1_init not in ("stock", "base"):
        raise UserError(f"stage1_init must be stock or base, got {settings.stage1_init!r}")
    try:
        ZeroShotOptions(swap_steps=parse_swap_steps(settings.zero_shot_swap_steps)).validate()
    except ValueError as error:
        raise UserError(f"zero_shot_swap_steps: {error}") from None
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise UserError(f"{out} exists and is not empty (use --overwrite to replace it)")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(settings.torch_threads)
    try:
        return _run_phases(settings, out, quick)
    finally:
        torch.set_num_threads(threads)


def _run_phases(settings: DemoSettings, out: Path, quick: bool) -> dict:
    clock = PhaseClock()
    train_meta, validation_meta, heldout_meta = clock.run("data: synthetic puppets", lambda: make_data(settings, out))
    stage0 = clock.run("stage 0: tiny autoencoder", lambda: make_base(settings, train_meta, validation_meta, out))
    stock = clock.run("stock model: Pose Guider + CLIP token, no ReferenceNet",
                      lambda: train_stage(1, settings, out, train_meta, validation_meta, stock=True))
    stage1 = clock.run("stage 1: ReferenceNet + denoising UNet + Pose Guider"
                       + (", from the stock model" if settings.stage1_init == "stock" else ""),
                       lambda: train_stage(1, settings, out, train_meta, validation_meta))
    stage2 = clock.run("stage 2: motion modules", lambda: train_stage(2, settings, out, train_meta, validation_meta))
    scored = heldout_meta if settings.score == "heldout" else validation_meta
    report = clock.run(f"compare on {settings.score} puppets", lambda: compare(settings, out, scored))

    summary = {"settings": dataclasses.asdict(settings), "quick": quick, "stage0": stage0, "stage1": stage1,
               "stock": stock, "stage2": stage2, "phases_s": clock.phases, "total_s": clock.total,
               "report": str(out / "report" / "report.md"), "cpu": cpu_description(), "cpu_threads": os.cpu_count(),
               "torch_threads": torch.get_num_threads(),
               "results": {name: {metric: report["methods"][name][metric]["mean"]
                                  for metric in ("psnr", "ssim", "temporal")} for name in report["methods"]},
               "claims": report["claims"]}
    (out / "demo.json").write_text(json.dumps(summary, indent=2) + "\n")
    print("\n" + (out / "report" / "report.md").read_text())
    print("elapsed per phase: " + ", ".join(f"{k} {v:.0f} s" for k, v in clock.phases.items())
          + f"; total {clock.total:.0f} s")
    print(f"report: {out / 'report' / 'report.md'}\nsummary: {out / 'demo.json'}")
    return summary
