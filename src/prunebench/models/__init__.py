"""Token-pruning models; importing this package registers ``PrunedViT``, ``PrunedViTAdapter`` and
``PrunedDetector`` (the pruning losses on any MMDetection detector; ``PrunedMaskRCNN`` for
earlier configs) in MMDetection's ``MODELS`` registry (and a method protocol's optimizer
constructor and hook, :mod:`.protocol`), exposes ``SELECTORS`` (the registry a
user's own selector joins) and lets ``torch.load(weights_only=True)`` read MMEngine's
checkpoints (exactly the types they hold), so a generated ``config.py``, whose ``custom_imports``
names this package, resumes and finetunes under MMDetection's own ``tools/train.py`` and
``tools/test.py``.

The backbones, selectors and blocks need only torch, timm and mmengine: where
MMDetection is not installed (a bare GPU machine running ``scripts/gpu_bench.py``) the package
imports without the detector and without registering anything.
"""

from importlib.util import find_spec

from .methods import METHODS
from .pruned_vit import ARCHS, PrunedViT
from .registry import SELECTORS
from .selectors import GatingSelector, MlpSelector, Selector, keep_decision
from .vit_adapter import PrunedViTAdapter

__all__ = [
    "PrunedViT",
    "PrunedViTAdapter",
    "ARCHS",
    "METHODS",
    "SELECTORS",
    "Selector",
    "MlpSelector",
    "GatingSelector",
    "keep_decision",
]

if find_spec("mmdet") is not None:  # an installed but broken MMDetection still raises here
    from mmdet.registry import HOOKS, MODELS, OPTIM_WRAPPER_CONSTRUCTORS

    from ..checkpoint import allow_mmengine_checkpoints
    from .detector import PrunedDetector, PrunedMaskRCNN  # register themselves
    from .protocol import FrozenStartHook, SelectorLrConstructor

    MODELS.register_module(module=PrunedViT)
    MODELS.register_module(module=PrunedViTAdapter)
    HOOKS.register_module(module=FrozenStartHook)
    OPTIM_WRAPPER_CONSTRUCTORS.register_module(module=SelectorLrConstructor)
    allow_mmengine_checkpoints()
    __all__ += ["PrunedDetector", "PrunedMaskRCNN"]
