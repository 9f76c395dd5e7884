"""MUSE metrics on a local folder in MUSE's layouts, written from the embedded benchmark: the forget authors' QA
play MUSE's forget texts, the holdout authors' its holdout texts. The folders are named as MUSE names its splits:
the GitHub repository's `knowmem/retain2_qa(_icl).json` (jaechan-repo/muse_bench `data/<corpus>/`), the Hub's
`knowmem/retain_qa(_icl)-*.parquet` (muse-bench/MUSE-News)."""

import json

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_unlearn.cli import main
from hf_unlearn.data import load_tofu_split
from hf_unlearn.eval import evaluate_muse, load_muse_split, write_report
from hf_unlearn.eval.muse import check_muse_data


pytestmark = pytest.mark.usefixtures("single_thread")


# split names: MUSE's GitHub repository's -> the Hub's (the others are the same in both)
HUB_NAMES = {"retain2_qa": "retain_qa", "retain2_qa_icl": "retain_qa_icl", "retain2": "retain"}
RETAIN_ICL_EXAMPLES = 2


def _muse_sets(embedded) -> dict[tuple[str, str], list]:
    """MUSE's sets, named as in its GitHub repository."""
    forget = load_tofu_split(embedded.data_dir, "forget10").to_list()
    retain = load_tofu_split(embedded.data_dir, "retain90").to_list()[: 24 + RETAIN_ICL_EXAMPLES]
    holdout = load_tofu_split(embedded.data_dir, "holdout10").to_list()
    text = "Question: {question}\nAnswer: {answer}"
    qa = [{"question": r["question"], "answer": r["answer"]} for r in retain]
    return {
        ("verbmem", "forget"): [{"prompt": f"Question: {r['question']}\nAnswer:", "gt": r["answer"]} for r in forget],
        ("knowmem", "forget_qa"): [{"question": r["question"], "answer": r["answer"]} for r in forget],
        ("knowmem", "retain2_qa"): qa[:24],
        ("knowmem", "retain2_qa_icl"): qa[24:],
        ("privleak", "forget"): [text.format(**r) for r in forget],
        ("privleak", "retain2"): [text.format(**r) for r in retain],
        ("privleak", "holdout"): [text.format(**r) for r in holdout],
    }


def _write_github_layout(folder, sets) -> None:
    """MUSE's GitHub layout: `<subset>/<split>.json`, privleak splits as lists of strings."""
    for (subset, split), rows in sets.items():
        (folder / subset).mkdir(parents=True, exist_ok=True)
        (folder / subset / f"{split}.json").write_text(json.dumps(rows))


def _write_hub_layout(folder, sets) -> None:
    """The Hub's layout: `<subset>/<split>-00000-of-00001.parquet`, privleak rows with a `text` column."""
    for (subset, split), rows in sets.items():
        (folder / subset).mkdir(parents=True, exist_ok=True)
        table = [{"text": r} for r in rows] if subset == "privleak" else rows
        Dataset.from_list(table).to_parquet(str(folder / subset / f"{HUB_NAMES.get(split, split)}-00000-of-00001.parquet"))


@pytest.fixture(scope="module")
def muse_folder(embedded, tmp_path_factory):
    folder = tmp_path_factory.mktemp("muse_json")
    _write_github_layout(folder, _muse_sets(embedded))
    return folder


@pytest.fixture(scope="module")
def muse_results(embedded, finetuned, muse_folder):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model; restored after, so later tests keep the machine's threads
    try:
        retain_model = AutoModelForCausalLM.from_pretrained(embedded.retain_dir), AutoTokenizer.from_pretrained(embedded.retain_dir)
        settings = {"max_length": 128, "verbmem_max_new_tokens": 32, "progress": False}
        retain = evaluate_muse(*retain_model, muse_folder, **settings)
        return {"retain": retain, "finetuned": evaluate_muse(*finetuned, muse_folder, reference=retain, **settings)}
    finally:
        torch.set_num_threads(threads)


def test_hub_parquet_layout_reads_the_same_rows(embedded, muse_folder, tmp_path):
    sets = _muse_sets(embedded)
    _write_hub_layout(tmp_path, sets)
    for (subset, split), rows in sets.items():
        expected = rows if subset != "privleak" else [{"text": r} for r in rows]
        assert load_muse_split(muse_folder, subset, split) == expected
        assert load_muse_split(tmp_path, subset, HUB_NAMES.get(split, split)) == expected
    # either name of the KnowMem retain splits finds them in either layout
    for name in ("retain_qa", "retain2_qa"):
        assert load_muse_split(tmp_path, "knowmem", name) == load_muse_split(muse_folder, "knowmem", name) == sets["knowmem", "retain2_qa"]
    assert load_muse_split(tmp_path, "knowmem", "retain_qa_icl") == sets["knowmem", "retain2_qa_icl"]
    assert load_muse_split(tmp_path, "knowmem", "forget_qa_icl", required=False) is None
    with pytest.raises(ValueError, match="No MUSE split knowmem/forget_qa_icl"):
        load_muse_split(tmp_path, "knowmem", "forget_qa_icl")


def test_both_layouts_pass_the_check_with_their_own_split_names(embedded, muse_folder, tmp_path):
    _write_hub_layout(tmp_path, _muse_sets(embedded))
    common = {("verbmem", "forget"): "forget", ("knowmem", "forget_qa"): "forget_qa", ("knowmem", "forget_qa_icl"): None,
              ("privleak", "forget"): "forget", ("privleak", "holdout"): "holdout"}
    assert check_muse_data(muse_folder) == common | {("knowmem", "retain_qa"): "retain2_qa", ("knowmem", "retain_qa_icl"): "retain2_qa_icl"}
    assert check_muse_data(tmp_path) == common | {("knowmem", "retain_qa"): "retain_qa", ("knowmem", "retain_qa_icl"): "retain_qa_icl"}


def test_a_folder_without_retain_qa_is_refused_before_any_model_loads(embedded, tmp_path, capsys):
    sets = {key: rows for key, rows in _muse_sets(embedded).items() if key[1] not in ("retain2_qa", "holdout")}
    _write_github_layout(tmp_path / "data", sets)
    with pytest.raises(ValueError, match=r"lacks knowmem/retain_qa or retain2_qa, privleak/holdout\. .*knowmem/retain2_qa\.json"):
        check_muse_data(tmp_path / "data")
    # the command line checks the data first: the missing model is never reached
    args = ["eval", "--benchmark", "muse", "--data", str(tmp_path / "data"), "--model", str(tmp_path / "no_such_model"),
            "--output_dir", str(tmp_path / "report")]
    assert main(args) == 1  # one line on stderr, no traceback (hf_unlearn.errors)
    assert "lacks knowmem/retain_qa or retain2_qa" in capsys.readouterr().err
    assert not (tmp_path / "report").exists()


def test_two_names_of_one_split_are_refused(embedded, muse_folder, tmp_path):
    sets = _muse_sets(embedded)
    _write_github_layout(tmp_path, sets | {("knowmem", "retain_qa"): sets["knowmem", "retain2_qa"]})
    with pytest.raises(ValueError, match="both knowmem/retain_qa and knowmem/retain2_qa"):
        check_muse_data(tmp_path)


def test_github_layout_keeps_the_retain_in_context_examples(muse_results):
    settings = muse_results["finetuned"]["settings"]
    assert settings["knowmem_icl_examples"] == {"forget": 0, "retain": RETAIN_ICL_EXAMPLES}
    assert settings["knowmem_splits"] == {"forget": ["forget_qa", None], "retain": ["retain2_qa", "retain2_qa_icl"]}


def test_finetuned_model_memorised_the_forget_texts(muse_results, embedded):
    finetuned, retain = muse_results["finetuned"], muse_results["retain"]
    assert finetuned["verbmem_f"] > 0.95 > 0.5 > retain["verbmem_f"]  # measured 1.0 vs 0.23
    # KnowMem, MUSE's way: mean ROUGE-L F1 (rouge_score, no stemming) of the greedy answer against the true answer.
    # (On the embedded model it does not separate finetuned from retain: MUSE's prompt ends in "Answer: ", a lone
    # space token the model never saw before an answer; finetuned vs retain measured 0.21 vs 0.03 on one build, 0.20
    # vs 0.29 on build seed 1. So this checks the value, not a direction.)
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    answers = {"forget": _muse_sets(embedded)[("knowmem", "forget_qa")], "retain": _muse_sets(embedded)[("knowmem", "retain2_qa")]}
    for result in (finetuned, retain):
        for name, key in (("forget", "knowmem_f"), ("retain", "knowmem_r")):
            generations = result["per_item"][f"knowmem_{name}_generation"]
            f1 = [scorer.score(row["answer"], g)["rougeL"].fmeasure for row, g in zip(answers[name], generations)]
            assert len(f1) == len(answers[name]) and result[key] == pytest.approx(sum(f1) / len(f1), abs=1e-12)
    assert finetuned["mia_auc_loss"] > 0.9 and finetuned["mia_auc_min_k"] > 0.75  # measured 0.97, 0.84
    assert abs(retain["mia_auc_min_k"] - 0.5) < 0.1  # measured 0.51
    assert finetuned["privleak"] < -50  # percent, MUSE's sign: it leaks the forget set (measured -80.2)
    assert retain["privleak"] is None  # no reference given


def test_muse_result_is_json_and_reports(muse_results, tmp_path):
    result = muse_results["finetuned"]
    assert json.loads(json.dumps(result, allow_nan=False)) == result
    assert result["settings"]["num_items"] == {"verbmem": 48, "knowmem_forget": 48, "knowmem_retain": 24,
                                               "privleak_forget": 48, "privleak_holdout": 80}
    assert result["settings"]["knowmem_icl_examples"] == {"forget": 0, "retain": RETAIN_ICL_EXAMPLES}
    paths = write_report(muse_results, tmp_path, title="MUSE")
    assert "| verbmem_f |" in paths["markdown"].read_text()
    assert paths["plot"].stat().st_size > 0
