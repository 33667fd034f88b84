"""Bayesian structure learning: the pieces behind ``gfnem train dag``.

  data       observations: a simulated Erdos-Renyi linear-Gaussian DAG, or a user's CSV / .npy
  scores     local scores log p(D_j | D_pa(j)) (BGe, linear-Gaussian), structure priors, the table
             of every (node, parent set) and the delta score of adding an edge
  posterior  the exact posterior over every DAG (d <= 5), edge marginals and their errors

The environment is ``gfnem_jax.envs.dag.DAGEnv`` (reward = a sum of the table's local scores).
"""
