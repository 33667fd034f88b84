"""The fixed tiny grammar and sentence the GFlowNet-EM posterior tests train on
(test_grammar_gfn.py, test_span_policy.py): 2 nonterminals, 2 preterminals, 5 words, one 4-word
sentence (40 labelled trees), and the posterior-only training both policies are checked with."""
import jax
import jax.numpy as jnp
import numpy as np

from gfnem_jax import em, loop
from gfnem_jax.grammar import gfn_em as GF
from gfnem_jax.grammar import posterior as POST
from gfnem_jax.grammar import rules as G
from gfnem_jax.grammar.neural import TableGrammar
from gfnem_jax.grammar.settings import GrammarSettings

NT, PT, V, L = 2, 2, 5, 4
MODEL = TableGrammar(NT, PT, V)
THETA = G.random_grammar(jax.random.PRNGKey(3), NT, PT, V)
WORDS = np.array([[1, 4, 0, 2]], np.int32)
LENGTHS = np.array([4], np.int32)
BASE = dict(method="gflownet", max_len=L, nt=NT, pt=PT, policy_dim=32, policy_heads=2,
            policy_enc_layers=1, batch_size=16, temperature=1.0, gfn_lr=1e-3, gfn_lr_logz=3e-2,
            n_buckets=2)


def grammar_settings(base, **kw) -> GrammarSettings:
    return GrammarSettings(**{**BASE, **base, **kw})


def train_posterior(settings):
    """Posterior-only E-step (SubTB(1), forward-looking flows, learned P_B, log Z(x)) on the
    sentence: 1000 steps at learning rate 1e-3, then 250 at 1e-4 (the same Adam state).
    ``settings(**overrides)`` builds the run's settings. Returns (built, state at step 0, state at
    the end, metrics of the last chunk)."""
    s = settings()
    b = GF.build(s, MODEL, V)
    st0, tx = GF.init_state(s, b, THETA, None)
    _, tx_low = GF.init_state(settings(gfn_lr=1e-4, gfn_lr_logz=3e-3), b, THETA, None)
    data = {"tokens": jnp.asarray(WORDS), "length": jnp.asarray(LENGTHS)}
    st = st0
    for t, n in ((tx, 1000), (tx_low, 250)):
        chunk = loop.make_chunk(GF.make_step(b, t, None, False), n, em.batch_fn(b.cfg, 1))
        st, m = chunk(st, data)
    return b, st0, st, m


def exact(b, st):
    """Exact TV / KLs over labelled trees of the sampler in state ``st`` on the sentence."""
    return POST.labelled_metrics(b.env, b.gfn.policy, st.sampler, MODEL.rule_log_probs(THETA),
                                 WORDS, LENGTHS, L, 10 ** 6, 16)
