"""Multi-process training on CPU: DDP gradient equality (2 processes, gloo) and a DeepSpeed ZeRO-2 smoke run.

Both start real `accelerate launch` processes, so they are marked slow; they stay in the default run.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

# One training step's gradient on a fixed batch of 4, each process taking its contiguous share of the rows.
# With one process it sees all 4 rows; with two, 2 rows each and DDP averages the gradients.
PROBE = r'''
import sys
import torch
from accelerate import Accelerator

sys.path.insert(0, sys.argv[2])
from marionet.models import build_tiny_components
from tests.conftest import make_animator, randomize_
from marionet.train.config import NoiseConfig
from marionet.train.core import diffusion_loss, make_training_scheduler

accelerator = Accelerator(cpu=not torch.cuda.is_available())
parts = build_tiny_components(seed=0)
animator = make_animator(parts)
randomize_(animator.pose_guider)
scheduler = make_training_scheduler(parts["scheduler"].config, NoiseConfig())
gen = torch.Generator().manual_seed(0)
batch = 4
inputs = {"latents": torch.randn(batch, 4, 4, 4, generator=gen),
          "ref_latents": torch.randn(batch, 4, 4, 4, generator=gen),
          "image_embeds": torch.randn(batch, 1, 32, generator=gen),
          "pose_images": torch.rand(batch, 3, 32, 32, generator=gen)}
noise = torch.randn(batch, 4, 4, 4, generator=gen)
timesteps = torch.tensor([10, 400, 700, 990])
dropped = torch.tensor([False, True, False, False])
share = batch // accelerator.num_processes
rows = slice(accelerator.process_index * share, (accelerator.process_index + 1) * share)
model = accelerator.prepare(animator)
loss, _ = diffusion_loss(model, {k: v[rows] for k, v in inputs.items()}, noise[rows], timesteps[rows],
                         dropped[rows], scheduler, NoiseConfig())
accelerator.backward(loss)
if accelerator.is_main_process:
    grads = {n: p.grad.detach().clone() for n, p in accelerator.unwrap_model(model).named_parameters()
             if p.grad is not None}
    torch.save(grads, sys.argv[1])
accelerator.wait_for_everyone()
'''


def launch(args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1", "--mixed_precision", "no",
               "--dynamo_backend", "no", *args]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.mark.slow
def test_two_process_ddp_gradient_equals_one_process_on_the_whole_batch(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    launch(["--multi_gpu", "--num_processes", "2", str(probe), str(tmp_path / "ddp.pt"), str(REPO)])
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    single = subprocess.run([sys.executable, str(probe), str(tmp_path / "one.pt"), str(REPO)], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    ddp, one = torch.load(tmp_path / "ddp.pt"), torch.load(tmp_path / "one.pt")
    assert ddp.keys() == one.keys() and len(one) > 100
    assert any(name.startswith("reference_unet.") for name in one)  # the ReferenceNet learns through the bank
    # The reduction order differs between one process and two (all-reduce), so gradients agree to float rounding,
    # which matters for parameters whose true gradient is ~0 (a conv bias right before a one-channel-per-group
    # GroupNorm): compare each tensor with a floor set by the whole gradient's size. A wrong averaging (a sum
    # instead of a mean, a missing share) is off by O(1) everywhere.
    scale = torch.cat([g.flatten() for g in one.values()]).norm()
    for name in one:
        error = (ddp[name] - one[name]).norm()
        assert error <= 1e-4 * one[name].norm() + 1e-6 * scale, f"{name}: error {error:.2e}, norm {one[name].norm():.2e}"
    total = torch.cat([g.flatten() for g in one.values()])
    assert total.abs().max() > 0


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="deepspeed is not installed")
def test_deepspeed_zero2_one_process_runs_tiny_stage1(tmp_path):
    from marionet.data.synth import generate_dataset

    meta = generate_dataset(tmp_path / "data", 3, 16, 32, 0)
    out = tmp_path / "run"
    result = launch(["--use_deepspeed", "--zero_stage", "2", "--num_processes", "1", "train/stage1.py",
                     "--config", "configs/tiny/stage1.yaml", f"output_dir={out}", f"model.base_model={tmp_path / 'base'}",
                     f"data.meta={meta}", "data.image_size=32", "data.min_gap=4", "optim.max_train_steps=2",
                     "checkpoint.checkpointing_steps=2", "validation.num_samples=0", "report_to=none"])
    assert (out / "checkpoint-2" / "pytorch_model").is_dir(), "not a DeepSpeed checkpoint: " + result.stdout[-2000:]
    assert (out / "model" / "model_index.json").is_file()


@pytest.mark.slow
def test_two_process_run_takes_the_lock_once_and_resumes_from_a_verified_checkpoint(tmp_path):
    """One run launched as 2 processes (gloo): only the main process locks output_dir, both agree on the checkpoint
    that resuming verified, and the run finishes and exports."""
    from marionet.data.synth import generate_dataset
    from marionet.train.checkpoints import verify_checkpoint

    meta = generate_dataset(tmp_path / "data", 4, 16, 32, 0)
    out = tmp_path / "run"
    common = ["--multi_gpu", "--num_processes", "2", "train/stage1.py", "--config", "configs/tiny/stage1.yaml", f"output_dir={out}",
              f"model.base_model={tmp_path / 'base'}", f"data.meta={meta}", "data.image_size=32", "data.min_gap=4",
              "optim.train_batch_size=1", "optim.max_train_steps=3", "checkpoint.checkpointing_steps=2",
              "validation.num_samples=0", "report_to=none"]
    first = launch(common + ["stop_at_step=2"])
    assert verify_checkpoint(out / "checkpoint-2") is None, first.stdout[-2000:]
    assert {f"training_state_{rank}.json" for rank in (0, 1)} <= {p.name for p in (out / "checkpoint-2").iterdir()}
    second = launch(common + ["checkpoint.resume_from_checkpoint=latest"])
    assert "resumed from" in second.stdout + second.stderr
    assert (out / "model" / "model_index.json").is_file()
