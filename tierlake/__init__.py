"""tierlake core: configuration, errors, logging set-up and the CLI entry point.

The data path lives in the sibling packages: ``pipelines`` (Kafka -> Spark -> Delta), ``tiers`` (object store,
edge cache, tape), ``loaders`` (PyTorch) and ``infra`` (the local stack of real services).
"""

__version__ = "0.1.0"
