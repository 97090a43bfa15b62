"""Training state in the lake: tiered asynchronous checkpoints through ``torch.distributed.checkpoint``.

A checkpoint is written to the nearest tier (the node's SSD folder), committed by a manifest written last, and
promoted in the background to the edge NVMe folder and to Ceph RGW (``training/checkpoints/<run>/<step>/``).
:func:`~training.restore.load_latest` restores the newest committed checkpoint from the nearest tier whose
checksums pass, tier by tier.
"""
