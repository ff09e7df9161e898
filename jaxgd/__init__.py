"""jaxgd: gradient-descent training as pure JAX functions.

``fit`` trains one configuration as one compiled program; ``sweep`` trains many
(learning rates, batch sizes, seeds, penalties, folds, ...) as one compiled program per
group of equal shapes, sharded over the available devices.
"""

from . import data as data
from . import datasets as datasets
from . import feed as feed
from . import losses as losses
from . import lossform as lossform
from . import models as models
from . import search as search
from . import trackers as trackers
from .caches import clear_caches as clear_caches
from .data import batch_plan as batch_plan
from .optim import OPTIMIZERS as OPTIMIZERS
from .optim import SCHEDULES as SCHEDULES
from .optim import schedule_value as schedule_value
from .optuna_search import optuna_search as optuna_search
from .orbax_io import from_orbax as from_orbax
from .prepare import init_key as init_key
from .prepare import loss_key as loss_key
from .results import FitResult as FitResult
from .results import SweepResult as SweepResult
from .results import load as load
from .stops import STOP_REASONS as STOP_REASONS
from .sweep import sweep as sweep
from .train import fit as fit

__version__ = "0.1.0"

__all__ = [
    "FitResult",
    "OPTIMIZERS",
    "SCHEDULES",
    "STOP_REASONS",
    "batch_plan",
    "clear_caches",
    "data",
    "datasets",
    "fit",
    "from_orbax",
    "init_key",
    "load",
    "loss_key",
    "lossform",
    "sweep",
    "SweepResult",
    "losses",
    "models",
    "optuna_search",
    "schedule_value",
    "search",
    "trackers",
]
