"""Counterfactual evaluation of attribution: LDS over random training subsets and retraining without a
query's top-k clips, on a model mwga trains (``mwga counterfactual``, :mod:`mwga_core.cli.counterfactual`)."""
