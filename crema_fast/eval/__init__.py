"""Downstream evaluation: label sets, splits, frozen-encoder embeddings, linear probe, metrics, reports.

One concern per module: ``labels`` (store labels -> multi-hot table), ``splits`` (strat_fold or
patient-disjoint), ``embed`` (frozen encoder -> Zarr embeddings), ``probe`` (logistic probe),
``metrics`` (AUROC with a bootstrap interval, AP, F1), ``report`` (JSON, table, ROC plot).
Modules are imported on use: ``labels``/``splits``/``metrics`` need no torch.
"""
