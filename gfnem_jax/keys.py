"""The run's PRNG key tree, named in one place.

Every random number of a run comes from its run key ``PRNGKey(seed)``: step t uses
``fold_in(run_key, t)`` (``loop``), and what is drawn once per run comes from
``fold_in(run_key, TAG)`` with one of the tags below, far above any step number, so no two uses
share a key within a run kind. Inside a step, a function splits or folds its own key with small local indices
(documented where it does). Changing a tag changes every number of the runs that use it.
"""
from __future__ import annotations

import jax

PARAMS = 0x7FFFFFFF  # initial parameters (policy; the grammar's theta; EB-GFN's energy, sampler, chains)
CHAINS = 0x7FFFFFFE  # mc-em: the initial trees of the chains; EB-GFN: the summary after training
EVAL = 0x7FFFFFFD  # grammar: evaluation keys (sampled parses, F1 of samples)
POLICY = 0x7FFFFFFC  # grammar GFlowNet-EM: the parse-tree policy's parameters
BATCH = 0x62617463  # "batc": a step's batch, fold_in(step_key, BATCH)
MIXTURE_DATA = 0x6D6978  # "mix": the mixture's data, fold_in(PRNGKey(seed), MIXTURE_DATA)
CHECKS = 0x63686b73  # "chks": grammar: the posterior checks' samples, tagged(eval key, CHECKS)
DVAE_EVAL = 0x65766131  # "eva1": the dVAE's held-out bound, fold_in(PRNGKey(seed), DVAE_EVAL)


def tagged(key: jax.Array, tag: int) -> jax.Array:
    """``fold_in(key, tag)``: the key of a once-per-run draw."""
    return jax.random.fold_in(key, tag)
