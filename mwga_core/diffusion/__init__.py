"""Video diffusion models: what the ``model`` stage and real-gradient sources are built from.

* :mod:`.schedules`: DDPM noise schedules, forward noising, the DDIM sampler.
* :mod:`.training`: the training loop and the model store key of what it makes.
* :mod:`.sampling`: clips per class from a trained model (generated queries, ``mwga model-check``).
* :mod:`.model_check`: did the trained model learn motion?
* Per-clip gradients, composed by a gradient source (``plugins/gradients/diffusion.py``) and reusable by
  any other: :mod:`.objectives` (what is differentiated), :mod:`.engines` (how per-example gradients are
  computed, with :mod:`.per_sample`'s closed forms) and :mod:`.contrasts` (counterfactual clips, loss
  regions).
"""
