"""PPO and A2C losses on the fused entropy-regularized ops.

Both read as the paper's objective::

    loss = pg_loss - beta * entropy + vf_coef * v_loss

``ops.ppo_loss`` / ``ops.pg_loss`` compute ``pg_loss - beta * entropy`` as one fused op with
the closed-form gradient of docs/DESIGN.md section 1 (the policy mapping alpha, the temperature
and beta reach it unchanged); the value term is added next to it. The returned `Losses` holds the
differentiable ``loss`` and, detached, the metrics for logging (a logged number never holds the
autograd graph).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

import ops

__all__ = ["Batch", "Losses", "ppo_losses", "a2c_losses", "value_loss", "approx_kl", "normalize"]

# log r is clamped here in the KL estimate: a sparse policy may give an old action
# probability 0 (log r = -inf), where the true KL(old || new) is infinite.
MIN_LOG_RATIO = -20.0


@dataclass
class Batch:
    """A minibatch of valid transitions (flattened over steps and envs)."""

    obs: torch.Tensor
    actions: torch.Tensor
    log_probs: torch.Tensor  # log pi_old(a) at sampling time
    advantages: torch.Tensor
    returns: torch.Tensor  # value targets: advantages + old values
    values: torch.Tensor  # V_old(s) at sampling time
    masks: torch.Tensor | None  # (B, n_actions) bool, True = allowed

    def select(self, idx: torch.Tensor) -> Batch:
        """The rows ``idx`` (a minibatch)."""
        return Batch(*(None if x is None else x.index_select(0, idx) for x in (
            self.obs, self.actions, self.log_probs, self.advantages, self.returns, self.values,
            self.masks)))


@dataclass
class Losses:
    """The differentiable total and, when asked for (``metrics=True``), detached metrics.

    Metrics cost a dozen tensor ops per minibatch, which is much of a small network's step,
    so the trainer asks for them only on the minibatches it logs.
    """

    loss: torch.Tensor  # differentiable total
    v_loss: torch.Tensor  # mean((V - R)^2) (clipped form with clip_value), differentiable
    out: ops.LossOutput  # entropy, support size, logit-space gradient norms, ratio, clipped
    pg_loss: torch.Tensor | None = None  # detached: the policy term alone, without -beta H
    approx_kl: torch.Tensor | None = None  # PPO: E[(r - 1) - log r] (Schulman's k3 estimator)
    clip_fraction: torch.Tensor | None = None  # PPO: fraction of rows with |r - 1| > clip_eps
    clip_active_fraction: torch.Tensor | None = None  # PPO: rows whose clipped branch is active


def normalize(advantages: torch.Tensor) -> torch.Tensor:
    """``(A - mean) / (std + 1e-8)`` (a no-op for fewer than two rows)."""
    if advantages.numel() < 2:
        return advantages
    return (advantages - advantages.mean()) / (advantages.std() + 1e-8)


def value_loss(values: torch.Tensor, returns: torch.Tensor, old_values: torch.Tensor,
               clip_value: float | None) -> torch.Tensor:
    """``mean((V - R)^2)``; with ``clip_value``, PPO's pessimistic clipped form
    ``mean(max((V - R)^2, (V_old + clip(V - V_old, -c, c) - R)^2))``."""
    v_loss = (values - returns).square()
    if clip_value is not None:
        clipped = old_values + (values - old_values).clamp(-clip_value, clip_value)
        v_loss = torch.maximum(v_loss, (clipped - returns).square())
    return v_loss.mean()


def ppo_losses(logits: torch.Tensor, values: torch.Tensor, batch: Batch, *, beta: float,
               clip_eps: float, alpha: float, temperature: float, vf_coef: float,
               clip_value: float | None, norm_adv: bool, metrics: bool = True) -> Losses:
    """PPO-clip (Schulman et al. 2017) with the entropy term of the policy's own mapping."""
    advantages = normalize(batch.advantages) if norm_adv else batch.advantages
    v_loss = value_loss(values, batch.returns, batch.values, clip_value)
    # loss = pg_loss - beta * entropy + vf_coef * v_loss   (ops fuses the first two terms)
    pg = ops.ppo_loss(logits, batch.actions, advantages, batch.log_probs, beta=beta,
                      clip_eps=clip_eps, alpha=alpha, temperature=temperature, mask=batch.masks,
                      grad_norms=metrics)
    loss = pg.loss + vf_coef * v_loss
    losses = Losses(loss, v_loss, pg)
    if metrics:
        with torch.no_grad():
            losses.pg_loss = pg.loss.detach() + beta * pg.entropy.mean()
            losses.approx_kl = approx_kl(pg.log_prob, batch.log_probs)
            # SB3's and CleanRL's definition, which users compare across libraries
            losses.clip_fraction = ((pg.ratio - 1.0).abs() > clip_eps).float().mean()
            losses.clip_active_fraction = pg.clipped.float().mean()
    return losses


def approx_kl(log_prob: torch.Tensor, old_log_prob: torch.Tensor) -> torch.Tensor:
    """``E[(r - 1) - log r]``, ``r = pi(a) / pi_old(a)``: an unbiased, nonnegative estimate of
    KL(pi_old || pi) (J. Schulman, "Approximating KL divergence", 2020)."""
    with torch.no_grad():
        log_ratio = (log_prob - old_log_prob).clamp_min(MIN_LOG_RATIO)
        return (log_ratio.exp() - 1.0 - log_ratio).mean()


def a2c_losses(logits: torch.Tensor, values: torch.Tensor, batch: Batch, *, beta: float,
               alpha: float, temperature: float, vf_coef: float, norm_adv: bool,
               metrics: bool = True) -> Losses:
    """A2C (Mnih et al. 2016): one gradient step on ``-A log pi(a) - beta H + vf_coef (V - R)^2``."""
    advantages = normalize(batch.advantages) if norm_adv else batch.advantages
    v_loss = value_loss(values, batch.returns, batch.values, None)
    # loss = pg_loss - beta * entropy + vf_coef * v_loss   (ops fuses the first two terms)
    pg = ops.pg_loss(logits, batch.actions, advantages, beta=beta, alpha=alpha,
                     temperature=temperature, mask=batch.masks, grad_norms=metrics)
    loss = pg.loss + vf_coef * v_loss
    losses = Losses(loss, v_loss, pg)
    if metrics:
        with torch.no_grad():
            losses.pg_loss = pg.loss.detach() + beta * pg.entropy.mean()
    return losses
