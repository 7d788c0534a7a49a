"""`FusedAdam`: torch's Adam with fused=True, bit for bit, less the Python around its kernel.

torch's `Adam.step` spends about 70 µs of Python per call (hooks, `_init_group`'s per-parameter
checks, grouping the tensors by device and dtype) around the one fused kernel that does the work:
1-1.5% of a batch-128 step on the default MLP, below this VM's run-to-run spread
(benchmarks/optimizer_step.py: median 1.009x at batch 128, 0.997x at 512).
When nothing needs that machinery (one parameter group, every parameter with a dense gradient,
one device and dtype, plain options, no hooks, no grad scaler) `step` calls the same kernel with
the same arguments directly; anything else goes through torch's `step` unchanged. The state
(`step`, `exp_avg`, `exp_avg_sq` per parameter) is torch's own, so checkpoints load either way.
"""
from __future__ import annotations

import torch
from torch.optim.optimizer import _global_optimizer_post_hooks, _global_optimizer_pre_hooks

# Group options under which torch's fused step is exactly `_foreach_add_(steps, 1)` then one
# `_fused_adam_` call (torch/optim/adam.py, `_fused_adam`).
_PLAIN = {"amsgrad": False, "maximize": False, "capturable": False, "differentiable": False,
          "decoupled_weight_decay": False, "fused": True}


class FusedAdam(torch.optim.Adam):
    def __init__(self, params, lr: float = 1e-3, weight_decay: float = 0.0):
        super().__init__(params, lr=lr, weight_decay=weight_decay, fused=True)

    def _direct_arguments(self):
        """The kernel's tensor lists when the direct call is exactly torch's step; else None."""
        if (len(self.param_groups) != 1 or self._optimizer_step_pre_hooks or self._optimizer_step_post_hooks
                or _global_optimizer_pre_hooks or _global_optimizer_post_hooks
                or getattr(self, "grad_scale", None) is not None or getattr(self, "found_inf", None) is not None):
            return None
        group = self.param_groups[0]
        if (any(group[key] != value for key, value in _PLAIN.items())
                or any(isinstance(v, torch.Tensor) for v in (group["lr"], *group["betas"]))):
            return None
        params, grads, exp_avgs, exp_avg_sqs, steps = [], [], [], [], []
        first = group["params"][0]
        for p in group["params"]:
            state = self.state.get(p)
            grad = p.grad
            if (grad is None or grad.is_sparse or not state or p.device != first.device or p.dtype != first.dtype
                    or p.is_complex()):
                return None  # a first step (state to create), a parameter without gradient, mixed tensors
            params.append(p)
            grads.append(grad)
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])
            steps.append(state["step"])
        return params, grads, exp_avgs, exp_avg_sqs, steps

    @torch.no_grad()
    def step(self, closure=None):
        direct = None if closure is not None or torch.compiler.is_compiling() else self._direct_arguments()
        if direct is None:
            return self._torch_step(closure)
        params, grads, exp_avgs, exp_avg_sqs, steps = direct
        group = self.param_groups[0]
        beta1, beta2 = group["betas"]
        torch._foreach_add_(steps, 1)
        torch._fused_adam_(params, grads, exp_avgs, exp_avg_sqs, [], steps, amsgrad=False, lr=group["lr"],
                           beta1=beta1, beta2=beta2, weight_decay=group["weight_decay"], eps=group["eps"],
                           maximize=False, grad_scale=None, found_inf=None)
        return None

    def zero_grad(self, set_to_none: bool = True) -> None:
        """torch's zero_grad(set_to_none=True) sets every `p.grad = None` inside a dynamo-disabling
        wrapper and a profiler range that cost 100-180 µs a call in a training step, against 13-21 µs
        for the loop alone (benchmarks/step_parts.py). The loop does the same;
        zeroing in place (set_to_none=False) stays torch's."""
        if not set_to_none:
            return super().zero_grad(set_to_none=False)
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None

    # torch wraps an optimiser class's `step` in its hook-and-profiler wrapper unless it is marked
    # hooked: the direct path runs only without hooks, so it needs none (the fallback adds it).
    step.hooked = True

    def _torch_step(self, closure):
        """torch's Adam step with its hooks, run once: Adam.step is wrapped only once a plain Adam
        was made in this process."""
        adam_step = torch.optim.Adam.step
        if not getattr(adam_step, "hooked", False):
            adam_step = torch.optim.Optimizer.profile_hook_step(adam_step)
        return adam_step(self, closure)


def adam(params, lr: float, weight_decay: float = 0.0, fused: bool = True) -> torch.optim.Adam:
    """The zoo's optimiser (`train.fused_adam`): FusedAdam, or torch's default Adam as before issue #20."""
    return FusedAdam(params, lr=lr, weight_decay=weight_decay) if fused else torch.optim.Adam(
        params, lr=lr, weight_decay=weight_decay)
