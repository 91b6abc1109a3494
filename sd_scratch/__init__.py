__version__ = "0.1.0"

# A later lesson may add methods to an earlier lesson's class with fastcore's `@patch` (lesson 07b gives
# `StableDiffusion` its `load_lora` / `unload_lora`). Importing those lessons' modules here makes the whole API
# present whatever a user imports first (`from sd_scratch.pipeline import StableDiffusion` included), while no
# lesson's module imports a later one. This file is not exported from a notebook: nbdev only keeps its
# `__version__` line up to date.
from . import lora as _lora  # noqa: F401,E402  (patches StableDiffusion.load_lora / unload_lora)
# Lessons 07f and 07g add their model kinds, data kinds and recipes (`inpaint_toy`, `control_toy`) to 07c's registries when
# imported; importing them here makes `train_run('inpaint_toy', ...)` work whatever was imported first.
from . import inpaint as _inpaint, controlnet as _controlnet  # noqa: F401,E402
