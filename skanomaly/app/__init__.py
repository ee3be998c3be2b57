"""The applications built on the library: the command line, the benchmark, data loaders.

- :mod:`skanomaly.app.cli`: the ``skanomaly`` command (list, fit, score,
  evaluate, benchmark).
- :mod:`skanomaly.app.benchmark`: the main job, every registered detector on
  a one-class benchmark.
- :mod:`skanomaly.app.datasets`: image folders, the MVTec AD layout and the
  embedded digits, as arrays.
"""
