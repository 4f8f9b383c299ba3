"""Helpers for the course *Aggregating PyTorch Models*.

Each module holds one concept; notebooks import what they teach. From the bottom up:

- `helpers.devices`      device choice, precision (bf16 where native), autocast, `eval_mode`
- `helpers.repro`        seeds, versions, git commit: what ran where
- `helpers.data`         CIFAR-10 (and a synthetic stand-in), tensor batches, splits, the training-image selectors
                         of cache keys (`Subset`, `ClassSubset`)
- `helpers.models`       the course CNN (and airbench's options: `fast_cnn`, `fit_whitening`), the student, parameter / FLOP counts, `build_model` by name and
                         `module_fingerprint` (the model digest of checkpoint keys)
- `helpers.evaluation`   `predict_logits`, `evaluate` (any data; optional test-time augmentation), the cache switch
- `helpers.training`     the training core (`run_steps`) and its entry points `train`, `train_epochs`, `train_part`
- `helpers.checkpoints`  `train_or_load(...)`: cached, atomic, config-keyed checkpoints
- `helpers.presets`      the `smoke` / `workshop` / `cpu` / `long` / `gpu` budgets
- `helpers.averaging`    state-dict averages, interpolation, BatchNorm recalibration, barriers, greedy soups
- `helpers.alignment`    permutation symmetry: the permutation spec (traced with torch.fx) and weight matching
                         (Git Re-Basin)
- `helpers.repair`       REPAIR: a merged model's hidden-unit statistics reset to the endpoints' (with or without
                         BatchNorm), on the units of the permutation spec
- `helpers.merging`      task vectors, task arithmetic and TIES-merging of fine-tunes of one base
- `helpers.ensembling`   `Ensemble` (loop or vmap), validation-fitted weights and temperature, calibration
- `helpers.distillation` the distillation loss, `distill(student, teacher, ...)` and the study protocol
                         `distillation_study` (which students to train, the temperature chosen on validation data)
- `helpers.federated`    the FedAvg algorithm over client datasets
- `helpers.stats`        mean ± std over runs, paired bootstrap intervals, `verdict` (orderings outside noise only)
- `helpers.results`      results JSON with provenance, figures, the trade-off table
- `helpers.plotting`     learning curves, interpolation curves, image grids
- `helpers.zoo`          on top: the course's cached recipes (pairs, students, FedAvg runs), their keys and their seeds
"""

__version__ = "0.1.0"
