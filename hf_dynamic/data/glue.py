"""GLUE (Wang et al., 2019) as ``datasets.DatasetDict``, from the official TSV files or the Hub.

:func:`load_glue` returns the same columns, label encoding and features as the Hub dataset ``nyu-mll/glue``
(``label`` a ``ClassLabel`` in the Hub's order, STS-B a float score; ``idx`` the row number), whichever source
it reads. Local files are read in the layouts written by GLUE's ``download_glue_data.py`` (one folder per
task, official directory names), with quoting disabled (quotes are text in these files), MRPC's UTF-8 BOM
stripped and CoLA's header-less layout handled. Only the splits whose files are present are returned, so a
folder holding just ``dev.tsv`` works. Test files (no labels) are not read.

Note: the Hub's MRPC text is the SentEval *tokenised* variant ("brother , whom"), the official TSV is not;
rows, ids and labels are the same.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from transformers.utils import logging

from ..core.validation import check_number

logger = logging.get_logger(__name__)

GLUE_DIR_ENV = "HF_DYNAMIC_GLUE_DIR"
HUB_DATASET = "nyu-mll/glue"
_REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class GlueTask:
    """One GLUE task: its Hub name and official folder, columns, labels and file layout.

    ``text_columns`` and ``label_names`` are the Hub dataset's; ``files`` pairs each split with its TSV file
    name in the official folder (:attr:`split_files` as a dict); ``file_columns`` maps each output text column
    to the file's column (a header name, or an index when ``has_header`` is false), and ``label_column``
    likewise.
    """

    name: str
    dir_name: str
    text_columns: tuple[str, ...]
    label_names: tuple[str, ...]
    is_regression: bool
    validation_splits: tuple[str, ...]
    metric_for_best_model: str
    files: tuple[tuple[str, str], ...] = field(repr=False)  # (split, file name) pairs
    file_columns: tuple[str | int, ...] = field(repr=False)
    label_column: str | int = field(repr=False)
    has_header: bool = field(default=True, repr=False)
    numeric_labels: bool = field(default=False, repr=False)  # file holds "0"/"1" rather than label names

    @property
    def split_files(self) -> dict[str, str]:
        """Split name -> TSV file name in the official folder."""
        return dict(self.files)

    @property
    def num_labels(self) -> int:
        """Number of model outputs: 1 for the regression task STS-B, else the number of classes."""
        return 1 if self.is_regression else len(self.label_names)

    @property
    def splits(self) -> tuple[str, ...]:
        """The labelled splits: ``train`` plus :attr:`validation_splits`."""
        return ("train", *self.validation_splits)

    def features(self):
        """The ``datasets.Features`` of the Hub dataset for this task."""
        import datasets

        columns = {name: datasets.Value("string") for name in self.text_columns}
        if self.is_regression:
            columns["label"] = datasets.Value("float32")
        else:
            columns["label"] = datasets.ClassLabel(names=list(self.label_names))
        columns["idx"] = datasets.Value("int32")
        return datasets.Features(columns)


_VALIDATION = ("validation",)
_NLI3 = ("entailment", "neutral", "contradiction")
_NLI2 = ("entailment", "not_entailment")
_TRAIN_DEV = (("train", "train.tsv"), ("validation", "dev.tsv"))

GLUE_TASKS: dict[str, GlueTask] = {
    task.name: task
    for task in [
        GlueTask(
            "cola", "CoLA", ("sentence",), ("unacceptable", "acceptable"), False, _VALIDATION,
            "matthews_correlation", _TRAIN_DEV,
            file_columns=(3,), label_column=1, has_header=False, numeric_labels=True,
        ),
        GlueTask(
            "sst2", "SST-2", ("sentence",), ("negative", "positive"), False, _VALIDATION, "accuracy",
            _TRAIN_DEV,
            file_columns=("sentence",), label_column="label", numeric_labels=True,
        ),
        GlueTask(
            "mrpc", "MRPC", ("sentence1", "sentence2"), ("not_equivalent", "equivalent"), False, _VALIDATION,
            "f1", _TRAIN_DEV,
            file_columns=("#1 String", "#2 String"), label_column="Quality", numeric_labels=True,
        ),
        GlueTask(
            "qqp", "QQP", ("question1", "question2"), ("not_duplicate", "duplicate"), False, _VALIDATION, "f1",
            _TRAIN_DEV,
            file_columns=("question1", "question2"), label_column="is_duplicate", numeric_labels=True,
        ),
        GlueTask(
            "stsb", "STS-B", ("sentence1", "sentence2"), (), True, _VALIDATION, "pearson",
            _TRAIN_DEV,
            file_columns=("sentence1", "sentence2"), label_column="score",
        ),
        GlueTask(
            "mnli", "MNLI", ("premise", "hypothesis"), _NLI3, False,
            ("validation_matched", "validation_mismatched"), "accuracy",
            (("train", "train.tsv"), ("validation_matched", "dev_matched.tsv"),
             ("validation_mismatched", "dev_mismatched.tsv")),
            file_columns=("sentence1", "sentence2"), label_column="gold_label",
        ),
        GlueTask(
            "qnli", "QNLI", ("question", "sentence"), _NLI2, False, _VALIDATION, "accuracy",
            _TRAIN_DEV,
            file_columns=("question", "sentence"), label_column="label",
        ),
        GlueTask(
            "rte", "RTE", ("sentence1", "sentence2"), _NLI2, False, _VALIDATION, "accuracy",
            _TRAIN_DEV,
            file_columns=("sentence1", "sentence2"), label_column="label",
        ),
        GlueTask(
            "wnli", "WNLI", ("sentence1", "sentence2"), ("not_entailment", "entailment"), False, _VALIDATION,
            "accuracy", _TRAIN_DEV,
            file_columns=("sentence1", "sentence2"), label_column="label", numeric_labels=True,
        ),
    ]
}


def get_glue_task(task: str | GlueTask) -> GlueTask:
    """The :class:`GlueTask` named ``task``: a Hub name (``"sst2"``) or official folder name (``"SST-2"``),
    case-insensitive. Raises ``ValueError`` listing the valid names otherwise."""
    if isinstance(task, GlueTask):
        return task
    if isinstance(task, str):
        key = task.strip().lower()
        for spec in GLUE_TASKS.values():
            if key in (spec.name, spec.dir_name.lower()):
                return spec
    raise ValueError(f"unknown GLUE task {task!r}; valid task names: {', '.join(GLUE_TASKS)}")


def default_glue_dir() -> Path | None:
    """``../shared/data/glue`` next to the repository root, else next to the current directory, if present."""
    for base in (_REPO_ROOT, Path.cwd()):
        candidate = (base / ".." / "shared" / "data" / "glue").resolve()
        if candidate.is_dir():
            return candidate
    return None


def resolve_glue_task_dir(task: str | GlueTask, data_dir: str | os.PathLike | None = None) -> Path | None:
    """The local folder to read ``task`` from, or ``None`` for the Hub.

    Order: ``data_dir``, then ``$HF_DYNAMIC_GLUE_DIR``, then :func:`default_glue_dir`. An explicit directory
    (argument or environment variable) must hold the task's official folder (``<dir>/RTE``), or be that
    folder itself; otherwise ``FileNotFoundError`` names the path. The implicit default is used only when it
    holds the task's folder, else the Hub is used.
    """
    spec = get_glue_task(task)
    explicit, origin = data_dir, "data_dir"
    if explicit is None and os.environ.get(GLUE_DIR_ENV):
        explicit, origin = os.environ[GLUE_DIR_ENV], f"${GLUE_DIR_ENV}"
    if explicit is not None:
        root = Path(explicit).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"GLUE data directory {str(root)!r} (from {origin}) does not exist")
        if (root / spec.dir_name).is_dir():
            return root / spec.dir_name
        if root.name.lower() == spec.dir_name.lower():
            return root
        raise FileNotFoundError(
            f"GLUE data directory {str(root)!r} (from {origin}) has no {spec.dir_name!r} folder for task "
            f"{spec.name!r}; expected {str(root / spec.dir_name)!r} with {', '.join(spec.split_files.values())}"
        )
    default = default_glue_dir()
    if default is not None and (default / spec.dir_name).is_dir():
        return default / spec.dir_name
    return None


def _label_parser(spec: GlueTask) -> Callable[[str], int | float]:
    if spec.is_regression:

        def parse(value: str) -> float:
            score = float(value)  # ValueError on non-numbers
            check_number(f"score {value!r}", score, ge=0, le=5)  # a finite number in [0, 5]
            return score

        return parse
    if spec.numeric_labels:
        valid = {str(i): i for i in range(len(spec.label_names))}
    else:
        valid = {name: i for i, name in enumerate(spec.label_names)}

    def parse(value: str) -> int:
        try:
            return valid[value]
        except KeyError:
            raise ValueError(f"unknown label {value!r} (valid: {', '.join(valid)})") from None

    return parse


def read_glue_tsv(spec: GlueTask, path: str | os.PathLike) -> dict[str, list]:
    """Read one official GLUE TSV into columns (``text_columns``, ``label``, ``idx``).

    Quoting is disabled and a UTF-8 BOM is stripped. Every row must have as many tab-separated fields as the
    header (CoLA: 4); a row that does not, or whose label is unknown, raises ``ValueError`` naming the file and
    line number. Blank lines are skipped.
    """
    spec = get_glue_task(spec)
    path = Path(path)
    parse_label = _label_parser(spec)
    columns: dict[str, list] = {name: [] for name in spec.text_columns}
    labels: list = []
    with open(path, encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        if spec.has_header:
            header = next(reader, None)
            if header is None:
                raise ValueError(f"{path}: empty file, expected a header line")
            missing = [c for c in (*spec.file_columns, spec.label_column) if c not in header]
            if missing:
                raise ValueError(
                    f"{path}:1: header {header} lacks column(s) {missing} of the official {spec.dir_name} layout"
                )
            width = len(header)
            text_index = [header.index(c) for c in spec.file_columns]
            label_index = header.index(spec.label_column)
        else:
            width = 4
            text_index = list(spec.file_columns)
            label_index = spec.label_column
        outputs = [columns[name] for name in spec.text_columns]
        for row in reader:
            if not row:
                continue
            if len(row) != width:
                raise ValueError(
                    f"{path}:{reader.line_num}: expected {width} tab-separated fields for {spec.dir_name}, "
                    f"got {len(row)}"
                )
            try:
                labels.append(parse_label(row[label_index]))
            except ValueError as error:
                raise ValueError(f"{path}:{reader.line_num}: {error}") from None
            for output, index in zip(outputs, text_index):
                output.append(row[index])
    columns["label"] = labels
    columns["idx"] = list(range(len(labels)))
    return columns


def load_glue(task: str, data_dir: str | os.PathLike | None = None):
    """GLUE ``task`` as a ``datasets.DatasetDict`` with the Hub dataset's columns, labels and features.

    Splits: ``train`` and ``validation`` (MNLI: ``validation_matched`` and ``validation_mismatched``); from
    local files, only the splits whose files exist. Source (see :func:`resolve_glue_task_dir`): ``data_dir``,
    ``$HF_DYNAMIC_GLUE_DIR``, ``../shared/data/glue``, else the Hub dataset ``nyu-mll/glue`` through
    ``datasets.load_dataset`` (its unlabelled test splits are dropped).

    Raises ``ValueError`` for an unknown task (listing the valid names) or a malformed row (naming file and
    line), ``FileNotFoundError`` for a missing directory or a task folder without any split file.
    """
    import datasets

    spec = get_glue_task(task)
    folder = resolve_glue_task_dir(spec, data_dir)
    if folder is None:
        logger.info(f"Loading GLUE {spec.name} from the Hub dataset {HUB_DATASET}")
        try:
            loaded = datasets.load_dataset(HUB_DATASET, spec.name)
        except Exception as error:  # offline, Hub unreachable, dataset not cached: say what to provide instead
            raise FileNotFoundError(
                f"no local GLUE data for task {spec.name!r} and the Hub dataset {HUB_DATASET!r} could not be loaded "
                f"({type(error).__name__}: {error}). Download the official GLUE task folders (e.g. "
                f"{spec.dir_name}/{', '.join(spec.split_files.values())}) and pass their parent folder as "
                f"data_dir= (run_glue.py: --data_dir) or set ${GLUE_DIR_ENV}"
            ) from error
        return datasets.DatasetDict({split: loaded[split] for split in spec.splits if split in loaded})
    present = {split: folder / name for split, name in spec.split_files.items() if (folder / name).is_file()}
    if not present:
        raise FileNotFoundError(
            f"GLUE folder {str(folder)!r} holds none of {', '.join(spec.split_files.values())} for task {spec.name!r}"
        )
    logger.info(f"Loading GLUE {spec.name} from {folder} ({', '.join(present)})")
    features = spec.features()
    return datasets.DatasetDict(
        {
            split: datasets.Dataset.from_dict(read_glue_tsv(spec, path), features=features, split=split)
            for split, path in present.items()
        }
    )
