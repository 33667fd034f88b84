"""Grammar induction: everything about sentences, parse trees and grammars, imports pointing down.

  tree       ``Tree``: a parse tree in static shapes, host converters, enumeration
  rules      grammars as rule tables of log-probabilities: log p(x, z), sampling, .npz files
  inside     the inside algorithm: log p(x), Viterbi trees, exact posterior samples
  neural     the grammar models p_theta: a neural PCFG / NCFG, a fixed table grammar
  corpus     corpora: text files, bracketed gold trees, synthetic corpora from known grammars
  metrics    per-token NLL and unlabelled span F1
  env        ``ParseTree``: the parse-tree environment (bottom-up merges of adjacent roots)
  policy     ``ParsePolicy``: a transformer over the current roots
  rollout    ``Buckets``: the rollout engine that shrinks the root slots as the forest shrinks
  baselines  marginal, exact-sampling EM, MC-EM (MH chains over trees) and their training step
  gfn_em     GFlowNet-EM: the parse-tree GFlowNet, the latent variable model, the EM step
  decode     decoding a corpus (grammar or GFlowNet) and the evaluation row
  settings   the settings of a grammar run
  run        a run's pieces from its settings: data, model, optimizer, the method's ``Plan``
  parse      parsing a text corpus with a trained grammar; exporting a PCFG

The run kind itself (``gfnem train grammar``, ``gfnem parse``) is declared in
``gfnem_jax.experiments.grammar``.
"""
