"""adam_jax: the Adam optimizer for JAX, an exact drop-in for optax's Adam family.

Replace ``optax.adam`` with ``adam_jax.adam`` (likewise ``adamw``, ``nadam``,
``nadamw``, ``amsgrad``, ``adamax``, ``adamaxw``, ``radam``,
``scale_by_adam``, and ``optax.contrib``'s ``adopt``, ``ademamix`` and
``schedule_free_adamw``) and change nothing else: same arguments, same state
fields, same float32 numbers, minus optax's low-precision NaN traps.
"""

from adam_jax._src import serialization as _serialization  # noqa: F401
from adam_jax._src.alias import KahanState as KahanState
from adam_jax._src.alias import adam as adam
from adam_jax._src.alias import adamax as adamax
from adam_jax._src.alias import adamaxw as adamaxw
from adam_jax._src.alias import adamw as adamw
from adam_jax._src.alias import amsgrad as amsgrad
from adam_jax._src.alias import nadam as nadam
from adam_jax._src.alias import nadamw as nadamw
from adam_jax._src.averaging import ParamAverageState as ParamAverageState
from adam_jax._src.averaging import averaged_params as averaged_params
from adam_jax._src.packing import PackedMoments as PackedMoments
from adam_jax._src.schedule_free import schedule_free_adamw as schedule_free_adamw
from adam_jax._src.schedule_free import (
  schedule_free_eval_params as schedule_free_eval_params,
)
from adam_jax._src.sharding import state_shardings as state_shardings
from adam_jax._src.state import ScaleByAdamSkipState as ScaleByAdamSkipState
from adam_jax._src.state import ScaleByAdamState as ScaleByAdamState
from adam_jax._src.state import ScaleByAdemamixSkipState as ScaleByAdemamixSkipState
from adam_jax._src.state import ScaleByAmsgradSkipState as ScaleByAmsgradSkipState
from adam_jax._src.state import ScaleByRmsSkipState as ScaleByRmsSkipState
from adam_jax._src.storage.factored import FactoredMoment as FactoredMoment
from adam_jax._src.storage.int4 import Int4Moment as Int4Moment
from adam_jax._src.storage.int8 import QuantizedMoment as QuantizedMoment
from adam_jax._src.storage.int8 import code_map as code_map
from adam_jax._src.transform import scale_by_adam as scale_by_adam
from adam_jax._src.variants import ademamix as ademamix
from adam_jax._src.variants import adopt as adopt
from adam_jax._src.variants import radam as radam

__version__ = "0.1.0"

__all__ = [
  "FactoredMoment",
  "Int4Moment",
  "KahanState",
  "PackedMoments",
  "ParamAverageState",
  "QuantizedMoment",
  "ScaleByAdamSkipState",
  "ScaleByAdamState",
  "ScaleByAdemamixSkipState",
  "ScaleByAmsgradSkipState",
  "ScaleByRmsSkipState",
  "adam",
  "adamax",
  "adamaxw",
  "adamw",
  "ademamix",
  "adopt",
  "amsgrad",
  "averaged_params",
  "code_map",
  "nadam",
  "nadamw",
  "radam",
  "scale_by_adam",
  "schedule_free_adamw",
  "schedule_free_eval_params",
  "state_shardings",
]
