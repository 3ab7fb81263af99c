"""RAFT (Teed & Deng, ECCV 2020) in plain PyTorch, matching princeton-vl/RAFT tensor for tensor.

Modules (each imports torch at the top; import them only where torch is wanted):
    extractor: the feature and context encoders (``BasicEncoder`` for RAFT-large, ``SmallEncoder``).
    corr: the all-pairs correlation pyramid and its lookup.
    update: the recurrent update blocks (motion encoder, ConvGRU / SepConvGRU, flow head, mask head).
    raft: the model, input padding and flow upsampling.
    checkpoints: loading official and torchvision state dicts, with the key mapping between them.
    train: ``mwga train-raft``, fitting RAFT-small on the synthetic benchmark's exact flow.

The attribute names follow the official code, so an official state dict (``raft-things.pth``,
``raft-small.pth``) loads into :class:`~mwga_plugins.motion.raft_net.raft.RAFT` after dropping the
``module.`` prefix that ``DataParallel`` added.
"""
