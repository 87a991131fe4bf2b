"""Reference attention processors against explicit attention computations."""
import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from marionet.models import ReferenceAttnProcessor, ReferenceState


def make_attention(dim=32, heads=4):
    torch.manual_seed(0)
    return Attention(query_dim=dim, heads=heads, dim_head=dim // heads, bias=False).eval()


def explicit_attention(attn, queries_from, context, scale=None):
    """softmax(Q K^T * scale) V with an explicit softmax, then the output projection."""
    b, n, _ = queries_from.shape
    h = attn.heads
    q = attn.to_q(queries_from).view(b, n, h, -1).transpose(1, 2)
    k = attn.to_k(context).view(b, context.shape[1], h, -1).transpose(1, 2)
    v = attn.to_v(context).view(b, context.shape[1], h, -1).transpose(1, 2)
    scale = attn.scale if scale is None else scale
    weights = torch.softmax(q @ k.transpose(-1, -2) * scale, dim=-1)
    out = (weights @ v).transpose(1, 2).reshape(b, n, -1)
    return attn.to_out[0](out)


def test_read_with_empty_bank_equals_default_attention():
    attn = make_attention()
    x = torch.randn(3, 16, 32)
    expected = AttnProcessor2_0()(attn, x)
    state = ReferenceState()
    got = ReferenceAttnProcessor(state, "layer", role="read")(attn, x)
    assert torch.allclose(got, expected, atol=1e-6)


def test_read_equals_explicit_attention_over_concatenated_tokens_with_unconditional_rows():
    attn = make_attention()
    x, bank = torch.randn(3, 16, 32), torch.randn(3, 24, 32)
    state = ReferenceState(bank={"layer": bank}, dropped=(False, True, False))
    got = ReferenceAttnProcessor(state, "layer", role="read")(attn, x)
    for row in range(3):
        context = x[row:row + 1] if row == 1 else torch.cat([x[row:row + 1], bank[row:row + 1]], dim=1)
        expected = explicit_attention(attn, x[row:row + 1], context)
        assert torch.allclose(got[row:row + 1], expected, atol=1e-5), row
    # without the mask every row sees the bank: row 1 changes
    state.dropped = None
    assert not torch.allclose(ReferenceAttnProcessor(state, "layer", role="read")(attn, x)[1], got[1], atol=1e-3)


def test_video_bank_repeated_over_frames_equals_per_frame():
    attn = make_attention()
    batch, frames = 2, 3
    x, bank = torch.randn(batch * frames, 16, 32), torch.randn(batch, 8, 32)
    state = ReferenceState(bank={"layer": bank}, dropped=(False, True))
    got = ReferenceAttnProcessor(state, "layer", role="read")(attn, x)
    for b in range(batch):
        for f in range(frames):
            row = b * frames + f  # batch-major, as UNetMotionModel lays frames out
            single = ReferenceState(bank={"layer": bank[b:b + 1]}, dropped=state.dropped[b:b + 1])
            expected = ReferenceAttnProcessor(single, "layer", role="read")(attn, x[row:row + 1])
            assert torch.allclose(got[row:row + 1], expected, atol=1e-6), (b, f)


def test_write_banks_input_and_computes_plain_attention():
    attn = make_attention()
    x = torch.randn(2, 16, 32)
    state = ReferenceState()
    got = ReferenceAttnProcessor(state, "layer", role="write")(attn, x)
    assert state.bank["layer"] is x
    assert torch.allclose(got, AttnProcessor2_0()(attn, x), atol=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 1.3, 0.7])
def test_swap_equals_explicit_attention_over_bank_only_with_temperature(temperature):
    attn = make_attention()
    x, bank = torch.randn(2, 16, 32), torch.randn(2, 20, 32)
    state = ReferenceState(mode="swap", bank={"layer": bank}, temperature=temperature)
    got = ReferenceAttnProcessor(state, "layer")(attn, x)
    expected = explicit_attention(attn, x, bank, scale=attn.scale / temperature)
    assert torch.allclose(got, expected, atol=1e-5)


def test_layers_outside_active_set_do_plain_attention():
    attn = make_attention()
    x, bank = torch.randn(2, 16, 32), torch.randn(2, 8, 32)
    state = ReferenceState(mode="read", bank={"layer": bank}, active_layers={"other"})
    got = ReferenceAttnProcessor(state, "layer")(attn, x)
    assert torch.allclose(got, AttnProcessor2_0()(attn, x), atol=1e-6)


# ------------------------------------------------------------------------------------------------ reference once
def todays_reference_attention(attn, x, bank, samples, dropped=None, swap=False, temperature=1.0):
    """The computation before reference sharing, row by row: the sample's bank row repeated for every frame and
    concatenated with the row's own tokens (read) or alone (swap), projected and attended explicitly."""
    frames = x.shape[0] // samples
    out = []
    for row in range(x.shape[0]):
        s = row // frames
        own = x[row:row + 1]
        if dropped is not None and dropped[s]:
            out.append(explicit_attention(attn, own, own))
            continue
        reference = bank[s % bank.shape[0]][None]
        context = reference if swap else torch.cat([own, reference], dim=1)
        out.append(explicit_attention(attn, own, context, attn.scale / temperature if swap else None))
    return torch.cat(out)


def relative_error(got, expected):
    return ((got - expected).norm() / expected.norm()).item()


CASES = {  # samples, frames, bank rows, dropped
    "image, one row": (1, 1, 1, None),
    "image, guidance rows share one bank row": (2, 1, 1, (True, False)),
    "video, guidance rows": (2, 5, 1, (True, False)),
    "video, two videos x three guidance rows": (6, 3, 1, (True, True, True, True, False, False)),
    "training batch, one bank row each, some dropped": (3, 4, 3, (False, True, False)),
    "two references tiled over guidance rows": (4, 2, 2, (True, True, False, False)),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("swap", [False, True])
def test_reference_once_equals_todays_attention(case, swap):
    samples, frames, bank_rows, dropped = CASES[case]
    attn = make_attention()
    x, bank = torch.randn(samples * frames, 16, 32), torch.randn(bank_rows, 12, 32)
    expected = todays_reference_attention(attn, x, bank, samples, dropped, swap, 1.3)
    state = ReferenceState(mode="swap" if swap else "read", bank={"layer": bank}, samples=samples,
                           dropped=dropped, temperature=1.3)
    processor = ReferenceAttnProcessor(state, "layer")
    with torch.no_grad():
        shared = processor(attn, x)
        processor.kernel = "sliced"  # the concatenated form (any kernel but plain SDPA takes it)
        concatenated = processor(attn, x)
    assert relative_error(shared, expected) <= 1e-5
    assert relative_error(concatenated, expected) <= 1e-5
    # with gradients (training) the concatenated form runs, equal too, and gradients reach the bank
    processor.kernel = "sdpa"
    bank.requires_grad_(True)
    state.projected = {}
    with_grad = processor(attn, x)
    assert relative_error(with_grad.detach(), expected) <= 1e-5
    if dropped is None or not all(dropped):
        with_grad.sum().backward()
        assert bank.grad is not None and bank.grad.abs().sum() > 0


def test_reference_keys_values_are_projected_once_per_bank():
    attn = make_attention()
    calls = []
    attn.to_k.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    bank = torch.randn(1, 12, 32)
    state = ReferenceState(mode="read", bank={"layer": bank}, samples=2, dropped=(True, False))
    processor = ReferenceAttnProcessor(state, "layer")
    x = torch.randn(2 * 6, 16, 32)
    with torch.no_grad():
        first = processor(attn, x)
        for _ in range(3):  # more steps / windows with the same bank: only the frames' own keys are projected
            torch.testing.assert_close(processor(attn, x), first)
    assert calls == [1, 12, 12, 12, 12]  # the bank once (one row), then the 12 frame rows per call
    state.bank = {"layer": torch.randn(1, 12, 32)}  # a new bank (the next video) is projected again
    with torch.no_grad():
        assert not torch.allclose(processor(attn, x), first)
    assert calls[-2:] == [1, 12]


def test_reference_once_needs_no_copies_of_the_reference_per_frame():
    """Counted: the projection FLOPs of one video layer call fall by the reference's share of the keys/values, and
    no [own ; reference] key tensor is built (its token axis would be tokens + reference tokens)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from marionet.train.memory import flop_counter

    class Shapes(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.seen = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            self.seen += [tuple(t.shape) for t in (out if isinstance(out, tuple) else (out,))
                          if isinstance(t, torch.Tensor)]
            return out

    attn = make_attention()
    frames, tokens, reference_tokens = 8, 16, 24
    x, bank = torch.randn(2 * frames, tokens, 32), torch.randn(1, reference_tokens, 32)
    state = ReferenceState(mode="read", bank={"layer": bank}, samples=2, dropped=(True, False))
    processor = ReferenceAttnProcessor(state, "layer")
    with torch.no_grad():
        processor(attn, x)  # projects the bank (once per video)
        with flop_counter() as shared, Shapes() as shapes:
            processor(attn, x)
        with flop_counter() as today:
            todays_reference_attention(attn, x, bank, 2, (True, False))
    projection = 2 * 32 * 32  # FLOPs per token of one 32x32 projection
    assert today.get_total_flops() - shared.get_total_flops() >= 2 * projection * frames * reference_tokens
    assert not [shape for shape in shapes.seen if tokens + reference_tokens in shape]
