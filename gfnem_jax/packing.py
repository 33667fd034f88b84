"""Compute on real rows only, with static shapes: run a per-row function on the live rows, block by
block.

A rollout steps every trajectory of a batch for ``max_steps`` and an evaluation pass sees every
state of ``B x (T + 1)``, most of it padding once trajectories end (in 4-D HyperGrid H = 8 about
half of it when trained, four fifths at the start). ``live_apply`` runs a function only on the
rows that are live: it orders them first (a stable ``argsort``, so in their order) and runs the
function on consecutive blocks of ``block`` of them, as many blocks as the live count needs (a
``while_loop``: one compiled body, whatever the count), writing each block's results back to
its rows (zeros elsewhere). The FLOPs are those of the live rows plus less than one block.

Row i's result does not depend on which other rows are live: the function must be a per-row map
(e.g. a vmapped policy), so packing changes which rows are computed, not what they are. (XLA may
round a matmul of another shape differently in the last bit; ``tests/test_packing.py`` checks
agreement to float tolerance and bitwise reruns.)

A ``while_loop`` has no reverse-mode derivative, so ``live_apply`` carries its own (a custom VJP):
the backward pass walks the same blocks again, recomputing each block's forward pass and pulling
the cotangents through it. Its residuals are only its inputs (no padded activations are kept):
one more forward pass of the live rows.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np


def block_rows(n: int, blocks: int, floor: int = 16) -> int:
    """The block size that splits ``n`` rows into ``blocks`` blocks (at least ``floor`` rows, at
    most n): live_apply then computes at most one block more than the live rows."""
    if n < 1 or blocks < 1:
        raise ValueError(f"need n >= 1 rows and blocks >= 1, got n {n}, blocks {blocks}")
    return int(min(n, max(floor, -(-n // blocks))))


def _split(rows):
    """(float leaves, other leaves, rebuild): the rows' differentiable and integer parts."""
    leaves, tdef = jax.tree.flatten(rows)
    isf = [jnp.issubdtype(jnp.asarray(x).dtype, jnp.inexact) for x in leaves]
    fl = [x for x, f in zip(leaves, isf) if f]
    ot = [x for x, f in zip(leaves, isf) if not f]

    def rebuild(fl_, ot_):
        it_f, it_o = iter(fl_), iter(ot_)
        return jax.tree.unflatten(tdef, [next(it_f) if f else next(it_o) for f in isf])

    return fl, ot, rebuild


def _float0(x):
    return np.zeros(jnp.shape(x), jax.dtypes.float0)


def live_apply(fn: Callable[[Any, Any], Any], params, rows, live, block: int):
    """``fn(params, rows)`` on the live rows only, zeros on the others.

    Args:
      fn: (params, rows with leading axis k) -> pytree of float outputs with leading axis k, a
        per-row map (row i's output depends only on row i and params).
      params: any pytree (differentiable).
      rows: pytree with leading axis N (float leaves differentiable, integer leaves not).
      live: bool[N], the rows to compute.
      block: static rows per block (``block_rows``); block >= N runs fn once on all N rows and
        masks nothing.
    Returns the outputs, leaves [N, ...]: fn's values on live rows, 0 elsewhere.
    """
    n = live.shape[0]
    block = int(block)
    if block < 1:
        raise ValueError(f"block must be >= 1 row, got {block}")
    if block >= n:
        return fn(params, rows)
    fl, ot, rebuild = _split(rows)
    nb = -(-n // block)
    count = jnp.sum(live).astype(jnp.int32)
    order = jnp.argsort(~live, stable=True).astype(jnp.int32)  # live rows first, in order
    dest = jnp.where(jnp.arange(n) < count, order, n)  # n: no row
    dest = jnp.concatenate([dest, jnp.full((nb * block - n,), n, jnp.int32)])
    todo = (count + block - 1) // block

    def block_of(i, dest_, fl_, ot_):
        idx = jax.lax.dynamic_slice(dest_, (i * block,), (block,))
        src = jnp.minimum(idx, n - 1)  # rows past the live ones: computed, never written
        take = lambda a: a[src]
        return idx, [take(a) for a in fl_], [take(a) for a in ot_]

    def forward(params, fl_, ot_, dest_, todo_):
        idx0, f0, o0 = block_of(0, dest_, fl_, ot_)
        shapes = jax.eval_shape(lambda p, f, o: fn(p, rebuild(f, o)), params, f0, o0)
        out0 = jax.tree.map(lambda s: jnp.zeros((n,) + s.shape[1:], s.dtype), shapes)

        def body(i, out):
            idx, f, o = block_of(i, dest_, fl_, ot_)
            y = fn(params, rebuild(f, o))
            return jax.tree.map(lambda buf, v: buf.at[idx].set(v, mode="drop"), out, y)

        return jax.lax.fori_loop(0, todo_, body, out0)

    # every traced value is an argument (a custom VJP inside a scan must not close over tracers);
    # the integer ones get float0 cotangents
    @jax.custom_vjp
    def run(params, fl_, ot_, dest_, todo_):
        return forward(params, fl_, ot_, dest_, todo_)

    def fwd(params, fl_, ot_, dest_, todo_):
        return forward(params, fl_, ot_, dest_, todo_), (params, fl_, ot_, dest_, todo_)

    def bwd(res, ct):
        params, fl_, ot_, dest_, todo_ = res

        def body(i, acc):
            gp, gf = acc
            idx, f, o = block_of(i, dest_, fl_, ot_)
            real = idx < n
            src = jnp.minimum(idx, n - 1)
            ct_b = jax.tree.map(lambda c: jnp.where(
                real.reshape((-1,) + (1,) * (c.ndim - 1)), c[src], jnp.zeros((), c.dtype)), ct)
            _, vjp = jax.vjp(lambda p, f_: fn(p, rebuild(f_, o)), params, f)
            dp, df = vjp(ct_b)
            gp = jax.tree.map(jnp.add, gp, dp)
            gf = [g.at[idx].add(d, mode="drop") for g, d in zip(gf, df)]
            return gp, gf

        zeros = (jax.tree.map(jnp.zeros_like, params), [jnp.zeros_like(a) for a in fl_])
        gp, gf = jax.lax.fori_loop(0, todo_, body, zeros)
        return gp, gf, [_float0(x) for x in ot_], _float0(dest_), _float0(todo_)

    run.defvjp(fwd, bwd)
    return run(params, fl, ot, dest, todo)
