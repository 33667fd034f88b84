"""Bayesian structure learning: the pieces behind ``gfnem train dag``.

  data           observations: a simulated Erdos-Renyi linear-Gaussian (or categorical) DAG, or a
                 user's CSV / .npy
  scores         local scores log p(D_j | D_pa(j)) (BGe, linear-Gaussian, BDeu), structure priors,
                 the table of every (node, parent set) and the delta score of adding an edge
  posterior      the exact posterior over every DAG (d <= 5), edge marginals, JSD, posterior.npz
  mdb            DAG-GFlowNet's modified detailed balance, as a policy whose state flow is
                 log R(s) - log P_F(stop | s)
  graph_metrics  sample-based edge-marginal AUROC and expected SHD against a true graph
  weights        the Gaussian posterior of the linear-Gaussian edge weights given a graph

The environment is ``gfnem_jax.envs.dag.DAGEnv`` (reward = a sum of local scores).
"""
