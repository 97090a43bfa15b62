"""The PyTorch loader over Delta tables: what a trainer imports.

- :class:`DeltaLoader` (with :class:`LoaderOptions`): batches of a pinned Delta table version, sharded across
  ranks and workers, in an order that is a pure function of (seed, epoch, table version, sample index), resumable
  from one integer (``state_dict``); :class:`SlabLoader` builds batches in worker processes into shared slabs.
  With ``follow=FollowOptions(...)`` it then serves each new version of a live table as it commits.
- :func:`delta_dataset` (rows of a table, :class:`OrderOptions` for the order) and :func:`token_dataset` (the
  packed token rows of ``gold/<entity>_tokens``), :class:`MixedDataset` (several sources by weight).
- :class:`DevicePrefetcher`: batches copied to the GPU ahead of the step, from pinned memory.
"""

from loaders.dataset import DeltaDataset, OrderOptions, delta_dataset
from loaders.device import DevicePrefetcher
from loaders.follow import FollowOptions
from loaders.loader import DeltaLoader, LoaderOptions
from loaders.slabs import SlabLoader
from loaders.tokens import MixedDataset, token_dataset

__all__ = [
    "DeltaDataset",
    "DeltaLoader",
    "DevicePrefetcher",
    "FollowOptions",
    "LoaderOptions",
    "MixedDataset",
    "OrderOptions",
    "SlabLoader",
    "delta_dataset",
    "token_dataset",
]
