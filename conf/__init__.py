"""mwga's packaged Hydra configs (installed as ``mwga_conf``)."""
