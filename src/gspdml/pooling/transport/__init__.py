"""The GSP transport problem, solved exactly (default) or by the paper's fixed-point iteration.

Given a cost ``c`` (B, m, n) between m prototypes and n features, GSP solves per sample

    minimise   sum_ij c_ij pi_ij + (1/eps) (H(pi) + H(rho))
    subject to rho_j + sum_i pi_ij = 1/n   (every feature j),   sum_ij pi_ij = mu,   pi, rho >= 0

(``H(x) = sum x log x``). The pooling weights are ``p_j = (1/n - rho_j) / mu`` and the prototype
marginals ``z_i = sum_j pi_ij / mu``; both sum to one.

Layouts: the public functions take and return costs and plans as (B, m, n) (prototypes first);
the solvers work on (B, n, m) (points first, prototypes last, the axis they reduce over fastest),
and the functions and arguments that use it say so (``cost_points_by_prototypes``,
``solve_points_first``, ``cost_nm``).

Modules: :mod:`.cost` (the cost), :mod:`.exact` (closed form + Newton root, exact backward),
:mod:`.fixed_point` (Prop. 4.2 / 4.3 of the paper), :mod:`.kernel` (the Gibbs kernel both
solvers use), :mod:`.solve` (the entry points), :mod:`.checks` (argument and input checks),
:mod:`.weighted` (the pooling sum), :mod:`.runtime` (compute dtype, autocast guard).
"""
from gspdml.pooling.transport.checks import SOLVERS, check_solver_args
from gspdml.pooling.transport.cost import (
    CHANNELS_FIRST_MIN_N,
    COST_BOUND,
    KINK_TOLERANCE,
    channels_first,
    cost_points_by_prototypes,
    normalize_max1,
    prefer_rows,
    prototype_cost,
)
from gspdml.pooling.transport.runtime import is_tracing, no_autocast, solver_dtype
from gspdml.pooling.transport.solve import TransportResult, partial_transport, solve_points_first
from gspdml.pooling.transport.weighted import weighted_sum

__all__ = [
    "CHANNELS_FIRST_MIN_N",
    "COST_BOUND",
    "KINK_TOLERANCE",
    "SOLVERS",
    "TransportResult",
    "channels_first",
    "check_solver_args",
    "cost_points_by_prototypes",
    "is_tracing",
    "no_autocast",
    "normalize_max1",
    "partial_transport",
    "prefer_rows",
    "prototype_cost",
    "solve_points_first",
    "solver_dtype",
    "weighted_sum",
]
