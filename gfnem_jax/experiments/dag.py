"""Bayesian structure learning (DAG-GFlowNet, Deleu et al. 2022): a GFlowNet over the DAGs of d
nodes whose reward is the posterior score log p(G) + log p(D | G), checked against the exact
posterior over every DAG (d <= 5: 25, 543, 29281 graphs).

The data are a seeded Erdos-Renyi linear-Gaussian DAG's observations (``dag.data.simulate``;
categorical with score bde, ``dag.data.simulate_discrete``) or a
user's .csv / .npy (``data``); the local scores of every (node, parent set) are computed once into
a table (``dag.scores``), so the reward of a graph is d table lookups. Training is the task runner
of ``runner`` (any objective, eps-uniform exploration, by default off-policy: ``epsilon`` 0.1);
each logged row adds the exact edge-marginal error (``edge_error``) to the exact ``l1`` / ``jsd``,
and the run writes ``OUT/posterior.npz`` (``dag.posterior.write_npz``) and ``OUT/data.npy``.

Graphs too large to enumerate (5 < d <= 50; above 14, the local-score table's limit of d 2^(d-1)
entries, the BGe score is computed per graph) train the same way without the exact metrics: each logged row then samples ``n_eval_samples``
graphs from the sampler and logs ``samples_per_s`` and, for simulated data, the edge-marginal
``auroc`` and the ``expected_shd`` against the true graph (``dag.graph_metrics``).
"""
from __future__ import annotations

import dataclasses
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from gfnem_jax.config import Settings, retune, setting
from gfnem_jax import distributed, driver, loop
from gfnem_jax.dag import data as dag_data
from gfnem_jax.dag import graph_metrics
from gfnem_jax.dag import posterior as dag_posterior
from gfnem_jax.dag import scores as dag_scores
from gfnem_jax.envs.dag import MAX_ENUM_D, DAGEnv
from gfnem_jax.experiments import runner
from gfnem_jax.groups import ExplorationSettings, OptimiserSettings

NAME = "dag"
HELP = ("Bayesian structure learning: DAGs over d nodes, reward = BGe / linear-Gaussian score of "
        "data, exact posterior for d <= 5 (DAG-GFlowNet)")
N_MODES = 10
MAX_D = 50  # above MAX_TABLE_D the BGe score is computed per graph (d masked Cholesky factors)


@dataclasses.dataclass(frozen=True)
class DagSettings(Settings):
    num_nodes: int = setting(5, "number of variables d (exact posterior: d <= 5; larger: "
                             "sample-based AUROC / expected SHD; above 14 score bge only, "
                             "computed per graph)", min=2, max=MAX_D)
    data: str = setting("", "observations [N, d] in a .csv (optional header) or .npy file; "
                        "empty: simulate a seeded Erdos-Renyi linear-Gaussian DAG")
    n_obs: int = setting(100, "simulated data: number of observations", min=2)
    edge_prob: float = setting(0.5, "simulated data: probability of each edge of a random order",
                               min=0, max=1)
    noise_scale: float = setting(1.0, "simulated data: standard deviation of each node's noise", gt=0)
    data_seed: int = setting(0, "simulated data: seed of the graph, weights and observations",
                             min=0, max=2 ** 32 - 1)
    arity: int = setting(2, "simulated data with score bde: values of each discrete variable",
                         min=2, max=16)
    score: str = setting("bge", "marginal likelihood: bge (Normal-Wishart, Kuipers et al. 2014), "
                         "lingauss (linear-Gaussian, Gaussian weights) or bde (BDeu, discrete "
                         "data: simulated with categorical conditionals unless data is given)",
                         choices=dag_scores.SCORES)
    ess: float = setting(1.0, "bde: equivalent sample size", gt=0)
    obs_scale: float = setting(1.0, "lingauss: noise standard deviation", gt=0)
    weight_scale: float = setting(1.0, "lingauss: prior standard deviation of the edge weights", gt=0)
    prior: str = setting("uniform", "structure prior: uniform, edge (-edge_penalty per edge) or "
                         "erdos_renyi (expected_edges)", choices=dag_scores.PRIORS)
    edge_penalty: float = setting(1.0, "prior edge: log p(G) = -edge_penalty * edges", min=0)
    expected_edges: float = setting(1.0, "prior erdos_renyi: expected number of edges", gt=0)
    flow: str = setting("learned", "state flow of db / subtb: learned (the MLP's flow head) or "
                        "stop (log F(s) = log R(s) - log P_F(stop | s): with db, DAG-GFlowNet's "
                        "modified detailed balance, driven by delta scores)",
                        choices=("learned", "stop"))
    max_edges: int = setting(0, "num_nodes > 5: at most this many edges per graph (the posterior "
                             "restricted to them; trajectories of max_edges + 1 steps instead of "
                             "d(d-1)/2 + 1); 0: no limit", min=0)
    n_eval_samples: int = setting(1000, "num_nodes > 5: graphs sampled at each logged row for "
                                  "the edge-marginal AUROC and expected SHD", min=1)

    def check(self):
        if self.max_edges and self.num_nodes <= MAX_ENUM_D:
            raise ValueError(f"max_edges is for graphs beyond enumeration (num_nodes > "
                             f"{MAX_ENUM_D}); num_nodes {self.num_nodes} is scored against the "
                             f"exact posterior over every DAG")
        if self.max_edges > self.num_nodes * (self.num_nodes - 1) // 2:
            raise ValueError(f"max_edges must be <= num_nodes (num_nodes - 1) / 2 = "
                             f"{self.num_nodes * (self.num_nodes - 1) // 2}, got {self.max_edges}")
        if self.num_nodes > dag_scores.MAX_TABLE_D and self.score != "bge":
            raise ValueError(f"num_nodes {self.num_nodes} needs score bge (computed per graph); "
                             f"score {self.score} is tabulated, for num_nodes <= "
                             f"{dag_scores.MAX_TABLE_D}")
        if self.flow == "stop" and hasattr(self, "objective") and not self.objective().uses_flows:
            raise ValueError(f"flow stop sets the state flows of a loss that reads them (db, "
                             f"subtb); loss {self.loss} reads none")
        m = self.num_nodes * (self.num_nodes - 1) / 2
        if self.prior == "erdos_renyi" and not self.expected_edges < m:
            raise ValueError(f"expected_edges must be < num_nodes (num_nodes - 1) / 2 = {m:g} "
                             f"for prior erdos_renyi, got {self.expected_edges}")


@functools.lru_cache(maxsize=8)
def observations(s: DagSettings):
    """(X float64[N, d], true adjacency uint8[d, d] or None) of the settings."""
    if s.data:
        return dag_data.load(s.data, d=s.num_nodes), None
    if s.score == "bde":
        sim = dag_data.simulate_discrete(s.num_nodes, s.n_obs, s.edge_prob, s.data_seed, s.arity)
        return sim.data, sim.adj
    sim = dag_data.simulate(s.num_nodes, s.n_obs, s.edge_prob, s.data_seed, s.noise_scale)
    return sim.data, sim.adj


@functools.lru_cache(maxsize=8)
def local_table(s: DagSettings) -> np.ndarray:
    """float64[d, 2^(d-1)]: every local score (marginal likelihood + prior share)."""
    x, _ = observations(s)
    try:
        local = dag_scores.scorer(x, s.score, obs_scale=s.obs_scale, prior_scale=s.weight_scale,
                                  ess=s.ess)
    except ValueError as e:
        raise ValueError(f"data file {s.data!r}: {e}" if s.data else str(e)) from None
    return dag_scores.local_table(local, s.num_nodes, s.prior, **_prior_options(s))


def build_env(s: DagSettings) -> DAGEnv:
    """The environment of reward log R(G) = score(G) - score(empty graph): the posterior is the
    same, and log Z starts near 0 instead of hundreds of nats away (the table's node-wise
    offsets table[j, 0] are subtracted). (Shifting by sum_j max_pa table[j, pa], an upper bound of
    every score, was tried for d = 8: plain TB then collapsed onto complete graphs.)"""
    if s.num_nodes > dag_scores.MAX_TABLE_D:
        return DAGEnv(s.num_nodes, bge=bge_statistics(s), max_edges=s.max_edges or None)
    t = local_table(s)
    t = t - t[:, :1]
    return DAGEnv(s.num_nodes, tuple(tuple(float(v) for v in row) for row in t),
                  max_edges=s.max_edges or None)


def bge_statistics(s: DagSettings) -> tuple:
    """(R, a, const, offset) of ``DAGEnv.bge`` as nested tuples: the BGe statistics of the data
    (``dag.scores.bge_statistics``), the structure prior's share added to const[l], and each
    node's empty-parent score as its offset (the same shift as the table's)."""
    x, _ = observations(s)
    R, a, const = dag_scores.bge_statistics(x)
    d = s.num_nodes
    const = const + dag_scores.prior_term(d, np.arange(d), s.prior, **_prior_options(s))
    offset = const[0] - 0.5 * (a + 1) * np.log(np.diag(R))
    return (tuple(tuple(float(v) for v in row) for row in R), float(a),
            tuple(float(v) for v in const), tuple(float(v) for v in offset))


def _prior_options(s: DagSettings) -> dict:
    return ({"edge_penalty": s.edge_penalty} if s.prior == "edge" else
            {"expected_edges": s.expected_edges} if s.prior == "erdos_renyi" else {})


def policy(s: DagSettings, env: DAGEnv, mlp):
    """The run's policy: the MLP, or with flow stop ``dag.mdb.DeltaFlowPolicy`` around it."""
    if s.flow == "learned":
        return mlp
    from gfnem_jax.dag.mdb import DeltaFlowPolicy
    fields = {f.name: getattr(mlp, f.name) for f in dataclasses.fields(mlp)}
    return DeltaFlowPolicy(**fields, env=env)


def mode_indices(env: DAGEnv):
    """State indices of the N_MODES graphs of highest posterior."""
    from gfnem_jax.metrics import top_reward_terminals
    return top_reward_terminals(env, env.terminal_indices(), N_MODES)


def exact_metrics(env: DAGEnv):
    """(p, target) -> {"edge_error"}: the mean |P(i->j) - P_exact(i->j)| over the d(d-1) pairs,
    both edge marginals summed over the terminal states (p, target: float[S])."""
    d = env.d
    adj = jnp.asarray(np.concatenate([np.zeros_like(a := np.asarray(
        jax.device_get(env.all_states().adj)[: env.num_dags()], np.float32)), a]))
    off = jnp.asarray(~np.eye(d, dtype=bool))

    def extra(p, target):
        m = jnp.einsum("s,sij->ij", p, adj)
        t = jnp.einsum("s,sij->ij", target, adj)
        return {"edge_error": jnp.sum(jnp.where(off, jnp.abs(m - t), 0.0)) / (d * (d - 1))}

    return extra


def write_inputs(s: DagSettings, out: str) -> None:
    """OUT/data.npy (the observations scored) and, for simulated data, OUT/true_graph.npy."""
    x, adj = observations(s)
    np.save(os.path.join(out, "data.npy"), x)
    if adj is not None:
        np.save(os.path.join(out, "true_graph.npy"), adj.astype(np.uint8))


def finish(s: DagSettings, env: DAGEnv, p: np.ndarray, out: str, primary: bool) -> dict:
    """OUT/posterior.npz: every DAG (uint8[G, d, d]), its log score log p(G) + log p(D | G), the
    exact posterior and the sampler's exact probability (float64[G] each), in the order of
    ``envs.dag.enumerate_dags``; returns their JSD and edge-marginal error (float64)."""
    G = env.num_dags()
    adj, log_score, post = dag_posterior.exact_posterior(local_table(s))
    if not primary:
        return {}
    return dag_posterior.write_npz(os.path.join(out, "posterior.npz"), adj, log_score, post,
                                   np.asarray(p, np.float64)[G:])


_TaskSettings = runner.task_settings(NAME, DagSettings)


@dataclasses.dataclass(frozen=True)
class Settings(_TaskSettings):
    """Every setting of ``gfnem train dag``: off-policy by default (eps-uniform exploration), and
    faster learning rates than the other tasks' (log Z starts ~65 nats from its value at d = 5:
    with the common lr_logz 0.05 it is still catching up at step 2000, exact JSD 0.047, against
    0.0025 with these)."""

    lr: float = retune(OptimiserSettings, "lr", 1e-3)
    lr_logz: float = retune(OptimiserSettings, "lr_logz", 0.1)
    epsilon: float = retune(ExplorationSettings, "epsilon", 0.1)
    uniform_pb: bool = retune(runner.TrainSettings, "uniform_pb", True,
                              help="fixed uniform backward policy (1/edges) instead of a learned one")


Settings.__name__ = Settings.__qualname__ = "DagRun"
TASK = True  # a task of ``runner`` (load_run, sample), with a build of its own for large d
sample, sample_row = runner.sample, runner.sample_row


def build(settings) -> driver.Experiment:
    """d <= 5: ``runner.experiment`` (exact metrics); larger: ``sampled_experiment``."""
    if settings.num_nodes <= MAX_ENUM_D:
        return runner.experiment(settings)
    return sampled_experiment(settings)


def memory_estimate(settings):
    return runner.memory_estimate(settings) if settings.num_nodes <= MAX_ENUM_D else None


def sampled_experiment(settings) -> driver.Experiment:
    """The run of a graph too large to enumerate: ``runner``'s training, evaluated by sampling
    ``n_eval_samples`` graphs at each logged row (the same key at every row)."""
    cfg = settings.to_config()
    s = settings.train()
    env, gfn, optim = runner.build(cfg)
    state, tx = runner.init_state(gfn, optim, s.seed, s.replay)
    step = runner.make_step(gfn, tx, s.batch_size, s.devices, state_index=False, replay=s.replay)
    mesh = loop.make_mesh(s.devices)
    _, true = observations(settings.env())
    n = settings.n_eval_samples
    key = jax.random.fold_in(jax.random.PRNGKey(s.seed), 0x5A3)
    draw = jax.jit(lambda params: jax.vmap(env.terminal_value)(
        gfn.sample(params, key, n, env.log_reward).terminal))
    compiled = []

    def make_chunk(k):
        run = loop.make_chunk(step, k)
        return lambda st, data: run(distributed.to_global(st, mesh))

    def summarize(m):
        return {"log_z": float(np.asarray(m["log_z"])[-1])} if "log_z" in m else {}

    def evaluate(st):
        import time
        if not compiled:  # samples/s without the compilation
            jax.block_until_ready(draw(st.sampler))
            compiled.append(True)
        t0 = time.perf_counter()
        g = np.asarray(draw(st.sampler))
        row = {"samples_per_s": n / (time.perf_counter() - t0),
               "mean_edges": float(g.sum((1, 2)).mean())}
        if true is not None:
            a = graph_metrics.auroc(graph_metrics.edge_frequencies(g), true)
            if a is not None:
                row["auroc"] = a
            row["expected_shd"] = graph_metrics.expected_shd(g, true)
        return row

    return driver.Experiment(
        name=f"{NAME}/{s.loss}", settings=settings, config=cfg, state=state,
        make_chunk=make_chunk, summarize=summarize, evaluate=evaluate,
        write_inputs=lambda out: write_inputs(settings.env(), out),
        postfix=("loss", "auroc", "expected_shd"))
