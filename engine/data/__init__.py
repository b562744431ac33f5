"""The data layer: official-layout loaders paired by image id, committed splits, a preprocessing cache,
batched augmentation, and the ``synthetic`` dataset.

Public API::

    load_split(dataset, split, *, protocol="clean", size=256, root=None, cache_dir=None, seed=0) -> SegArrays
    SegArrays, data_root, dataset_available, list_datasets, DataError, check_eval_allowed,
    normalise, augment_batch, data_fingerprint, pairs_fingerprint
    is_dataset_name(name) -> bool, canonical_dataset(name) -> str, split_id_lists(dataset, protocol) -> dict

Datasets: ``isic2018``, ``isic2017``, ``ph2``, ``synthetic`` and ``folder:PATH`` (any folder of image/mask pairs,
:mod:`engine.data.folder`).

Modules: ``layouts`` (official folder layouts, discovery, pairing rules), ``folder`` (the ``folder:PATH``
layout and its split lists), ``decode`` (image/mask rules),
``cache`` (preprocessing cache), ``splits`` (split rules, committed lists, overlap guard), ``synthetic``,
``augment``, ``make_splits`` (regenerates ``splits/*.txt``). CLI: ``python -m studies.data``.
"""

from .augment import augment_batch, draw_run_angle, normalise
from .errors import DataError, DataWarning
from .fingerprint import DataFingerprint, data_fingerprint, pairs_fingerprint
from .loader import (SegArrays, canonical_dataset, data_root, dataset_available, is_dataset_name, list_datasets,
                     load_split, split_id_lists)
from .splits import check_eval_allowed

__all__ = [
    "load_split", "SegArrays", "data_root", "dataset_available", "DataError", "DataWarning",
    "check_eval_allowed", "data_fingerprint", "DataFingerprint", "normalise", "augment_batch", "draw_run_angle", "list_datasets",
    "is_dataset_name", "canonical_dataset", "split_id_lists", "pairs_fingerprint",
]
