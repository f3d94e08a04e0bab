"""Models (the contract's ``ModelManager`` and ``LLMType``): find, fetch, mirror and classify them."""

from tasks.models.local import (EMBEDDED_MODELS, INCOMPLETE_MARKER, ModelNotFoundError, ModelRef, holds_weights,
                                search_roots, validate_model_path)
from tasks.models.manager import ModelManager
from tasks.models.mirror import MirrorError, download_model, upload_model
from tasks.models.types import MODELS, LLMType, get_model_prompt_keys, get_model_type

__all__ = ["EMBEDDED_MODELS", "INCOMPLETE_MARKER", "LLMType", "MODELS", "MirrorError", "ModelManager",
           "ModelNotFoundError", "ModelRef", "download_model", "get_model_prompt_keys", "get_model_type",
           "holds_weights", "search_roots", "upload_model", "validate_model_path"]
