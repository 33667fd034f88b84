"""The settings of a grammar run (``gfnem train grammar``): data, grammar, training, evaluation,
and, for method gflownet, the shared objective, exploration and EM-schedule groups
(``gfnem_jax.groups``) with the grammar's own defaults. Each is validated here; errors name
settings."""
from __future__ import annotations

import dataclasses
import os

from gfnem_jax import distributed as D
from gfnem_jax import run_dir
from gfnem_jax.config import retune, setting
from gfnem_jax.groups import EMScheduleSettings, ExplorationSettings, ObjectiveSettings
from gfnem_jax.grammar import baselines as GB
from gfnem_jax.grammar import rules as G


@dataclasses.dataclass(frozen=True)
class GrammarSettings(EMScheduleSettings, ExplorationSettings, ObjectiveSettings,
                      run_dir.CheckpointSettings):
    method: str = setting("marginal", "training method (gflownet: GFlowNet-EM, the E-step a "
                          "parse-tree GFlowNet)", choices=GB.METHODS + ("gflownet",))
    grammar: str = setting("cfg", "cfg (neural PCFG), ncfg (neural non-context-free grammar) or the "
                                  "path of a .npz grammar file (kept fixed)")
    corpus: str = setting("synthetic", "synthetic, or a text file with one sentence per line")
    gold: str = setting("", "gold trees of the training corpus (bracketed, one per line)")
    valid: str = setting("", "validation text file (default: evaluate on the training corpus)")
    valid_gold: str = setting("", "gold trees of the validation file")
    nt: int = setting(30, "number of nonterminals", min=1)
    pt: int = setting(60, "number of preterminals", min=1)
    dim: int = setting(256, "symbol embedding size", min=1)
    max_len: int = setting(20, "longest sentence kept (words)", min=2)
    vocab_size: int = setting(10000, "vocabulary size including <unk>", min=2)
    steps: int = setting(1000, "training steps", min=1)
    batch_size: int = setting(32, "sentences per step", min=1)
    seed: int = setting(0, "seed of the initialization, the batches and the samplers", min=0)
    lr: float = setting(1e-3, "Adam learning rate of the grammar", gt=0)
    grad_clip: float = setting(3.0, "gradient clipping by global norm (0 = off)", min=0)
    lr_drop: float = setting(1.0, "multiply the grammar's learning rate by this after lr_drop_at of "
                             "its updates (1 = constant)", gt=0, max=1)
    lr_drop_at: float = setting(0.75, "fraction of the grammar's updates (of the steps, for "
                                "gfn_lr_drop) after which lr_drop applies",
                                min=0, max=1)
    samples: int = setting(1, "exact-sampling: trees per sentence", min=1)
    mcmc_steps: int = setting(20, "mc-em: MH steps per training step and sentence", min=1)
    eval_mcmc_steps: int = setting(200, "NCFG evaluation / parsing: MH steps from near-uniform trees", min=1)
    log_every: int = setting(100, "steps between evaluations", min=1)
    eval_size: int = setting(0, "sentences evaluated (0 = all)", min=0)
    eval_batch: int = setting(64, "sentences per evaluation batch", min=1)
    synth_train: int = setting(2000, "synthetic corpus: training sentences", min=1)
    synth_valid: int = setting(500, "synthetic corpus: validation sentences", min=1)
    synth_nt: int = setting(5, "synthetic corpus: nonterminals of the generating grammar", min=1)
    synth_pt: int = setting(10, "synthetic corpus: preterminals of the generating grammar", min=1)
    synth_vocab: int = setting(50, "synthetic corpus: words of the generating grammar", min=2)
    synth_ncfg: bool = setting(False, "synthetic corpus: generate from a random non-context-free "
                               "grammar (each rule conditioned on the parent's label)")
    synth_rule_scale: float = setting(4.0, "synthetic NCFG corpus: logit scale of its rule tables "
                                      "(larger: the parent's label matters more)", gt=0)
    # -- method gflownet (GFlowNet-EM; grammar/gfn_em.py) --
    policy: str = setting("transformer", "gflownet: parse-tree policy: transformer (the paper's, "
                          "a transformer over the roots of each state) or span (each root from "
                          "its span's endpoints in a sentence encoding and its label, only the "
                          "candidate merges scored by a small MLP; width policy_dim, encoder "
                          "policy_enc_layers x policy_heads; grammar/span_policy.py)",
                          choices=("transformer", "span"))
    policy_layers: int = setting(6, "gflownet: transformer layers over the roots", min=1)
    policy_dim: int = setting(512, "gflownet: transformer width", min=1)
    policy_heads: int = setting(4, "gflownet: attention heads", min=1)
    policy_enc_layers: int = setting(2, "gflownet: sentence-encoder layers", min=0)
    loss: str = retune(ObjectiveSettings, "loss", "subtb", help="gflownet: E-step objective",
                       choices=("tb", "db", "subtb", "logvar", "reverse_kl", "forward_kl", "renyi",
                                "tsallis", "alpha_kl", "wake_sleep", "reverse_wake_sleep",
                                "soft_q", "munchausen", "pcl"))
    lam: float = retune(ObjectiveSettings, "lam", 1.0, help="gflownet: SubTB lambda")
    temperature: float = retune(ExplorationSettings, "temperature", 1.1,
                                help="gflownet: exploration temperature of the E-step's sampler")
    gfn_lr: float = setting(3e-4, "gflownet: Adam learning rate of the policy", gt=0)
    gfn_lr_logz: float = setting(3e-3, "gflownet: Adam learning rate of log Z(x)", gt=0)
    gfn_lr_drop: float = setting(1.0, "gflownet: multiply the policy's and log Z(x)'s learning "
                                 "rates by this after lr_drop_at of the steps (1 = constant)",
                                 gt=0, max=1)
    schedule: str = retune(EMScheduleSettings, "schedule", "adaptive",
                           help="gflownet: M-step schedule: adaptive (loss threshold) or fixed "
                                "(e_steps then m_steps)")
    e_steps: int = retune(EMScheduleSettings, "e_steps", 10)
    threshold_start: float = retune(EMScheduleSettings, "threshold_start", 0.0,
                                    help="gflownet: adaptive schedule: threshold at step 0 (0 = "
                                         "the paper's: 6 for cfg, 7 for ncfg)")
    threshold_end: float = retune(EMScheduleSettings, "threshold_end", 0.0,
                                  help="gflownet: adaptive schedule: final threshold (0 = half "
                                       "the start)")
    threshold_steps: int = retune(EMScheduleSettings, "threshold_steps", 10000,
                                  help="gflownet: adaptive schedule: steps of the linear fall "
                                       "(0 = steps)")
    ls_rounds: int = retune(EMScheduleSettings, "ls_rounds", 0,
                            help="gflownet: local-search rounds before each M-step (paper: 10)")
    ls_back: int = retune(EMScheduleSettings, "ls_back", 2, max=None,
                          help="gflownet: local search: steps undone with P_B")
    m_samples: int = setting(1, "gflownet: GFlowNet trees per sentence in each M-step (paper: 1)",
                             min=1)
    m_weights: str = setting("uniform", "gflownet: weights of the M-step's trees: uniform (1/S) or "
                             "is (self-normalised importance weights p(x,z) P_B / P_F; not with "
                             "local search)", choices=("uniform", "is"))
    forward_looking: bool = setting(True, "gflownet: forward-looking flows, the grammar's partial "
                                    "log-reward plus a learned part (off: plain learned flows)")
    n_buckets: int = setting(4, "gflownet: time buckets of the shrinking root set (0 = no shrinking)",
                             min=0)
    pack: int = setting(0, "gflownet: evaluate the states packed across sentences by root count, "
                        "in chunks of PACK states (0 = by the time buckets of n_buckets); same "
                        "values, fewer FLOPs when sentence lengths differ", min=0)
    compact: bool = setting(False, "gflownet: the rollout runs the policy only on the sentences "
                            "not yet parsed, in blocks of an eighth of the batch (off: every "
                            "sentence at every step); same trees, values to float rounding. Off "
                            "by default: at batch 32 it measured no faster (sentences end late, "
                            "two blocks)")
    posterior_only: bool = setting(False, "gflownet: train only the E-step for the fixed grammar of "
                                   "--grammar G.npz (amortised parsing)")
    eval_samples: int = setting(8, "gflownet: GFlowNet samples per sentence for best-of-K F1 and "
                                "the importance-sampling NLL bound", min=1)
    devices: int = setting(1, "gflownet: split each batch over this many devices (of all processes)",
                           min=1)
    enum_len: int = setting(8, "gflownet: exact TV / KL over labelled trees on the evaluation "
                            "sentences of at most this many words whose states number at most "
                            "enum_states (every state enumerated)", min=2)
    enum_states: int = setting(20000, "gflownet: the largest state count (forests of one sentence, "
                               "Catalan(n-1) NT^(n-1) trees alone) enumerated for the exact TV / KL "
                               "(0 = off)", min=0)
    bracket_len: int = setting(10, "gflownet: TV of bracket_samples GFlowNet trees to the exact "
                               "posterior over unlabelled bracketings on the evaluation sentences of "
                               "3..bracket_len words (2 = off; CFG, or NCFG with exact inference)",
                               min=2)
    bracket_samples: int = setting(100, "gflownet: GFlowNet trees per sentence for the bracketing TV",
                                   min=1)
    check_sentences: int = setting(8, "gflownet: evaluation sentences given the exact TV checks "
                                   "(labelled and bracketing; the first that qualify)", min=1)

    # posterior_only (amortised parsing of a fixed grammar) is a GFlowNet run sized for a CPU, with
    # the exploration that finds peaked posteriors (docs/experiments/grammar.rst, "Posteriors that
    # are right"); any of these given explicitly wins
    PRESETS = {("posterior_only", True): dict(
        method="gflownet", policy_layers=2, policy_dim=64, policy_heads=4, policy_enc_layers=1,
        temperature=3.0, steps=4000, log_every=500, gfn_lr_drop=0.1)}

    def check_processes(self, count: int) -> None:
        if count > 1 and self.method != "gflownet":
            raise ValueError(f"method {self.method} runs in one process; only method gflownet "
                             f"runs over several")

    def check(self) -> None:
        if (self.grammar == "ncfg" and self.method not in ("mc-em", "gflownet")
                and not G.annotatable(self.nt)):
            raise ValueError(f"method {self.method} on grammar ncfg needs exact inference by parent "
                             f"annotation, (nt+1)*nt <= {G.MAX_ANNOTATED}; nt={self.nt} is too many: "
                             f"use method mc-em or gflownet, or a smaller nt")
        if self.posterior_only and (self.method != "gflownet" or self.grammar in ("cfg", "ncfg")):
            raise ValueError("posterior_only needs method gflownet and a fixed grammar file (grammar G.npz)")
        if self.devices > 1:
            if self.method != "gflownet":
                raise ValueError(f"devices {self.devices}: only method gflownet runs on several devices")
            D.check_devices(self.devices, self.batch_size)
        if self.method == "gflownet":
            if self.policy_dim % self.policy_heads:
                raise ValueError(f"policy_dim {self.policy_dim} must be a multiple of policy_heads "
                                 f"{self.policy_heads}")
            if self.n_buckets > self.max_len:
                raise ValueError(f"n_buckets must be in 0..max_len={self.max_len}, got {self.n_buckets}")
            if self.ls_back > self.max_len - 1:
                raise ValueError(f"ls_back must be in 1..max_len-1={self.max_len - 1}, got {self.ls_back}")
            if self.lr_drop < 1 and self.schedule == "adaptive" and not self.posterior_only:
                raise ValueError("lr_drop < 1 needs a known number of grammar updates: set schedule "
                                 "fixed (the adaptive schedule decides its M-steps as it runs)")
            if self.m_weights == "is" and self.ls_rounds > 0:
                raise ValueError("m_weights is needs the GFlowNet's own samples: set ls_rounds "
                                 "to 0")
            if self.threshold_end > (self.threshold_start or 7.0):
                raise ValueError(f"threshold_end {self.threshold_end} must not exceed threshold_start")
        if self.grammar not in ("cfg", "ncfg") and not os.path.isfile(self.grammar):
            raise ValueError(f"grammar must be cfg, ncfg or an existing .npz file, got {self.grammar!r}")
        if self.valid_gold and not self.valid:
            raise ValueError("valid_gold needs valid (the validation text file)")
        if self.corpus == "synthetic" and (self.gold or self.valid):
            raise ValueError("gold and valid are for text corpora; the synthetic corpus has its own")
        if self.corpus != "synthetic" and not os.path.isfile(self.corpus):
            raise ValueError(f"corpus must be synthetic or an existing text file, got {self.corpus!r}")
