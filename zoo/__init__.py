"""The model zoo's shared parts: the registry of named constructors and the output contract.

Both model packages (``egeunet/``, ``baselines/``) import from here, and nothing here imports them except the
registry's lazy provider list (and any installed ``egeunet.models`` entry points).
"""

from zoo.contract import SegOutput, as_seg_output, loss_weights_of, predict_proba
from zoo.registry import ModelEntry, UnknownModelError, create_model, get_entry, list_models, register_model

__all__ = ["ModelEntry", "SegOutput", "UnknownModelError", "as_seg_output", "create_model", "get_entry",
           "list_models", "loss_weights_of", "predict_proba", "register_model"]
