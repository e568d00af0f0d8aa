"""Benchmarks, one module per phase (``synth``, ``extract``, ``fit``, ``eval``), all reporting
through :mod:`vh.bench.report`: one way of printing figures and ratios, one way of writing a
section of BENCHMARKS.md. They are run by ``vh bench <phase>`` and import what they measure
lazily, so ``vh --help`` stays fast."""
