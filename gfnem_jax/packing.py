"""Compute on real rows only, with static shapes: pack the live rows of a batch into a bucket.

A rollout steps every trajectory of a batch for ``max_steps`` and an evaluation pass sees every
state of ``B x (T + 1)``, most of it padding once trajectories end (in 4-D HyperGrid H = 8 about
half of it when trained, four fifths at the start). ``live_apply`` runs a function only on the
rows that are live: it gathers them to the front (a stable ``argsort``, so in their order), runs
the function on the smallest of a few static ``capacities`` that holds them (``lax.switch``:
every capacity is compiled, one runs), and scatters the results back (zeros elsewhere). The
FLOPs are those of the live rows up to the slack of the capacities (with ``geometric`` ones, less
than 2x, and at most ``floor`` rows).

Row i's result does not depend on which other rows are live: the function is applied row by row
(it must be a per-row map, e.g. a vmapped policy), so packing changes which rows are computed,
not what they are. (XLA may still round a matmul of another shape differently in the last bit;
``tests/test_packing.py`` checks agreement to float tolerance and bitwise reruns.)

Under ``jax.grad`` a ``lax.switch`` keeps the residuals of every branch (the sum of all
capacities); ``live_apply`` instead recomputes the branch in the backward pass (a custom VJP), so
its residuals are only its inputs: one more forward pass of the live rows, no padded activations.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np


def geometric(n: int, floor: int = 16, ratio: int = 2) -> tuple:
    """Capacities n, n/ratio, n/ratio^2, ... down to ``floor`` rows (ascending): a live count c is
    run on fewer than ratio * max(c, floor) rows."""
    if n < 1:
        raise ValueError(f"capacities need at least one row, got n {n}")
    sizes, k = [], n
    while True:
        sizes.append(k)
        nxt = -(-k // ratio)
        if k <= floor or nxt == k:
            break
        k = nxt
    return tuple(sorted(set(sizes)))


def fractions(n: int, fracs: Sequence[float]) -> tuple:
    """Capacities ceil(f * n) for increasing fractions ``fracs`` ending in 1.0 (ascending)."""
    return tuple(sorted({min(n, max(1, int(-(-f * n // 1)))) for f in fracs} | {n}))


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


def _gather(tree, idx):
    return jax.tree.map(lambda a: a[idx], tree)


def _scatter(tree, idx, n):
    return jax.tree.map(lambda o: jnp.zeros((n,) + o.shape[1:], o.dtype).at[idx].set(o), tree)


def live_apply(fn: Callable[[Any, Any], Any], params, rows, live, capacities: Sequence[int]):
    """``fn(params, rows)`` on the live rows only, zeros on the others.

    Args:
      fn: (params, rows with leading axis k) -> pytree of outputs with leading axis k, a per-row
        map (row i's output depends only on row i and params).
      params: any pytree (differentiable).
      rows: pytree with leading axis N (float leaves differentiable, integer leaves not).
      live: bool[N], the rows to compute.
      capacities: ascending static row counts, the last one N (``geometric`` / ``fractions``).
    Returns the outputs, leaves [N, ...]: fn's values on live rows, 0 elsewhere. With a single
    capacity (N), fn runs on all N rows and nothing is masked.
    """
    n = live.shape[0]
    caps = tuple(int(c) for c in capacities)
    if not caps or caps[-1] != n or list(caps) != sorted(set(caps)):
        raise ValueError(f"capacities must ascend and end at the row count {n}, got {caps}")
    if len(caps) == 1:
        return fn(params, rows)
    return _packed(fn, caps, params, rows, live)


def _branches(fn, caps, n):
    """One function per capacity: (params, rows, dest, live) -> outputs [n, ...], zeros at rows
    not live. ``dest``: the live rows' indices first, in order, then n (nothing) for the rest."""
    def make(k):
        def run(params, rows, dest, live):
            if k >= n:
                out = fn(params, rows)
                return jax.tree.map(lambda o: jnp.where(
                    live.reshape((-1,) + (1,) * (o.ndim - 1)), o, jnp.zeros((), o.dtype)), out)
            idx = dest[:k]
            out = fn(params, _gather(rows, jnp.minimum(idx, n - 1)))
            return jax.tree.map(lambda o: jnp.zeros((n,) + o.shape[1:], o.dtype)
                                .at[idx].set(o, mode="drop"), out)
        return run
    return [make(k) for k in caps]


def _choose(caps, live):
    n = live.shape[0]
    count = jnp.sum(live)
    order = jnp.argsort(~live, stable=True)  # live rows first, in order
    dest = jnp.where(jnp.arange(n) < count, order, n)
    which = jnp.searchsorted(jnp.asarray(caps), count)
    return dest, jnp.minimum(which, len(caps) - 1)


def _float0(x):
    return np.zeros(jnp.shape(x), jax.dtypes.float0)


def _packed(fn, caps, params, rows, live):
    n = live.shape[0]
    fl, ot, rebuild = _split(rows)
    branches = _branches(fn, caps, n)

    # every traced value is an argument (a custom VJP inside a scan must not close over tracers);
    # the integer ones (dest, live, which, integer rows) get float0 cotangents
    @jax.custom_vjp
    def run(params, fl, ot, dest, live, which):
        return jax.lax.switch(which, branches, params, rebuild(fl, ot), dest, live)

    def fwd(params, fl, ot, dest, live, which):
        return run(params, fl, ot, dest, live, which), (params, fl, ot, dest, live, which)

    def bwd(res, ct):
        params, fl_, ot_, dest, live, which = res

        def grads(k_fn):
            def g(params, fl_, ot_, dest, live, ct):
                _, vjp = jax.vjp(lambda p, f: k_fn(p, rebuild(f, ot_), dest, live), params, fl_)
                return vjp(ct)
            return g

        gp, gf = jax.lax.switch(which, [grads(b) for b in branches], params, fl_, ot_, dest,
                                live, ct)
        return (gp, gf, [_float0(x) for x in ot_], _float0(dest), _float0(live),
                _float0(which))

    run.defvjp(fwd, bwd)
    dest, which = _choose(caps, live)
    return run(params, fl, ot, dest, live, which)
