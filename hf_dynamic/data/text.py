"""Plain-text corpora for perplexity and calibration: WikiText-2 (raw, test) and War and Peace.

Files live under a text data directory (see :func:`resolve_text_dir`) in the layout of the default ``../shared/data/text`` (docs/data.md):

- ``wikitext2``: ``wikitext-2-raw/wiki.test.raw`` (Merity et al., 2016). The file holds the non-empty rows of
  the Hub dataset ``Salesforce/wikitext`` ``wikitext-2-raw-v1`` test split, one per line, with CRLF line ends.
  :func:`load_text` normalises CRLF to LF, takes the lines without their line break as rows (what
  ``datasets.load_dataset("text", ...)`` gives), joins them with ``"\\n\\n"`` as the Hugging Face perplexity
  recipe does (``"\\n\\n".join(ds["text"])``) and strips the outer whitespace. With SmolLM2's tokenizer that is
  301,947 tokens, the count behind the reference perplexity in docs/data.md. (Keeping each row's trailing
  ``"\\n"`` before joining would give 304,838 tokens, one more per row.)
- ``warpeace``: ``gutenberg/warpeace_input.lf.txt`` (Tolstoy, Project Gutenberg ebook 2600), returned as is.
"""

from __future__ import annotations

import os
from pathlib import Path

TEXT_DIR_ENV = "HF_DYNAMIC_TEXT_DIR"
_REPO_ROOT = Path(__file__).resolve().parents[2]

TEXT_FILES = {
    "wikitext2": "wikitext-2-raw/wiki.test.raw",
    "warpeace": "gutenberg/warpeace_input.lf.txt",
}


def resolve_text_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The text data directory: ``data_dir``, else ``$HF_DYNAMIC_TEXT_DIR``, else ``../shared/data/text``
    (next to the repository root, else next to the current directory). Raises ``FileNotFoundError`` naming the
    path(s) tried when none exists."""
    if data_dir is None and os.environ.get(TEXT_DIR_ENV):
        data_dir = os.environ[TEXT_DIR_ENV]
    if data_dir is not None:
        root = Path(data_dir).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"text data directory {str(root)!r} does not exist")
        return root
    tried = []
    for base in (_REPO_ROOT, Path.cwd()):
        candidate = (base / ".." / "shared" / "data" / "text").resolve()
        if candidate.is_dir():
            return candidate
        tried.append(str(candidate))
    raise FileNotFoundError(
        f"no text data directory: pass data_dir, set ${TEXT_DIR_ENV}, or provide one of {tried}"
    )


def wikitext_rows(raw: str) -> list[str]:
    """The rows of a WikiText raw file: its lines, CRLF normalised, without their line break."""
    lines = raw.replace("\r\n", "\n").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def load_text(name: str, data_dir: str | os.PathLike | None = None) -> str:
    """The text of corpus ``name`` (``"wikitext2"`` or ``"warpeace"``); see the module docstring for the format.

    Raises ``ValueError`` for an unknown name and ``FileNotFoundError`` naming the missing file.
    """
    if name not in TEXT_FILES:
        raise ValueError(f"unknown text corpus {name!r}; valid names: {', '.join(TEXT_FILES)}")
    path = resolve_text_dir(data_dir) / TEXT_FILES[name]
    if not path.is_file():
        raise FileNotFoundError(f"text corpus {name!r}: file {str(path)!r} does not exist")
    raw = path.read_text(encoding="utf-8-sig")
    if name == "wikitext2":
        return "\n\n".join(wikitext_rows(raw)).strip()
    return raw
