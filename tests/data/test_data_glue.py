"""hf_dynamic.load_glue: the four tasks in the shared GLUE folder (../shared/data/glue), synthetic folders of the other five, bad input."""

import os
import time

import pytest

from hf_dynamic.data.glue import GLUE_TASKS, get_glue_task, load_glue, read_glue_tsv, resolve_glue_task_dir

# The shared GLUE folder next to the repository root (tests/data/ is two levels below it).
SHARED_GLUE = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data", "glue"))

SHARED_TASKS = {
    # task: (train rows, validation rows, train label counts, validation label counts, first train row text)
    "rte": (2490, 277, {0: 1249, 1: 1241}, {0: 146, 1: 131},
            ("No Weapons of Mass Destruction Found in Iraq Yet.", "Weapons of Mass Destruction Found in Iraq.")),
    "mrpc": (3668, 408, {1: 2474, 0: 1194}, {1: 279, 0: 129},
             ('Amrozi accused his brother, whom he called "the witness", of deliberately distorting his evidence.',
              'Referring to him as only "the witness", Amrozi accused his brother of deliberately distorting his '
              "evidence.")),
    "cola": (8551, 1043, {1: 6023, 0: 2528}, {1: 721, 0: 322},
             ("Our friends won't buy this analysis, let alone the next one we propose.",)),
    "sst2": (67349, 872, None, None, ("hide new secretions from the parental units ",)),
}


@pytest.mark.parametrize("task", sorted(SHARED_TASKS))
def test_shared_glue_tasks(task):
    n_train, n_dev, train_counts, dev_counts, first_text = SHARED_TASKS[task]
    spec = GLUE_TASKS[task]
    data = load_glue(task, SHARED_GLUE)
    assert set(data) == {"train", "validation"}
    assert (data["train"].num_rows, data["validation"].num_rows) == (n_train, n_dev)
    assert data["train"].column_names == [*spec.text_columns, "label", "idx"]
    assert data["train"].features["label"].names == list(spec.label_names)
    first = data["train"][0]
    assert tuple(first[c] for c in spec.text_columns) == first_text
    assert data["train"]["idx"][:3] == [0, 1, 2]
    for split, counts in (("train", train_counts), ("validation", dev_counts)):
        labels = data[split]["label"]
        assert set(labels) == {0, 1}
        if counts is not None:
            assert {k: labels.count(k) for k in counts} == counts


def test_glue_label_encoding_matches_hub_order():
    # RTE's first row is "not_entailment" (index 1 on the Hub); MRPC's first row has Quality 1 (equivalent).
    assert load_glue("rte", SHARED_GLUE)["train"][0]["label"] == 1
    mrpc = load_glue("mrpc", SHARED_GLUE)
    assert mrpc["train"][0]["label"] == 1 and mrpc["train"][1]["label"] == 0
    # The BOM is gone and quotes are kept as text: MRPC dev row 0's second sentence opens with a quote.
    assert mrpc["validation"][0]["sentence2"].startswith('"The foodservice pie business')


def test_sst2_train_loads_fast():
    # The full 67k-row file: reading and Arrow conversion take ~0.4 s; the generous bound catches a per-row
    # (quadratic or Python-object-per-cell) loader, not machine noise.
    start = time.perf_counter()
    data = load_glue("sst2", SHARED_GLUE)
    assert data["train"].num_rows == 67349
    assert time.perf_counter() - start < 10.0


def test_default_dir_is_shared(monkeypatch):
    monkeypatch.delenv("HF_DYNAMIC_GLUE_DIR", raising=False)
    assert os.path.samefile(resolve_glue_task_dir("rte"), os.path.join(SHARED_GLUE, "RTE"))


def test_hub_fallback_when_no_local_copy(monkeypatch):
    """stsb is not in ../shared: load_glue goes to datasets.load_dataset("nyu-mll/glue", "stsb") and keeps the
    labelled splits only."""
    import datasets

    monkeypatch.delenv("HF_DYNAMIC_GLUE_DIR", raising=False)
    calls = []
    hub = datasets.DatasetDict({
        split: datasets.Dataset.from_dict({"sentence1": ["a"], "sentence2": ["b"], "label": [label], "idx": [0]})
        for split, label in (("train", 1.0), ("validation", 2.0), ("test", -1.0))
    })

    def fake_load_dataset(path, name, **kwargs):
        calls.append((path, name))
        return hub

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    data = load_glue("stsb")
    assert calls == [("nyu-mll/glue", "stsb")]
    assert set(data) == {"train", "validation"} and data["validation"]["label"] == [2.0]


def _write(path, lines, bom=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "\n".join("\t".join(row) for row in lines) + "\n"
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))


def _synthetic_glue(root):
    """Folders of the five tasks not in ../shared, in GLUE's official layouts (download_glue_data.py)."""
    _write(root / "STS-B" / "train.tsv", [
        ["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2", "score"],
        ["0", "main-captions", "MSRvid", "2012test", "0001", "none", "none", "A plane is taking off.",
         "An air plane is taking off.", "5.000"],
        ["1", "main-captions", "MSRvid", "2012test", "0004", "none", "none", 'A man says "hi".',
         "A man is playing a flute.", "0.800"],
    ])
    _write(root / "STS-B" / "dev.tsv", [
        ["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2", "score"],
        ["0", "main-captions", "MSRvid", "2012test", "0000", "none", "none", "A man with a hard hat is dancing.",
         "A man wearing a hard hat is dancing.", "5.000"],
    ])
    mnli_train_header = ["index", "promptID", "pairID", "genre", "sentence1_binary_parse",
                         "sentence2_binary_parse", "sentence1_parse", "sentence2_parse", "sentence1", "sentence2",
                         "label1", "gold_label"]
    mnli_dev_header = [*mnli_train_header[:10], "label1", "label2", "label3", "label4", "label5", "gold_label"]
    _write(root / "MNLI" / "train.tsv", [
        mnli_train_header,
        ["0", "31193", "31193n", "government", "( ( Conceptually ...", "( ...", "(ROOT ...", "(ROOT ...",
         "Conceptually cream skimming has two basic dimensions - product and geography.",
         "Product and geography are what make cream skimming work. ", "neutral", "neutral"],
        ["1", "101457", "101457e", "telephone", "(...", "(...", "(...", "(...",
         "you know during the season and i guess at at your level uh you lose them",
         "You lose the things to the following level if the people recall.", "entailment", "entailment"],
    ])
    _write(root / "MNLI" / "dev_matched.tsv", [
        mnli_dev_header,
        ["0", "63735", "63735n", "slate", "(...", "(...", "(...", "(...", "The new rights are nice enough",
         "Everyone really likes the newest benefits ", "neutral", "entailment", "neutral", "neutral", "neutral",
         "neutral"],
        ["1", "91383", "91383c", "government", "(...", "(...", "(...", "(...",
         "This site includes a list of all award winners.", "The Government Executive articles are not online.",
         "contradiction", "contradiction", "contradiction", "contradiction", "contradiction", "contradiction"],
    ])
    _write(root / "MNLI" / "dev_mismatched.tsv", [
        mnli_dev_header,
        ["0", "75290", "75290c", "letters", "(...", "(...", "(...", "(...", "Your contribution helped make it "
         "possible for us to provide our students with a quality education.",
         "Your contributions were of no help with our students' education.", "contradiction", "contradiction",
         "contradiction", "contradiction", "contradiction", "contradiction"],
    ])
    _write(root / "QNLI" / "train.tsv", [
        ["index", "question", "sentence", "label"],
        ["0", "When did the third Digimon series begin?",
         "Unlike the two seasons before it, Digimon Tamers takes a darker approach.", "not_entailment"],
        ["1", "Which missile batteries often have individual launchers several kilometres from one another?",
         "When MANPADS is operated by specialists, batteries may have several launchers.", "entailment"],
    ])
    _write(root / "QNLI" / "dev.tsv", [
        ["index", "question", "sentence", "label"],
        ["0", "What came into force after the new constitution was herald?",
         "As of that day, the new constitution heralding the Second Republic came into force.", "entailment"],
    ])
    _write(root / "QQP" / "train.tsv", [
        ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"],
        ["133273", "213221", "213222", "How is the life of a math student?",
         "Which level of prepration is enough?", "0"],
        ["402555", "536040", "536041", "How do I control my horny emotions?", "How do you control your horniness?",
         "1"],
    ])
    _write(root / "QQP" / "dev.tsv", [
        ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"],
        ["201359", "303345", "303346", "Why are African-Americans so beautiful?",
         "Why are hispanics so beautiful?", "0"],
    ])
    _write(root / "WNLI" / "train.tsv", [
        ["index", "sentence1", "sentence2", "label"],
        ["0", "I stuck a pin through a carrot. When I pulled the pin out, it had a hole.",
         "The carrot had a hole.", "1"],
        ["1", "John couldn't see the stage with Billy in front of him because he is so short.",
         "John is so short.", "1"],
        ["2", "The police arrested all of the gang members.", "The police were trying to stop the drug trade.", "0"],
    ])
    _write(root / "WNLI" / "dev.tsv", [
        ["index", "sentence1", "sentence2", "label"],
        ["0", "The drain is clogged with hair. It has to be cleaned.", "The hair has to be cleaned.", "0"],
    ])


@pytest.fixture
def synthetic_root(tmp_path):
    _synthetic_glue(tmp_path)
    return tmp_path


def test_synthetic_stsb(synthetic_root):
    data = load_glue("stsb", synthetic_root)
    assert set(data) == {"train", "validation"}
    assert data["train"].column_names == ["sentence1", "sentence2", "label", "idx"]
    assert data["train"].features["label"].dtype == "float32"
    assert data["train"]["label"] == pytest.approx([5.0, 0.8])
    assert data["train"][1]["sentence1"] == 'A man says "hi".'  # quotes are text
    assert data["validation"][0]["sentence2"] == "A man wearing a hard hat is dancing."


def test_synthetic_mnli(synthetic_root):
    data = load_glue("mnli", synthetic_root)
    assert set(data) == {"train", "validation_matched", "validation_mismatched"}
    assert data["train"].column_names == ["premise", "hypothesis", "label", "idx"]
    names = data["train"].features["label"].names
    assert names == ["entailment", "neutral", "contradiction"]
    assert data["train"]["label"] == [1, 0]
    assert data["train"][1]["premise"].startswith("you know during the season")
    # gold_label (last column), not label1, decides: row 0's annotators disagree (label1 neutral, gold neutral).
    assert data["validation_matched"]["label"] == [1, 2]
    assert data["validation_mismatched"]["label"] == [2]
    hypothesis = data["validation_mismatched"][0]["hypothesis"]
    assert hypothesis == "Your contributions were of no help with our students' education."


def test_synthetic_qnli_qqp_wnli(synthetic_root):
    qnli = load_glue("qnli", synthetic_root)
    assert qnli["train"].column_names == ["question", "sentence", "label", "idx"]
    assert qnli["train"]["label"] == [1, 0] and qnli["validation"]["label"] == [0]
    qqp = load_glue("qqp", synthetic_root)
    assert qqp["train"].column_names == ["question1", "question2", "label", "idx"]
    assert qqp["train"]["label"] == [0, 1]
    assert qqp["train"][1]["question2"] == "How do you control your horniness?"
    assert qqp["train"].features["label"].names == ["not_duplicate", "duplicate"]
    wnli = load_glue("wnli", synthetic_root)
    assert wnli["train"]["label"] == [1, 1, 0] and wnli["validation"]["label"] == [0]
    assert wnli["train"].features["label"].names == ["not_entailment", "entailment"]


def test_only_present_splits_and_env_var(tmp_path, monkeypatch):
    _write(tmp_path / "RTE" / "dev.tsv", [["index", "sentence1", "sentence2", "label"],
                                          ["0", "A b.", "C d.", "entailment"]])
    monkeypatch.setenv("HF_DYNAMIC_GLUE_DIR", str(tmp_path))
    data = load_glue("rte")
    assert set(data) == {"validation"} and data["validation"]["label"] == [0]
    # The task folder itself is accepted too, and MRPC-style BOM headers are read.
    _write(tmp_path / "MRPC" / "dev.tsv", [["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"],
                                           ["0", "1", "2", "x", "y"]], bom=True)
    assert load_glue("MRPC", tmp_path / "MRPC")["validation"]["label"] == [0]


def test_unknown_task():
    valid = "cola, sst2, mrpc, qqp, stsb, mnli, qnli, rte, wnli"
    with pytest.raises(ValueError, match=f"unknown GLUE task 'sst3'.*{valid}"):
        load_glue("sst3", SHARED_GLUE)
    assert get_glue_task("STS-B").name == "stsb"


def test_missing_directory(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_glue("rte", missing)
    with pytest.raises(FileNotFoundError, match="no 'STS-B' folder"):
        load_glue("stsb", SHARED_GLUE)
    (tmp_path / "RTE").mkdir()
    with pytest.raises(FileNotFoundError, match="holds none of train.tsv, dev.tsv"):
        load_glue("rte", tmp_path)


@pytest.mark.parametrize(
    "rows, message",
    [
        ([["0", "a", "b", "entailment"], ["1", "a", "b"]], r"RTE[/\\]train\.tsv:3: expected 4 tab-separated fields"),
        ([["0", "a", "b", "entailment"], ["1", "a", "b\tc", "entailment"]], r"train\.tsv:3: expected 4 .* got 5"),
        ([["0", "a", "b", "entailment"], ["1", "a", "b", "neutral"]], r"train\.tsv:3: unknown label 'neutral'"),
    ],
)
def test_malformed_rows_name_file_and_line(tmp_path, rows, message):
    _write(tmp_path / "RTE" / "train.tsv", [["index", "sentence1", "sentence2", "label"], *rows])
    with pytest.raises(ValueError, match=message):
        load_glue("rte", tmp_path)


def test_malformed_numeric_labels(tmp_path):
    _write(tmp_path / "CoLA" / "dev.tsv", [["gj04", "1", "", "Fine."], ["gj04", "2", "*", "Bad label."]])
    with pytest.raises(ValueError, match=r"CoLA[/\\]dev\.tsv:2: unknown label '2'"):
        read_glue_tsv("cola", tmp_path / "CoLA" / "dev.tsv")
    _write(tmp_path / "STS-B" / "dev.tsv", [
        ["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2", "score"],
        ["0", "g", "f", "y", "o", "s", "s", "a", "b", "7.5"]])
    with pytest.raises(ValueError, match=r"dev\.tsv:2: score '7.5' must be a number >= 0 and <= 5, got 7.5"):
        load_glue("stsb", tmp_path)
    _write(tmp_path / "QNLI" / "dev.tsv", [["index", "question", "label"], ["0", "q", "entailment"]])
    with pytest.raises(ValueError, match=r"dev\.tsv:1: header .* lacks column\(s\) \['sentence'\]"):
        load_glue("qnli", tmp_path)


def test_task_table_matches_hub():
    assert list(GLUE_TASKS) == ["cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli"]
    assert [t.dir_name for t in GLUE_TASKS.values()] == ["CoLA", "SST-2", "MRPC", "QQP", "STS-B", "MNLI", "QNLI",
                                                          "RTE", "WNLI"]
    assert GLUE_TASKS["stsb"].num_labels == 1 and GLUE_TASKS["stsb"].is_regression
    assert GLUE_TASKS["mnli"].num_labels == 3
    assert GLUE_TASKS["mnli"].validation_splits == ("validation_matched", "validation_mismatched")
    assert all(t.num_labels == 2 for n, t in GLUE_TASKS.items() if n not in ("stsb", "mnli"))
