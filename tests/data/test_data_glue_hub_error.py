"""Without a local GLUE folder and with the Hub unreachable, load_glue says which two settings provide the data."""

import datasets
import pytest

from hf_dynamic.data import glue


def test_no_local_data_and_no_hub_names_data_dir_and_env(monkeypatch):
    monkeypatch.delenv(glue.GLUE_DIR_ENV, raising=False)
    monkeypatch.setattr(glue, "default_glue_dir", lambda: None)

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'nyu-mll/glue' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(FileNotFoundError, match=r"task 'rte'.*--data_dir.*\$HF_DYNAMIC_GLUE_DIR") as info:
        glue.load_glue("rte")
    assert "RTE/train.tsv" in str(info.value)
    assert isinstance(info.value.__cause__, ConnectionError)
