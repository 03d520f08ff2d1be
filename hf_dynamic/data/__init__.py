"""Data for hf_dynamic: GLUE (:mod:`.glue`), its metrics (:mod:`.metrics`), text corpora (:mod:`.text`) and
windowed perplexity (:mod:`.perplexity`). Submodules are imported on demand; ``datasets`` only inside the
functions that build datasets. Sources, offline fallbacks and reference figures: docs/data.md."""
