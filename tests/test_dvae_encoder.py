"""The GFlowNet encoder learns p_theta(z | x) on one image (2x2 grid, K = 3: TV by enumeration)."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
from _o2 import jit_o2

from gfnem_jax import metrics, objectives
from gfnem_jax.envs.sequence import Sequence
from gfnem_jax.gflownet import GFlowNet
from gfnem_jax.models.dvae import DVAE
from gfnem_jax.models.dvae_encoder import DVAEEncoder
from gfnem_jax.sampling import Exploration

G, K, L = 2, 3, 4


def _train(autoregressive: bool, steps=1500, B=64):
    model = DVAE(image_shape=(6, 6), grid=G, codes=K, channels=8, embed_dim=4)
    # a scaled random decoder: a peaked posterior (37 of 81 grids above 1e-3, TV 0.70 from uniform)
    theta = jax.tree.map(lambda a: 2.0 * a, model.init(jax.random.PRNGKey(0)))
    x = jnp.asarray(np.random.default_rng(0).random((6, 6)) > 0.5, jnp.float32)
    env = Sequence(L, K)
    pol = DVAEEncoder(grid=G, codes=K, channels=4, ctx_dim=16, hidden=64,
                      autoregressive=autoregressive)
    gfn = GFlowNet(env, pol, objectives.tb(), Exploration(1.0, 0.05))
    params = gfn.init(jax.random.PRNGKey(1), x)
    labels = jax.tree.map(lambda m: "z" if m else "p", pol.log_z_mask(params))
    tx = optax.multi_transform({"p": optax.adam(3e-3), "z": optax.adam(0.1)}, labels)
    opt = tx.init(params)
    xs = jnp.broadcast_to(x, (B,) + x.shape)
    lr_fn = lambda th, c, s: model.log_joint(th, c, env.terminal_value(s))

    @jit_o2  # run-bound: 1500 steps of a conv encoder take 5x longer at the tests' O0
    def train(params, opt):
        def body(c, t):
            p, o = c
            (l, _), g = jax.value_and_grad(gfn.loss, has_aux=True)(
                p, jax.random.fold_in(jax.random.PRNGKey(2), t), B, lr_fn, theta, xs)
            u, o = tx.update(g, o, p)
            return (optax.apply_updates(p, u), o), l
        return jax.lax.scan(body, (params, opt), jnp.arange(steps))

    (params, _), losses = train(params, opt)
    table = metrics.transition_table(env)
    ti = env.terminal_indices()
    q = metrics.terminal_distribution(env, pol, params, table, cond=x)[ti]
    lj = jax.vmap(lambda z: model.log_joint(theta, x, z))(model.all_latents())
    post = jax.nn.softmax(lj)
    return float(0.5 * jnp.sum(jnp.abs(q - post))), post


def test_encoder_matches_posterior_one_image():
    tv, post = _train(True)
    # the posterior is far from uniform, so matching it is not trivial
    assert float(0.5 * jnp.sum(jnp.abs(post - 1 / K ** L))) > 0.5
    assert tv < 0.05, tv
