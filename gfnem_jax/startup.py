"""Start-up cost: JAX's persistent compilation cache, on by default in the user's cache directory.

A training run compiles the same few XLA programs every time it starts (the chunk of updates, the
exact evaluator). With the persistent cache the second and later runs load them from disk instead
of compiling (on this 2-core CPU: ~1.5 s saved per program). Call once, before the first jit::

    from gfnem_jax.startup import enable_compilation_cache
    enable_compilation_cache(default_cache_dir())   # ~/.cache/gfnem_jax/jax_cache
    enable_compilation_cache(None)                   # off (e.g. a --no-compile-cache flag)

The thresholds are lowered so that small programs (a HyperGrid update compiles in ~1 s) are
cached too; JAX's defaults skip programs compiling in under 1 s.
"""
from __future__ import annotations

import os
from typing import Optional


def default_cache_dir() -> str:
    """$XDG_CACHE_HOME/gfnem_jax/jax_cache, or ~/.cache/gfnem_jax/jax_cache."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "gfnem_jax", "jax_cache")


def enable_compilation_cache(cache_dir: Optional[str] = "default") -> Optional[str]:
    """Turn JAX's persistent compilation cache on in ``cache_dir`` (created if missing).

    cache_dir: a directory; ``"default"`` for ``default_cache_dir()``; None turns the cache off
      (and leaves JAX's settings as they were if it was never on). Returns the directory used,
      or None. Raises ValueError if ``cache_dir`` exists and is not a directory.
    Every program is cached: minimum compile time 0 s and minimum entry size 0 bytes.
    """
    import jax

    if cache_dir is None:
        if jax.config.jax_compilation_cache_dir:
            jax.config.update("jax_compilation_cache_dir", None)
            jax.config.update("jax_enable_compilation_cache", False)
        return None
    if cache_dir == "default":
        cache_dir = default_cache_dir()
    cache_dir = os.path.abspath(os.path.expanduser(cache_dir))
    if os.path.exists(cache_dir) and not os.path.isdir(cache_dir):
        raise ValueError(f"cache_dir must be a directory, got the file {cache_dir!r}")
    os.makedirs(cache_dir, exist_ok=True)
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return cache_dir


def compiled_method(fn):
    """Decorator: run a pure method of a hashable (frozen dataclass) object as one jitted program,
    the object static.

    Called outside ``jax.jit`` (a parameter initialisation, a user's exploratory call), a flax
    ``init`` otherwise runs op by op, and every op is its own small XLA program, compiled the
    first time its shapes are seen (~0.02-0.1 s each on a 2-core CPU; a policy's init is dozens of
    them). Jitted, it is one program, cached per (object, argument shapes). Inside a jitted
    function the call is inlined as before. Arguments must be arrays, pytrees of arrays or None.
    """
    import functools

    import jax
    jitted = jax.jit(fn, static_argnums=0)

    @functools.wraps(fn)
    def method(self, *args, **kwargs):
        return jitted(self, *args, **kwargs)

    return method


_TRIM = []


def release_memory() -> bool:
    """Give the C heap's free memory back to the operating system (glibc's ``malloc_trim(0)``;
    nothing where there is no glibc). Returns whether it ran.

    XLA's compiler works in ~1 GB of heap for a large program (a grammar GFlowNet's training
    chunk on CPU) and frees it when done, but glibc keeps freed memory mapped in the arena of the
    thread that used it, so the process stays that large, and the next compilation, on another
    thread, grows it again: peaks add up program after program. Called after each compilation
    of a training chunk (``host_loop``), the peak is the largest single compilation's instead.
    Changes no numbers."""
    if not _TRIM:
        fn = None
        try:
            import ctypes
            import ctypes.util
            name = ctypes.util.find_library("c")
            if name:
                fn = getattr(ctypes.CDLL(name), "malloc_trim", None)
                if fn is not None:
                    fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
        except (OSError, AttributeError):
            fn = None
        _TRIM.append(fn)
    if _TRIM[0] is None:
        return False
    _TRIM[0](0)
    return True


_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
_LISTENING = []


def trim_after_compiles(min_seconds: float = 1.0) -> None:
    """From now on, ``release_memory`` right after every XLA compilation that took at least
    ``min_seconds`` (a JAX monitoring listener on the backend-compile event, called in the
    compiling thread before the program first runs). The compiler's freed working memory then
    goes back to the system before the program's own buffers are allocated on top of it, so a
    large program's peak is max(compilation, run) instead of their sum. Idempotent."""
    if _LISTENING:
        return
    from jax import monitoring

    def listener(event, duration, **_):
        if event == _COMPILE_EVENT and duration >= min_seconds:
            release_memory()

    monitoring.register_event_duration_secs_listener(listener)
    _LISTENING.append(listener)
