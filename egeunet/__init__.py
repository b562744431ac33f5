"""EGE-UNet and its ablation variants (models only: nothing here knows about training)."""

from zoo.contract import SegOutput, as_seg_output, loss_weights_of, predict_proba
from egeunet.layers import GAB, GHPA, LayerNormCF
from egeunet.model import EGEUNet, EGEUNetConfig, expected_params, scaled_widths
from egeunet.official import OfficialCheckpointError, load_official_state_dict
from zoo.registry import create_model, get_entry, list_models, register_model

__all__ = [
    "EGEUNet", "EGEUNetConfig", "GAB", "GHPA", "LayerNormCF", "OfficialCheckpointError", "SegOutput",
    "as_seg_output", "create_model", "expected_params", "get_entry", "list_models", "load_official_state_dict",
    "loss_weights_of", "predict_proba", "register_model", "scaled_widths",
]
__version__ = "0.1.0"
