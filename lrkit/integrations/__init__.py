"""Adapters that feed :class:`lrkit.monitor.Monitor` from other training loops.

- :mod:`lrkit.integrations.lightning`: ``LightningMonitor``, a ``lightning.pytorch.Callback``
  (``pip install lightning``);
- :mod:`lrkit.integrations.hf`: ``HFMonitor``, a ``transformers.TrainerCallback``
  (``pip install transformers accelerate``).

Each module imports its framework when imported and raises ``ImportError`` with the install
command when it is missing; this package itself imports neither.
"""

__all__: list[str] = []
