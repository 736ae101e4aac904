"""Statistics over the real tokens of a right-padded (B, T) batch.

A mask is a bool or 0/1 float tensor with 1 on real response tokens. Padded
positions are excluded with ``torch.where`` rather than multiplied by 0, so a NaN
or inf that a model wrote into padding cannot leak into the result.
"""

from __future__ import annotations

import torch


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``x`` over the positions where ``mask`` is 1.

    With ``dim=None`` the mean is over all real tokens of the batch (every token
    weighs the same, the "token-level mean" PPO losses use); with ``dim=1`` it is
    one mean per row.

    An empty mask (or an empty row, with ``dim``) gives 0, not NaN: a loss over no
    tokens then contributes nothing and no gradient, instead of poisoning the
    parameters with NaN.

    Args:
        x: (B, T), or any shape matching ``mask``.
        mask: same shape as ``x``.
        dim: reduce over this dimension only, or everything when None.

    Returns:
        A scalar, or ``x`` reduced along ``dim``.
    """
    keep = mask.bool()
    total = torch.where(keep, x, 0.0).sum() if dim is None else torch.where(keep, x, 0.0).sum(dim)
    count = keep.sum() if dim is None else keep.sum(dim)
    return total / count.clamp(min=1).to(total.dtype)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of ``x`` over the positions where ``mask`` is 1 (a scalar).

    ``unbiased=True`` applies Bessel's correction n / (n - 1), as
    ``torch.var`` does by default.

    Raises:
        ValueError: when the mask has too few real tokens for a variance (none, or
            one with ``unbiased``). This reads the count back to the CPU.
    """
    count = int(mask.bool().sum())
    if count < (2 if unbiased else 1):
        raise ValueError(f"masked_var needs at least {2 if unbiased else 1} unmasked "
                         f"value(s), the mask has {count}")
    centred = x - masked_mean(x, mask)
    var = masked_mean(centred**2, mask)
    if unbiased:
        var = var * count / (count - 1)
    return var


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True,
                  eps: float = 1e-8) -> torch.Tensor:
    """Normalise ``x`` to mean 0 and variance 1 over the real tokens.

    (x - mean) / sqrt(var + eps), with the unbiased masked variance. Whitening the
    advantages of each batch is standard PPO practice; for *reward* whitening pass
    ``shift_mean=False``, which adds the mean back so that only the scale changes:
    shifting rewards' mean would change which answers are worth continuing
    ("The N implementation details of RLHF with PPO", Huang et al. 2024,
    ``whiten(rewards, shift_mean=False)``).

    Statistics ignore padded positions, and the output is 0 there.

    Args:
        x: (B, T).
        mask: (B, T), with at least two real tokens.
        shift_mean: True to centre at 0, False to keep the original mean.
        eps: added to the variance before the square root.

    Returns:
        (B, T) whitened values.
    """
    mean = masked_mean(x, mask)
    var = masked_var(x, mask, unbiased=True)
    whitened = (x - mean) * torch.rsqrt(var + eps)  # (B, T)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask.bool(), whitened, 0.0)
