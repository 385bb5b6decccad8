"""dyncore: the shared core of the dynamic-network packages (covnorm, dcd, micronet, bdl, drt).

One vocabulary for W(x) = Λ(x)·W0 + ΔW(x): a static kernel plus an input-dependent part produced by a light
coefficient branch. Submodules (import what you need; nothing heavy is imported here):

- ``dyncore.nn``          coefficient branch, dynamic kernel application (feature-wise / per-sample synthesis)
- ``dyncore.surgery``     insert or replace modules by name/type predicate, with a report
- ``dyncore.complexity``  parameters and multiply-adds with an explicit counting convention
- ``dyncore.training``    seeding, DDP (torchrun), atomic checkpoints, metrics, logs, progress
- ``dyncore.data``        embedded offline datasets and loaders for real datasets
- ``dyncore.cli``         the CLI skeleton every package reuses; ``dyncore.bench`` / ``dyncore.report``
"""

__version__ = "0.1.0"
