"""Triton kernels for the fused entropy-regularized losses (the CUDA path).

``ops.kernels.backend`` exposes the backend interface of ``ops.functions`` (``pg``, ``ppo``,
``entropy_forward``, ``entropy_backward``); ``ops.functions`` imports it lazily, so ``import ops``
never needs triton. Design, block sizes and bytes moved: ``docs/kernels.md``.
"""
