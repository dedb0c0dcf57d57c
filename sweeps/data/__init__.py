"""Load, check, normalise and tokenise the classification data of a study.

Every split, whatever its source, comes out with one normalised schema (``text``, optional ``text_pair``, ``label`` as
an int id, ``example_id``, optional ``id``): :mod:`~sweeps.data.read` reads, :mod:`~sweeps.data.normalise` checks and
normalises, :mod:`~sweeps.data.task` assembles the :class:`TaskData`, :mod:`~sweeps.data.tokenise` tokenises (cached)
and :mod:`~sweeps.data.batch` pads batches; :mod:`~sweeps.data.images` reads image folders, checks every image and
turns image batches into ``pixel_values`` (image splits carry ``image`` and ``image_digest`` instead of ``text``).
Problems are :class:`~sweeps.errors.DataError` raised before any model is loaded.
"""

from sweeps.data.batch import make_collator, model_inputs
from sweeps.data.task import TaskData, load_task_data, split_fingerprint, stratified_folds
from sweeps.data.test_split import SubmissionInput, label_texts, read_test
from sweeps.data.tokenise import clear_tokenization_memo, tokenization_key, tokenize_split

__all__ = [
    "SubmissionInput",
    "TaskData",
    "clear_tokenization_memo",
    "label_texts",
    "load_task_data",
    "make_collator",
    "model_inputs",
    "read_test",
    "split_fingerprint",
    "stratified_folds",
    "tokenization_key",
    "tokenize_split",
]
