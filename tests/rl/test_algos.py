"""rl/algos.py (PPO and A2C losses on the fused ops) against autograd through plain-PyTorch
composites, and the trainer's logged losses and gradient norms against the same references.

How the gradient norms are measured (rl.trainer, rl.logging):
- grad_norm/policy, grad_norm/entropy: Frobenius norms at the logits of the gradient of the
  policy term (PPO surrogate or -A log pi) and of the -beta * H term of the minibatch loss;
  the fused op returns them (``LossOutput.grad_norm_policy / grad_norm_entropy``) from its two
  closed-form gradient terms. The trainer logs their mean over the minibatches of the update's
  last epoch.
- grad_norm/value: parameter-space norm of the gradient of vf_coef * v_loss (the critic's
  parameters, which only the value loss reaches), before clipping.
- grad_norm/total: parameter-space norm of the whole gradient, before clipping.
"""

import zlib

import numpy as np
import pytest
import torch
from rl_helpers import compose, entropy_oracle, probs_oracle

from rl import algos
from rl.trainer import Trainer

B, V = 24, 6
MASK_FILL = -1.0e4  # a finite "minus infinity": exp underflows to 0, (ent/sparse)max gives 0


def _inputs(seed, masked, alpha, temperature, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    logits = (2.0 * torch.randn(B, V, generator=g, dtype=dtype)).requires_grad_()
    mask = None
    if masked:
        mask = torch.rand(B, V, generator=g) < 0.7
        mask[torch.arange(B), torch.randint(V, (B,), generator=g)] = True  # >= 1 allowed per row
    z = logits.detach() if mask is None else logits.detach().masked_fill(~mask, MASK_FILL)
    # the old policy: the current one perturbed, so PPO's ratios spread over both clip branches
    old_p = probs_oracle(z + 0.6 * torch.randn(B, V, generator=g, dtype=dtype), alpha, temperature)
    old_p = old_p if mask is None else old_p * mask
    actions = torch.multinomial(old_p.float(), 1, generator=g).squeeze(1)
    batch = algos.Batch(
        obs=torch.zeros(B, 1),
        actions=actions,
        log_probs=old_p.gather(1, actions[:, None]).squeeze(1).log(),
        advantages=torch.randn(B, generator=g, dtype=dtype),
        returns=torch.randn(B, generator=g, dtype=dtype),
        values=torch.randn(B, generator=g, dtype=dtype),
        masks=mask,
    )
    values = (batch.values + 0.3 * torch.randn(B, generator=g, dtype=dtype)).requires_grad_()
    return logits, values, batch


def _reference_terms(logits, batch, algo, alpha, temperature, beta, clip_eps, norm_adv):
    """(policy term, -beta * mean H) built from the independent mapping, differentiable."""
    z = logits if batch.masks is None else logits.masked_fill(~batch.masks, MASK_FILL)
    p = probs_oracle(z, alpha, temperature)
    p_a = p.gather(1, batch.actions[:, None]).squeeze(1)
    adv = batch.advantages
    if norm_adv:
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    if algo == "ppo":
        ratio = p_a / batch.log_probs.exp()  # through p_a, as docs/DESIGN.md's PPO paragraph
        policy = -torch.minimum(ratio * adv, ratio.clamp(1 - clip_eps, 1 + clip_eps) * adv).mean()
    else:
        policy = -(adv * p_a.log()).mean()
    return policy, -beta * entropy_oracle(p, alpha).mean(), p


def _losses(algo, logits, values, batch, alpha, temperature, beta, clip_eps, norm_adv, vf_coef=0.5):
    if algo == "ppo":
        return algos.ppo_losses(logits, values, batch, beta=beta, clip_eps=clip_eps, alpha=alpha,
                                temperature=temperature, vf_coef=vf_coef, clip_value=None,
                                norm_adv=norm_adv)
    return algos.a2c_losses(logits, values, batch, beta=beta, alpha=alpha, temperature=temperature,
                            vf_coef=vf_coef, norm_adv=norm_adv)


@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
@pytest.mark.parametrize("alpha", [1.0, 1.5, 2.0, 1.3])
@pytest.mark.parametrize("algo", ["ppo", "a2c"])
def test_grad_norms_are_the_norms_of_the_two_terms_gradients(algo, alpha, masked):
    temperature, beta, clip_eps = 0.7, 0.3, 0.2
    logits, values, batch = _inputs(zlib.crc32(f"{algo}{alpha}{masked}".encode()), masked, alpha, temperature)
    if algo == "a2c":  # on-policy: the action was sampled from the current policy (p_a > 0)
        with torch.no_grad():
            z = logits if batch.masks is None else logits.masked_fill(~batch.masks, MASK_FILL)
            p = probs_oracle(z, alpha, temperature)
        batch.actions = torch.multinomial(p.float(), 1, generator=torch.Generator().manual_seed(3))[:, 0]
    losses = _losses(algo, logits, values, batch, alpha, temperature, beta, clip_eps, norm_adv=True)

    policy, entropy_term, _ = _reference_terms(logits, batch, algo, alpha, temperature, beta, clip_eps,
                                               norm_adv=True)
    (g_policy,) = torch.autograd.grad(policy, logits, retain_graph=True)
    (g_entropy,) = torch.autograd.grad(entropy_term, logits)
    assert float(g_policy.norm()) > 0 and float(g_entropy.norm()) > 0
    torch.testing.assert_close(losses.out.grad_norm_policy.double(), g_policy.norm(), rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(losses.out.grad_norm_entropy.double(), g_entropy.norm(), rtol=1e-5, atol=1e-9)
    if algo == "ppo":  # both branches of the surrogate occur in this batch
        assert 0 < int(losses.out.clipped.sum()) < B

    # the fused op's gradient is the sum of the two terms' (masked entries get exactly 0)
    (g_total,) = torch.autograd.grad(losses.loss, logits, retain_graph=True)
    torch.testing.assert_close(g_total, g_policy + g_entropy, rtol=1e-6, atol=1e-9)
    if masked:
        assert torch.all(g_total[~batch.masks] == 0)


@pytest.mark.parametrize("algo", ["ppo", "a2c"])
def test_loss_reads_pg_minus_beta_entropy_plus_vf_coef_value(algo):
    alpha, temperature, beta, clip_eps, vf_coef = 1.5, 1.3, 0.05, 0.25, 0.7
    logits, values, batch = _inputs(11, True, alpha, temperature)
    if algo == "a2c":
        with torch.no_grad():
            p = probs_oracle(logits.masked_fill(~batch.masks, MASK_FILL), alpha, temperature)
        batch.actions = torch.multinomial(p.float(), 1, generator=torch.Generator().manual_seed(4))[:, 0]
    losses = _losses(algo, logits, values, batch, alpha, temperature, beta, clip_eps, norm_adv=False,
                     vf_coef=vf_coef)
    policy, entropy_term, p = _reference_terms(logits, batch, algo, alpha, temperature, beta, clip_eps,
                                               norm_adv=False)
    v_loss = (values - batch.returns).square().mean()
    reference = policy + entropy_term + vf_coef * v_loss
    torch.testing.assert_close(losses.loss.double(), reference.double(), rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(losses.pg_loss.double(), policy.detach(), rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(losses.v_loss.double(), v_loss.detach(), rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(losses.out.entropy.double(), entropy_oracle(p, alpha).detach(), rtol=1e-6,
                               atol=1e-9)
    np.testing.assert_array_equal(losses.out.support_size.numpy(), (p > 0).sum(-1).numpy())
    grads = torch.autograd.grad(losses.loss, (logits, values))
    ref_grads = torch.autograd.grad(reference, (logits, values))
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g.double(), r.double(), rtol=1e-6, atol=1e-9)
    if algo == "ppo":
        log_ratio = (losses.out.log_prob - batch.log_probs).clamp_min(-20.0)
        torch.testing.assert_close(losses.approx_kl.double(), (log_ratio.exp() - 1 - log_ratio).mean())
        ratio = p.gather(1, batch.actions[:, None]).squeeze(1).detach() / batch.log_probs.exp()
        clipped = (ratio - 1).abs() > clip_eps
        active = torch.where(batch.advantages > 0, ratio > 1 + clip_eps, ratio < 1 - clip_eps)
        assert clipped.any() and (clipped & ~active).any()  # the two definitions differ here
        # clip_fraction is SB3's and CleanRL's: every row with |r - 1| > clip_eps
        assert float(losses.clip_fraction) == pytest.approx(float(clipped.double().mean()))
        # clip_active_fraction: the rows whose clipped branch is the active (gradient-free) one
        assert float(losses.clip_active_fraction) == pytest.approx(float(active.double().mean()))
    else:
        assert losses.approx_kl is None and losses.clip_fraction is None


def test_value_loss_clipped_form_is_pessimistic():
    g = torch.Generator().manual_seed(5)
    values, returns, old = (torch.randn(64, generator=g) for _ in range(3))
    plain = algos.value_loss(values, returns, old, None)
    clipped = algos.value_loss(values, returns, old, 0.1)
    c = old + (values - old).clamp(-0.1, 0.1)
    expected = torch.maximum((values - returns) ** 2, (c - returns) ** 2).mean()
    torch.testing.assert_close(plain, ((values - returns) ** 2).mean())
    torch.testing.assert_close(clipped, expected)
    assert float(clipped) > float(plain)


def test_approx_kl_is_finite_when_a_sparse_policy_drops_the_old_action():
    old = torch.log(torch.rand(16, generator=torch.Generator().manual_seed(6)) * 0.5 + 0.1)
    new = old + 0.1 * torch.randn(16, generator=torch.Generator().manual_seed(7))
    new[3] = -float("inf")
    kl = algos.approx_kl(new, old)
    assert torch.isfinite(kl) and float(kl) > 0


def test_normalize_advantages():
    a = 3.0 + 5.0 * torch.randn(100, generator=torch.Generator().manual_seed(8))
    n = algos.normalize(a)
    assert float(n.mean()) == pytest.approx(0.0, abs=1e-6) and float(n.std()) == pytest.approx(1.0, rel=1e-6)
    one = torch.tensor([2.5])
    assert algos.normalize(one) is one


# ---------------------------------------------------------------- through the trainer


@pytest.mark.parametrize("algo, policy", [("ppo", "sparsemax"), ("a2c", "softmax")])
def test_trainer_metrics_match_autograd_on_the_update_batch(tmp_path, algo, policy):
    """One update on one minibatch: the trainer's losses/*, entropy/mean and grad_norm/* equal
    autograd references computed from a copy of the network on the same batch."""
    n_steps, num_envs, beta, temperature, vf_coef, max_grad_norm = 16, 2, 0.2, 0.8, 0.6, 0.05
    extra = [f"algo.batch_size={n_steps * num_envs}", "algo.update_epochs=1"] if algo == "ppo" else []
    cfg = compose(f"algo={algo}", f"policy={policy}", f"beta={beta}", f"policy.temperature={temperature}",
                   f"algo.vf_coef={vf_coef}", f"algo.max_grad_norm={max_grad_norm}", "algo.norm_adv=true",
                   f"algo.n_steps={n_steps}", f"num_envs={num_envs}", "policy.hidden_sizes=[16]",
                   "env.id=Acrobot-v1", "total_steps=10000", "device=cpu", "progress=false", "seed=3",
                   *extra)
    trainer = Trainer(cfg, tmp_path)
    try:
        trainer.collect_rollout()
        net = trainer.member_network(0)  # a copy of the parameters the update starts from
        batch = trainer.batch(0)  # the valid transitions the update trains on (copies)
        (metrics,) = trainer.update()
    finally:
        trainer.close()
    alpha = float(cfg.policy.alpha)
    logits, values = net(batch.obs)
    policy_term, entropy_term, p = _reference_terms(logits, batch, algo, alpha, temperature, beta,
                                                    0.2, norm_adv=True)
    v_loss = (values - batch.returns).square().mean()
    total = policy_term + entropy_term + vf_coef * v_loss
    g_policy, g_entropy = (torch.autograd.grad(t, logits, retain_graph=True)[0]
                           for t in (policy_term, entropy_term))
    critic = list(net.critic.parameters())
    g_value = torch.autograd.grad(vf_coef * v_loss, critic, retain_graph=True)
    g_all = torch.autograd.grad(total, list(net.parameters()))
    norm = lambda gs: float(torch.sqrt(sum((g.double() ** 2).sum() for g in gs)))  # noqa: E731
    expected = {
        "losses/policy": policy_term.item(), "losses/value": v_loss.item(), "losses/total": total.item(),
        "entropy/mean": entropy_oracle(p, alpha).mean().item(),
        "grad_norm/policy": float(g_policy.norm()), "grad_norm/entropy": float(g_entropy.norm()),
        "grad_norm/value": norm(g_value), "grad_norm/total": norm(g_all),
    }
    assert expected["grad_norm/total"] > max_grad_norm  # clipping was active; norms are pre-clip
    for tag, value in expected.items():
        assert metrics[tag] == pytest.approx(value, rel=2e-4, abs=1e-7), tag
    assert metrics["policy/beta"] == pytest.approx(beta)
    assert ("ppo/approx_kl" in metrics) == (algo == "ppo")
    if algo == "ppo":  # first epoch: the policy that sampled is the policy being updated
        assert metrics["ppo/approx_kl"] == pytest.approx(0.0, abs=1e-6)
        assert metrics["ppo/clip_fraction"] == 0.0


def test_trainer_grad_norm_entropy_is_zero_without_entropy_term(tmp_path):
    cfg = compose("beta=0.0", "algo.n_steps=8", "num_envs=2", "algo.batch_size=16", "algo.update_epochs=1",
                   "policy.hidden_sizes=[8]", "total_steps=1000", "device=cpu", "progress=false")
    trainer = Trainer(cfg, tmp_path)
    try:
        trainer.collect_rollout()
        (metrics,) = trainer.update()
    finally:
        trainer.close()
    assert metrics["grad_norm/entropy"] == 0.0 and metrics["grad_norm/policy"] > 0.0

