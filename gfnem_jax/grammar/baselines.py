"""The paper's exact / MCMC baselines for grammar induction, as pure jittable pieces.

All three update theta (the parameters of a ``NeuralGrammar`` / ``TableGrammar`` ``model``) with
one optimizer step per training step on a batch of sentences (words int32[B, N], lengths [B]):
  marginal        loss = -(1/B) sum_b log p_theta(x_b)            (inside, autodiff = exact E-step)
  exact-sampling  z_bs ~ p_theta(z | x_b) exactly (S per sentence), then the M-step
  mc-em           z_b from a Metropolis-Hastings chain of local tree moves (one persistent chain
                  per training sentence, started from near-uniform trees), then the M-step
M-step: loss -(1/B) sum_b sum_s (1/S) log p_theta(x_b, z_bs) (``em.joint_terms``, the same code
path as GFlowNet-EM's M-step), a ``loop.Update`` stepped by ``loop.make_step``. mc-em only
needs log p(x, z), so it also trains the NCFG.

MH moves (all symmetric, so the acceptance is min(1, p(x, z') / p(x, z))): pick a node slot
t uniformly among the n-1 internal nodes and one of three moves uniformly:
  relabel      label_t <- uniform over NT;
  rotate right X = [i, j) with left child Y = [i, k) split m:  X split m, Y <- [m, j) split k;
  rotate left  X = [i, j) with right child Y = [k, j) split m: X split m, Y <- [i, m) split k.
Rotations keep slots and labels with their nodes; a right rotation at t is undone by a left
rotation at t. An impossible rotation (the child is a word) proposes z itself.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from gfnem_jax import em, keys, loop
from gfnem_jax.grammar import inside
from gfnem_jax.grammar import rules as G
from gfnem_jax.grammar.tree import Tree

METHODS = ("marginal", "exact-sampling", "mc-em")


def random_trees(key, lengths: jax.Array, max_len: int, nt: int) -> Tree:
    """Near-uniform trees: n-1 merges of two adjacent roots chosen uniformly, labels uniform.
    (The merge order is the bottom-up order of the slots.) Tree leaves [B, ...]."""
    M = max_len - 1

    def one(k, n):
        def body(t, c):
            alive, tree = c
            kt = jax.random.fold_in(k, t)
            k1, k2 = jax.random.split(kt)
            interior = alive & (jnp.arange(max_len + 1) > 0) & (jnp.arange(max_len + 1) < n)
            b = jax.random.categorical(k1, jnp.where(interior, 0.0, -jnp.inf))
            pos = jnp.arange(max_len + 1)
            lft = jnp.max(jnp.where(alive & (pos < b), pos, 0))
            rgt = jnp.min(jnp.where(alive & (pos > b), pos, max_len))
            lab = jax.random.randint(k2, (), 0, nt)
            live = t < n - 1
            put = lambda a, v: a.at[t].set(jnp.where(live, v, 0))
            tree = Tree(put(tree.left, lft), put(tree.split, b), put(tree.right, rgt),
                        put(tree.label, lab), tree.length)
            return alive.at[b].set(alive[b] & ~live), tree

        z = jnp.zeros((M,), jnp.int32)
        alive = jnp.arange(max_len + 1) <= n
        _, tree = jax.lax.fori_loop(0, M, body, (alive, Tree(z, z, z, z, n)))
        return tree

    keys = jax.vmap(lambda b: jax.random.fold_in(key, b))(jnp.arange(lengths.shape[0]))
    return jax.vmap(one)(keys, lengths.astype(jnp.int32))


def propose(key, tree: Tree, nt: int) -> Tree:
    """One symmetric local move of one tree (see module doc)."""
    k1, k2, k3 = jax.random.split(key, 3)
    n = tree.length
    t = jax.random.randint(k1, (), 0, jnp.maximum(n - 1, 1))
    move = jax.random.randint(k2, (), 0, 3)
    M = tree.left.shape[0]
    valid = jnp.arange(M) < n - 1
    i, k, j = tree.left[t], tree.split[t], tree.right[t]
    # rotate right: left child [i, k) must be internal
    is_l = valid & (tree.left == i) & (tree.right == k)
    u_l = jnp.argmax(is_l)
    m_l = tree.split[u_l]
    # rotate left: right child [k, j) must be internal
    is_r = valid & (tree.left == k) & (tree.right == j)
    u_r = jnp.argmax(is_r)
    m_r = tree.split[u_r]
    rr = (move == 1) & is_l.any()
    rl = (move == 2) & is_r.any()
    u = jnp.where(rr, u_l, u_r)
    new_split_t = jnp.where(rr, m_l, m_r)
    new_u = jnp.where(rr, jnp.stack([m_l, k, j]), jnp.stack([i, k, m_r]))
    rot = rr | rl
    split = tree.split.at[t].set(jnp.where(rot, new_split_t, k))
    left = tree.left.at[u].set(jnp.where(rot, new_u[0], tree.left[u]))
    split = split.at[u].set(jnp.where(rot, new_u[1], split[u]))
    right = tree.right.at[u].set(jnp.where(rot, new_u[2], tree.right[u]))
    label = tree.label.at[t].set(jnp.where(move == 0, jax.random.randint(k3, (), 0, nt), tree.label[t]))
    return Tree(left, split, right, label, n)


def mh_chain(log_joint_fn: Callable, key, words: jax.Array, trees: Tree, steps: int, nt: int):
    """``steps`` MH steps of every chain; log_joint_fn(words_b, tree_b) -> float[].
    Returns (trees, acceptance rate). Step s uses fold_in(key, s); chain b fold_in(., b)."""
    B = words.shape[0]
    lj = jax.vmap(log_joint_fn)(words, trees)

    def body(s, c):
        trees, lj, acc = c
        ks = jax.random.fold_in(key, s)
        keys = jax.vmap(lambda b: jax.random.fold_in(ks, b))(jnp.arange(B))
        kp = jax.vmap(lambda k: jax.random.split(k)[0])(keys)
        ku = jax.vmap(lambda k: jax.random.split(k)[1])(keys)
        new = jax.vmap(lambda k, t: propose(k, t, nt))(kp, trees)
        lj_new = jax.vmap(log_joint_fn)(words, new)
        ok = jnp.log(jax.vmap(jax.random.uniform)(ku)) < lj_new - lj
        trees = jax.tree.map(lambda a, b: jnp.where(ok.reshape((B,) + (1,) * (a.ndim - 1)), a, b), new, trees)
        return trees, jnp.where(ok, lj_new, lj), acc + jnp.mean(ok)

    trees, _, acc = jax.lax.fori_loop(0, steps, body, (trees, lj, jnp.zeros(())))
    return trees, acc / max(steps, 1)


def exact_samples(grammar, key, words, lengths, n_samples: int) -> Tree:
    """Tree leaves [B, S, ...]: S exact posterior samples per sentence (sample s: fold_in(key, s))."""
    trees = jax.vmap(lambda s: inside.sample(grammar, jax.random.fold_in(key, s), words, lengths))(
        jnp.arange(n_samples))
    return jax.tree.map(lambda a: jnp.swapaxes(a, 0, 1), trees)


# -- the training step ------------------------------------------------------------------------


class GrammarState(NamedTuple):
    """The checkpointed state of a baseline run (its layout since the first version, so every run
    folder resumes); the loop steps a ``loop.LoopState`` (``to_loop`` / ``from_loop``)."""

    params: Any
    opt_state: Any
    step: jax.Array
    key: jax.Array
    chains: Tree  # mc-em: one tree per training sentence (a single dummy row otherwise)


def to_loop(st: GrammarState) -> loop.LoopState:
    """The loop's view: the grammar in the model slot, the chains in ``extra``, no sampler."""
    return loop.LoopState(None, None, st.params, st.opt_state, jnp.zeros((), jnp.float32),
                          st.step, st.key, st.chains)


def from_loop(st: loop.LoopState) -> GrammarState:
    return GrammarState(st.model, st.model_opt, st.step, st.key, st.extra)


def init_theta(model, params0, seed: int):
    """The grammar's parameters at step 0: ``params0`` (a fixed grammar) or the model's
    initialisation from fold_in(PRNGKey(seed), keys.PARAMS)."""
    if params0 is not None:
        return params0
    return model.init(keys.tagged(jax.random.PRNGKey(seed), keys.PARAMS))


def init_state(method: str, seed: int, max_len: int, model, params0, lengths, tx) -> GrammarState:
    """The state at step 0 (``lengths`` int[N]: the training sentences' lengths, for mc-em)."""
    key = jax.random.PRNGKey(seed)
    params = init_theta(model, params0, seed)
    if method == "mc-em":
        chains = random_trees(keys.tagged(key, keys.CHAINS), jnp.asarray(lengths), max_len,
                              model.nt)
    else:
        chains = random_trees(key, jnp.full((1,), 2), max_len, model.nt)
    return GrammarState(params, tx.init(params), jnp.zeros((), jnp.int32), key, chains)


def model_update(method: str, model, tx, samples: int = 1) -> loop.Update:
    """The grammar's ``loop.Update`` on a batch {"words" int32[B, N], "lengths" int32[B], "key"
    (the step's sampling key), "trees" (mc-em: the batch's moved chains, Tree [B, 1, ...])}:
    marginal -(1/B) sum_b log p_theta(x_b) (``inside``); exact-sampling and mc-em the M-step
    -(1/B) sum_b sum_s (1/S) log p_theta(x_b, z_bs) (``em.joint_terms``) on trees sampled
    exactly (S = ``samples`` per sentence) or on the chains' trees (S = 1)."""
    rules = model.rule_log_probs

    def prepare(theta, _, batch, key, shard):
        if method == "exact-sampling":
            return {**batch, "trees": exact_samples(rules(theta), batch["key"], batch["words"],
                                                     batch["lengths"], samples)}
        return batch

    def terms(theta, _, aux):
        if method == "marginal":
            return inside.log_marginal(rules(theta), aux["words"], aux["lengths"])
        S = aux["trees"].left.shape[1]
        w = jnp.full(aux["trees"].left.shape[:2], 1.0 / S)
        return em.joint_terms(model.log_joint, theta, aux["words"], aux["trees"], w)

    def reduce(q, aux):
        return -jnp.mean(q), {}

    return loop.Update(prepare, terms, reduce, tx)


def make_step(s, model, tx, fixed: bool):
    """``step(state: loop.LoopState, data, key) -> (state, {"loss", "accept"})``: one training
    step: ``loop.make_step`` with the grammar's update alone (``loop.Schedule("model")``).

    data = {"words" int32[N, L], "lengths" int32[N]} (the whole training corpus). The batch of B
    sentences is drawn with k_idx and its trees with k_z, (k_idx, k_z) = split(fold_in(step key,
    0)) (the keys of every baseline run since the first version). mc-em first moves the batch's
    chains (``LoopState.extra``, one per training sentence) ``mcmc_steps`` MH steps under the
    current grammar and fits their trees. ``fixed``: the grammar stays as it is."""
    inner = loop.make_step(None, model_update(s.method, model, tx, s.samples),
                           loop.Schedule("model"))

    def step(st: loop.LoopState, data, key):
        k_idx, k_z = jax.random.split(jax.random.fold_in(key, 0))
        idx = jax.random.randint(k_idx, (s.batch_size,), 0, data["words"].shape[0])
        batch = {"words": data["words"][idx], "lengths": data["lengths"][idx], "key": k_z}
        acc = jnp.zeros(())
        if s.method == "mc-em":
            g = model.rule_log_probs(st.model)
            start = jax.tree.map(lambda a: a[idx], st.extra)
            new, acc = mh_chain(lambda x, z: G.log_joint(g, x, z), k_z, batch["words"], start,
                                s.mcmc_steps, model.nt)
            st = st._replace(extra=jax.tree.map(lambda a, b: a.at[idx].set(b), st.extra, new))
            batch["trees"] = jax.tree.map(lambda a: a[:, None], new)
        out, m = inner(st, batch, key)
        if fixed:
            out = out._replace(model=st.model, model_opt=st.model_opt)
        return out, {"loss": m["m_loss"], "accept": acc}

    return step


def make_chunk(step, n: int):
    """``run_chunk(state: GrammarState, data) -> (state, metrics[n])``: ``loop.make_chunk`` of
    n steps (step t's key fold_in(run_key, t)) on the loop's view of the state."""
    run = loop.make_chunk(step, n, lambda data, key, i: data)

    def run_chunk(st: GrammarState, data):
        st, m = run(to_loop(st), data)
        return from_loop(st), m

    return run_chunk
