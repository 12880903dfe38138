"""NetScore (A. Wong, "NetScore: towards universal metrics for large-scale performance analysis
of deep neural networks", ICIAR 2019, arXiv:1806.05512).

    Omega = 20 * log10( a^alpha / ( (p / p_unit)^beta * (m / m_unit)^gamma ) )

with a = top-1 accuracy in percent (0-100), p = parameters, m = multiply-accumulates of one
forward pass, alpha = 2, beta = gamma = 0.5. The 20*log10 gives a decibel-like scale.

Units are a convention and change the score: the default is M-params (p_unit = 1e6) and G-MACs
(m_unit = 1e9); the paper's MAC unit is unverified, and the M-MAC convention (m_unit = 1e6) gives a
score exactly 30 lower (20 * 0.5 * log10(1000)). Always print the units beside a score
(:func:`unit_label`). Whether p and m are dense or nonzero counts is the caller's choice and must
be printed too.
"""

from __future__ import annotations

import math

_UNIT_LABELS = {1.0: "", 1e3: "K", 1e6: "M", 1e9: "G", 1e12: "T"}


def netscore(
    acc_pct: float,
    n_params: float,
    n_macs: float,
    p_unit: float = 1e6,
    m_unit: float = 1e9,
    alpha: float = 2.0,
    beta: float = 0.5,
    gamma: float = 0.5,
) -> float:
    """NetScore of a network with top-1 ``acc_pct`` (%), ``n_params`` params, ``n_macs`` MACs.

    Returns ``-inf`` for 0% accuracy (the limit of the formula).

    Raises:
        ValueError: accuracy outside [0, 100] (a fraction such as 0.93 is not detected: pass
            percent), non-positive params, MACs or units.
    """
    if not 0.0 <= acc_pct <= 100.0:
        raise ValueError(f"NetScore: accuracy must be a percentage in [0, 100], got {acc_pct}")
    for label, value in (("n_params", n_params), ("n_macs", n_macs)):
        if not value > 0:
            raise ValueError(f"NetScore: {label} must be > 0, got {value}")
    for label, value in (("p_unit", p_unit), ("m_unit", m_unit)):
        if not value > 0:
            raise ValueError(f"NetScore: {label} must be > 0, got {value}")
    if acc_pct == 0.0:
        return -math.inf
    # In log form: no overflow for large alpha, and each term's contribution is explicit.
    return 20.0 * (
        alpha * math.log10(acc_pct)
        - beta * math.log10(n_params / p_unit)
        - gamma * math.log10(n_macs / m_unit)
    )


def unit_label(unit: float) -> str:
    """SI prefix of a counting unit: 1 -> "", 1e3 -> "K", 1e6 -> "M", 1e9 -> "G", 1e12 -> "T".

    Other positive units are written out (1e5 -> "1e+05"), so a label is never silently wrong.
    """
    if not unit > 0:
        raise ValueError(f"unit must be > 0, got {unit}")
    return _UNIT_LABELS.get(float(unit), f"{unit:g}")
