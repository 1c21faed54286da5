"""Train / validation / test splits: PTB-XL's strat_fold where the rows have folds, else patient-disjoint.

PTB-XL's recommended split (Strodthoff et al. 2020): folds 1-8 train, 9 validation, 10 test; the folds
respect patients. Without folds, patients (all their rows together) are dealt to test, then validation,
in a seeded random order until each holds about ``test_frac`` / ``val_frac`` of the rows; the rest
train. Rows of one patient never fall in two parts. Pass ``patient_ids=record_ids`` to split by record
where a source has no patient ids (then records of one patient may fall in two parts: say so).
"""

from __future__ import annotations

import numpy as np

from crema_fast.eval.errors import SplitError

TRAIN_FOLDS, VAL_FOLDS, TEST_FOLDS = tuple(range(1, 9)), (9,), (10,)
_FROM_TABLE = object()  # "take it from the LabelTable": None means "there are none"


def _n_and_defaults(n_rows_or_table, folds, patient_ids):
    if isinstance(n_rows_or_table, (int, np.integer)):
        return int(n_rows_or_table), (None if folds is _FROM_TABLE else folds), \
            (None if patient_ids is _FROM_TABLE else patient_ids)
    table = n_rows_or_table
    n = len(table.rows)
    if folds is _FROM_TABLE:
        folds = table.strat_fold
    if patient_ids is _FROM_TABLE:
        patient_ids = table.patient_id
    return n, folds, patient_ids


def _check_len(name: str, a, n: int) -> np.ndarray:
    a = np.asarray(a)
    if a.shape != (n,):
        raise SplitError(f"split: {name}: expected shape ({n},), got {a.shape}")
    return a


def split_kind(n_rows_or_table, *, folds=_FROM_TABLE, patient_ids=_FROM_TABLE) -> str:
    """"strat_fold" or "patient": which split ``split_rows`` makes for these arguments."""
    n, folds, patient_ids = _n_and_defaults(n_rows_or_table, folds, patient_ids)
    if folds is not None and _usable_folds(_check_len("folds", folds, n)):
        return "strat_fold"
    if patient_ids is not None:
        return "patient"
    raise SplitError("split: the rows have neither PTB-XL strat_fold (1-10) nor patient_id; expected one of "
                     "them (a store converted before patient_id was kept: reconvert, or split by record "
                     "with --split record)")


def _usable_folds(folds: np.ndarray) -> bool:
    """Folds are used when every row has one in 1..10 (a store mixing PTB-XL with other sources does not)."""
    return bool(len(folds)) and bool(np.isin(folds, np.arange(1, 11)).all())


def describe_split(n_rows_or_table, *, folds=_FROM_TABLE, patient_ids=_FROM_TABLE, seed: int = 0,
                   val_frac: float = 0.1, test_frac: float = 0.1) -> str:
    """A one-line name of the split for reports."""
    kind = split_kind(n_rows_or_table, folds=folds, patient_ids=patient_ids)
    if kind == "strat_fold":
        return "PTB-XL strat_fold: train 1-8, val 9, test 10"
    return f"patient-disjoint, seed {seed}, val {val_frac:g}, test {test_frac:g}"


def split_rows(n_rows_or_table, *, folds=_FROM_TABLE, patient_ids=_FROM_TABLE, seed: int = 0,
               val_frac: float = 0.1, test_frac: float = 0.1) -> dict[str, np.ndarray]:
    """{"train", "val", "test"} -> int64 positions (ascending) into the rows (0..N-1, or the LabelTable's
    rows, not store rows).

    n_rows_or_table: N or a LabelTable (whose strat_fold / patient_id are the defaults of ``folds`` /
    ``patient_ids``). folds: int (N,) PTB-XL strat_fold, 0 = none; patient_ids: (N,) any hashable ids,
    "" = unknown. strat_fold when every row has a fold, else patient-disjoint (seeded); SplitError when
    neither exists, when patient ids are missing for some rows, or a part would be empty.
    """
    n, folds, patient_ids = _n_and_defaults(n_rows_or_table, folds, patient_ids)
    for name, v in (("val_frac", val_frac), ("test_frac", test_frac)):
        if not 0 < v < 1:
            raise SplitError(f"split: {name}: expected a fraction in (0, 1), got {v!r}")
    if val_frac + test_frac >= 1:
        raise SplitError(f"split: val_frac + test_frac: expected < 1, got {val_frac + test_frac:g}")
    kind = split_kind(n, folds=folds, patient_ids=patient_ids)
    if kind == "strat_fold":
        folds = np.asarray(folds).astype(np.int64)
        parts = {name: np.flatnonzero(np.isin(folds, which)).astype(np.int64)
                 for name, which in (("train", TRAIN_FOLDS), ("val", VAL_FOLDS), ("test", TEST_FOLDS))}
    else:
        parts = _patient_split(_check_len("patient_ids", patient_ids, n), seed, val_frac, test_frac)
    for name, idx in parts.items():
        if not len(idx):
            raise SplitError(f"split: the {name} part is empty ({kind} split of {n} rows)")
    return parts


def _patient_split(patient_ids: np.ndarray, seed: int, val_frac: float, test_frac: float) -> dict[str, np.ndarray]:
    ids = np.array([str(p).strip() for p in patient_ids.tolist()], dtype=object)
    unknown = int(((ids == "") | (ids == "nan")).sum())
    if unknown:
        raise SplitError(f"split: patient_id: {unknown} of {len(ids)} rows have none; a patient-disjoint split "
                         f"needs one per row (or split by record with --split record)")
    uniq, inverse = np.unique(ids.astype(str), return_inverse=True)
    sizes = np.bincount(inverse, minlength=len(uniq))
    order = np.random.default_rng(seed).permutation(len(uniq))
    # Deal patients in that order: test until it holds test_frac of the rows, then val, then train.
    cum = np.cumsum(sizes[order])
    n = len(ids)
    n_test = max(1, int(round(test_frac * n)))
    n_val = max(1, int(round(val_frac * n)))
    part_of = np.empty(len(uniq), dtype=np.int8)
    k_test = int(np.searchsorted(cum, n_test)) + 1  # patients until the test part is full
    k_val = int(np.searchsorted(cum, cum[min(k_test, len(cum)) - 1] + n_val)) + 1
    part_of[order[:k_test]] = 2
    part_of[order[k_test:k_val]] = 1
    part_of[order[k_val:]] = 0
    row_part = part_of[inverse]
    return {name: np.flatnonzero(row_part == code).astype(np.int64)
            for name, code in (("train", 0), ("val", 1), ("test", 2))}
