"""Policies as pure functions: the ``Policy`` contract and its implementations."""
from gfnem_jax.nets.mlp import MLPPolicy
from gfnem_jax.nets.policy import FunctionalPolicy, Policy, PolicyOutput, encode_batch

__all__ = ["Policy", "PolicyOutput", "FunctionalPolicy", "MLPPolicy", "encode_batch"]
