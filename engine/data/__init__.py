"""The data layer: official-layout loaders paired by image id, committed splits, a preprocessing cache,
batched augmentation, and the ``synthetic`` dataset.

Public API::

    load_split(dataset, split, *, protocol="clean", size=256, root=None, cache_dir=None, seed=0) -> SegArrays
    SegArrays, data_root, dataset_available, list_datasets, DataError, check_eval_allowed,
    normalise, augment_batch

Modules: ``layouts`` (folder layouts, discovery, pairing rules), ``decode`` (image/mask rules),
``cache`` (preprocessing cache), ``splits`` (split rules, committed lists, overlap guard), ``synthetic``,
``augment``, ``make_splits`` (regenerates ``splits/*.txt``). CLI: ``python -m studies.data``.
"""

from .augment import augment_batch, draw_run_angle, normalise
from .errors import DataError, DataWarning
from .fingerprint import DataFingerprint, data_fingerprint
from .loader import SegArrays, data_root, dataset_available, list_datasets, load_split
from .splits import check_eval_allowed

__all__ = [
    "load_split", "SegArrays", "data_root", "dataset_available", "DataError", "DataWarning",
    "check_eval_allowed", "data_fingerprint", "DataFingerprint", "normalise", "augment_batch", "draw_run_angle", "list_datasets",
]
