"""The methods, each its losses and phases on the one loop of ``engine.py``: one module per
method, registered in :data:`METHODS` in the order they are imported here (the order of the
CLI's choices).

``base`` holds the interface (:class:`Task`, :class:`Phase`, :class:`Method`,
:class:`TaskEnd`, the registry), ``replay`` the inversion replay component, ``features`` the
class statistics of frozen features (NCM, FeCAM, FeTrIL), ``lwfproto`` the authors' LwF with
prototypes that the drift methods (LDC, ADC) build on.
"""

from .base import METHODS, Method, Phase, Task, TaskEnd, build_method, method_keys, register, unused_keys
from .replay import InversionReplay
from .finetune import Finetune
from .joint import Joint
from .lwf import LwF
from .deepinversion import DeepInversion
from .abd import ABD
from .rdfcil import RDFCIL, ClassCounts
from .ncm import NCM
from .fecam import FeCAM
from .fetril import FeTrIL
from .acil import ACIL
from .dsal import DSAL
from .efc import EFC
from .efcpp import EFCPlusPlus
from .lwfproto import LwFPrototypes
from .ldc import LDC
from .adc import ADC

__all__ = ["METHODS", "Method", "Phase", "Task", "TaskEnd", "build_method", "method_keys", "register",
           "unused_keys", "InversionReplay", "Finetune", "Joint", "LwF", "DeepInversion", "ABD", "RDFCIL",
           "ClassCounts", "NCM", "FeCAM", "FeTrIL", "ACIL", "DSAL",
           "EFC", "EFCPlusPlus", "LwFPrototypes", "LDC", "ADC"]
