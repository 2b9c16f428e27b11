"""Triton kernels for the fused entropy-regularized losses (the CUDA path).

``ops.kernels.backend`` implements ``ops._contract.Backend`` (``probs_forward`` /
``probs_backward``, ``entropy_forward`` / ``entropy_backward``, ``pg``, ``ppo``);
``ops.functions`` imports it lazily, so ``import ops`` never needs triton, and routes float64 and
empty batches to ``ops.reference``. Modules: ``_rows`` (row statistics, tau search, launch
configuration, the launch seam), ``policy_loss`` (pg and ppo: loss rows, statistics and
gradient in one launch), ``entropy`` (entropy forward and its closed-form backward), ``probs``
(the probabilities and their closed-form VJP), ``backend`` (the interface).

Design (formulas: DESIGN.md section 1):

* Blocks. A program owns ``BLOCK_N`` rows and walks ``V`` in ``BLOCK_V`` tiles, all in float32
  on the raw logits with masked actions at ``-inf``. On a GPU a row of up to 8192 entries is one
  register-resident tile (``SINGLE``), loaded once however many passes follow; short rows share
  a program (~2048 elements each, while >= ~1024 programs remain); longer rows loop over
  4096-wide tiles. Offsets are int64 (``N * V`` overflows int32 at LLM sizes).
* Softmax: one online pass (running max m, rescaled ``s = sum exp(u)`` and ``sum exp(u) u``,
  ``u = (z - m) / T``) gives log-sum-exp and Shannon H for any V; ``log p = u - log s``. The
  temperature divides ``z - m``, never ``z`` (precision near the entmax threshold).
* Sparsemax / entmax-alpha: no sort. After the max pass, tau (on ``y = (alpha-1)(z - m) / T``,
  in ``[-1, -(1/n)^(alpha-1)]``) is found by Newton's method on ``(sum [y - tau]_+^k)^(1/k) - 1``
  from ``tau = -1`` (monotone for alpha <= 2; for alpha > 2 bisection until a Newton step keeps
  the support, then Newton, in a frame pivoted at the threshold so that d = y - tau keeps its
  relative precision, ``_rows``); each iteration is one pass. Sparsemax and entmax-1.5 end
  with their closed form on the support found (what the sort-based reference computes);
  measured 1-8 passes at V = 32768.
* Bytes. Entropy forward: reads the logits (once for single-tile rows; the tau passes of long
  rows re-read them, mostly from L2), writes O(N). Entropy backward: one read, one write.
  pg / ppo: the statistics, then one pass that reads each tile and writes its gradient, so the
  gradient may be written over the logits (``grad_out`` aliasing them, the public API's
  ``grad_buffer``): no logits-sized buffer beyond the input.
* Per-row outputs in the same launch: loss row, entropy, log pi(a), support size, PPO ratio and
  clipped flag, squared norms of the policy and entropy parts of the gradient, and the row
  max over allowed actions (NaN / +inf / all-masked rows raise ``ValueError`` after the launch).
* Launches: every kernel is launched by ``_rows.launch`` (on the tensors' CUDA device; one
  seam to intercept launches). ``record_iterations()`` records the threshold search's per-row
  iteration counts of the launches inside it (a DEBUG kernel variant).
"""

from ops.kernels._rows import record_iterations

__all__ = ["record_iterations"]
