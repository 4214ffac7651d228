"""Test-session settings shared by every test process (xdist workers and the runs they start).

JAX's persistent compilation cache: many tests start the runner in a subprocess on the same tiny
configs, and each would otherwise compile the same programs again. The cache is keyed by the
program, the compile options and the JAX version, so a hit is the executable a compilation
would give. ``JAX_COMPILATION_CACHE_DIR`` set by the caller wins.
"""

import os
import tempfile

os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), f"sparsejax-tests-jax-cache-{os.getuid()}"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")
