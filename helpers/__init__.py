"""Helpers for the course *Aggregating PyTorch Models*.

Each module holds one concept; notebooks import what they teach:

- `helpers.repro`        seeds, device choice, version printout
- `helpers.presets`      the `smoke` / `cpu` / `gpu` budgets
- `helpers.data`         CIFAR-10 (and synthetic stand-in), tensor batches, splits
- `helpers.models`       the course CNN and the student, parameter / FLOP counts
- `helpers.training`     `train(...) -> History`, `evaluate(...)`
- `helpers.checkpoints`  `train_or_load(...)`: cached, atomic, config-keyed checkpoints
- `helpers.pairs`        the trained model pairs of notebook 02, cached for every later notebook
- `helpers.averaging`    state-dict averages, interpolation, BatchNorm recalibration, barriers
- `helpers.alignment`    permutation symmetry: weight matching (Git Re-Basin) and REPAIR
- `helpers.ensembling`   `Ensemble` (vmap or loop), validation-fitted weights, calibration metrics
- `helpers.distillation` the distillation loss and `distill(student, teacher, ...)`
- `helpers.federated`    FedAvg over client datasets
- `helpers.results`      results JSON with provenance, figures
- `helpers.plotting`     learning curves and image grids
"""

__version__ = "0.1.0"
