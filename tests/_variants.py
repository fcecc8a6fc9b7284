"""The modern Adam variants (issue 26), each built with storage options.

``VARIANTS[name](lr, **options)`` builds the variant; ``options`` are the
storage and guard options every variant takes (``mu_dtype``/``nu_dtype``,
``skip_nonfinite``), passed where the variant has them: schedule-free AdamW
keeps no first moment, AdaMaxW (like optax's) has no storage dtypes.
"""

import adam_jax


def _moments(options, first=True):
  keep = ("nu_dtype", "skip_nonfinite") + (("mu_dtype",) if first else ())
  return {k: v for k, v in options.items() if k in keep}


VARIANTS = {
  "adopt": lambda lr, **o: adam_jax.adopt(lr, **_moments(o)),
  "adopt-cautious": lambda lr, **o: adam_jax.adopt(lr, cautious=True, **_moments(o)),
  "ademamix": lambda lr, **o: adam_jax.ademamix(lr, **_moments(o)),
  "radam": lambda lr, **o: adam_jax.radam(lr, **_moments(o)),
  "stable-adamw": lambda lr, **o: adam_jax.adamw(
    lr, weight_decay=0.01, update_clipping=True, **_moments(o)
  ),
  "adam-atan2": lambda lr, **o: adam_jax.adamw(lr, atan2=True, **_moments(o)),
  "cautious-adamw": lambda lr, **o: adam_jax.adamw(lr, cautious=True, **_moments(o)),
  "schedule-free-adamw": lambda lr, **o: adam_jax.schedule_free_adamw(
    lr, **_moments(o, first=False)
  ),
  "adamaxw": lambda lr, **o: adam_jax.adamaxw(
    lr, **{k: v for k, v in o.items() if k == "skip_nonfinite"}
  ),
}
# Variants without a storage-dtype option (AdaMax's infinity norm, as optax's).
NO_STORAGE = ("adamaxw",)
