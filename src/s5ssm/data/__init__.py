"""Data: the in-memory dataset and its batching, file readers, and the built-in tasks.

SequenceDataset, collate, seeded_split          (dataset.py)
load_file, read_ts, read_npz, save_npz          (formats.py; ts_format.py, npz_format.py)
get_task, list_tasks, Task                      (tasks/)
Standardize, fit_standardization                (scaling.py)
"""

from .dataset import SequenceDataset, collate, seeded_split, step_scale_from_timestamps
from .formats import DataFormatError, dataset_info, load_file, read_npz, read_ts, save_npz
from .scaling import Standardize, fit_standardization
from .tasks import Task, get_task, list_tasks

__all__ = [
    "SequenceDataset",
    "collate",
    "seeded_split",
    "step_scale_from_timestamps",
    "DataFormatError",
    "dataset_info",
    "load_file",
    "read_npz",
    "read_ts",
    "save_npz",
    "Standardize",
    "fit_standardization",
    "Task",
    "get_task",
    "list_tasks",
]
