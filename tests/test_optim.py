"""FusedAdam is torch's Adam(fused=True) bit for bit: the same weights and state after every step,
through a learning-rate schedule, weight decay and a checkpoint round trip, and it falls back to
torch's step (hooks run once) wherever its direct call would not be exactly that."""
import torch

from core.optim import FusedAdam, adam

SHAPES = [(40, 78), (40,), (6, 40), (6,), (78, 3)]


def _params(seed: int = 0) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in SHAPES]


def _set_grads(params, step: int) -> None:
    gen = torch.Generator().manual_seed(1000 + step)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen) * (1 + step % 3)


def _same(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b))


def test_fused_adam_matches_torch_fused_adam_bit_for_bit_through_a_schedule_and_a_checkpoint():
    ours, theirs = _params(), _params()
    opt = FusedAdam(ours, lr=1e-2, weight_decay=1e-3)
    ref = torch.optim.Adam(theirs, lr=1e-2, weight_decay=1e-3, fused=True)
    scheds = [torch.optim.lr_scheduler.LambdaLR(o, lambda epoch: 0.5 ** epoch) for o in (opt, ref)]
    direct = 0
    for step in range(12):
        _set_grads(ours, step)
        _set_grads(theirs, step)
        direct += opt._direct_arguments() is not None
        opt.step()
        ref.step()
        if step % 4 == 3:
            for s in scheds:
                s.step()
        assert _same(ours, theirs), step
        assert all(_same([opt.state[p][k] for p in ours], [ref.state[p][k] for p in theirs])
                   for k in ("step", "exp_avg", "exp_avg_sq"))
    assert direct == 11  # every step but the first (which creates the state) took the direct call

    # A checkpoint of either loads into the other and they go on identically.
    resumed = _params()
    for p, q in zip(resumed, ours):
        p.data.copy_(q.data)
    plain = torch.optim.Adam(resumed, lr=1e-2, weight_decay=1e-3, fused=True)
    plain.load_state_dict(opt.state_dict())
    again = FusedAdam(ours, lr=1e-2, weight_decay=1e-3)
    again.load_state_dict(ref.state_dict())
    for step in range(12, 15):
        _set_grads(resumed, step)
        _set_grads(ours, step)
        assert again._direct_arguments() is not None
        plain.step()
        again.step()
        assert _same(ours, resumed), step


def test_fused_adam_falls_back_to_torch_where_the_direct_call_would_differ():
    ours, theirs = _params(), _params()
    opt, ref = FusedAdam(ours, lr=1e-2), torch.optim.Adam(theirs, lr=1e-2, fused=True)
    calls = []
    opt.register_step_pre_hook(lambda o, args, kwargs: calls.append("pre"))
    opt.register_step_post_hook(lambda o, args, kwargs: calls.append("post"))
    for step in range(3):
        _set_grads(ours, step)
        _set_grads(theirs, step)
        ours[1].grad = theirs[1].grad = None  # a parameter without a gradient: skipped by both
        assert opt._direct_arguments() is None
        opt.step()
        ref.step()
        assert _same(ours, theirs)
    assert calls == ["pre", "post"] * 3  # the hooks ran once per step

    # a closure is torch's to call
    losses = []
    assert opt.step(lambda: losses.append(1.0) or 1.0) == 1.0 and losses == [1.0]


def test_adam_takes_torch_default_when_not_fused():
    params = _params()
    assert type(adam(params, lr=1e-3, fused=True)) is FusedAdam
    plain = adam(params, lr=1e-3, fused=False)
    assert type(plain) is torch.optim.Adam and plain.param_groups[0]["fused"] is None


def test_fused_adam_zero_grad_does_what_torch_zero_grad_does():
    ours, theirs = _params(), _params()
    opt, ref = FusedAdam(ours, lr=1e-2), torch.optim.Adam(theirs, lr=1e-2, fused=True)
    for step in range(3):  # through steps: the state exists, the grads come and go
        _set_grads(ours, step)
        _set_grads(theirs, step)
        opt.step()
        ref.step()
        opt.zero_grad()
        ref.zero_grad()
        assert all(p.grad is None for p in ours + theirs)
        assert _same(ours, theirs)
    # set_to_none=False zeroes each gradient in place (torch's own path): the same tensor, all 0
    _set_grads(ours, 3)
    kept = [p.grad for p in ours]
    opt.zero_grad(set_to_none=False)
    assert all(p.grad is g and not g.any() for p, g in zip(ours, kept))
