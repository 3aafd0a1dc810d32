"""Model adapters and the spec resolver. Importing this package never imports torch.

``resolve(role, spec, ...)`` turns a spec string into a ``ModelAdapter`` and checks what is cheap
to check (spec form, files exist, TorchScript metadata, vocabulary and class-name files), so a
broken spec fails before anything is written. Weights are read by ``adapter.load()``; missing
weights raise ``WeightsNotFoundError``; failstore never downloads anything.
``load_model(store, name)`` rebuilds an adapter from its row of the store's ``models`` table
(checking the checkpoint's sha256). ``save_state_dict_dir`` writes the state-dict directory
format (factory + safetensors). See docs/models.md.
"""

from __future__ import annotations

from failstore.models.base import FeatureAdapter
from failstore.models.clip import DEFAULT_TAG_THRESHOLD, ClipAdapter, tags_from_scores
from failstore.models.loading import load_model
from failstore.models.specs import resolve
from failstore.models.statedict import save_state_dict_dir
from failstore.models.vocab import read_class_names, read_vocab, write_vocab
from failstore.models.weights import sha256_file

__all__ = [
    "DEFAULT_TAG_THRESHOLD",
    "ClipAdapter",
    "FeatureAdapter",
    "load_model",
    "read_class_names",
    "read_vocab",
    "resolve",
    "save_state_dict_dir",
    "sha256_file",
    "tags_from_scores",
    "write_vocab",
]
