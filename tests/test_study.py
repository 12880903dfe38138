"""scripts/study_report.py: the statistics and the claims table of the study (issue 12, section
3)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("scipy")


def load_study_report() -> Any:
    path = Path(__file__).resolve().parents[1] / "scripts" / "study_report.py"
    spec = importlib.util.spec_from_file_location("study_report", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


sr = load_study_report()


def record(method: str, seed: int, top1: float, **extra: Any) -> dict[str, Any]:
    cfg = extra.pop("cfg", {})
    rec = {
        "setup": "resnet20 / cifar10",
        "method": method,
        "variant": sr.variant_of(method, cfg),
        "ratio": extra.pop("ratio", None if method in sr.NO_RATIO else 0.6),
        "seed": seed,
        "final": {"top1": top1, "netscore": extra.pop("netscore", None)},
        "dense": extra.pop("dense", {}),
        "relative": {},
        "info": extra.pop("info", {}),
        "warnings": [],
    }
    assert not extra
    return rec


def test_paired_t_test_matches_the_hand_computed_value() -> None:
    # differences 1, 2, 2: mean 5/3, sd sqrt(1/3), t = (5/3) / (sqrt(1/3)/sqrt(3)) = 5, df 2;
    # for df 2 the two-sided p is 1 - t / sqrt(2 + t^2) = 1 - 5/sqrt(27)
    res = sr.paired([1.0, 2.0, 3.0], [2.0, 4.0, 5.0])
    assert res["t"] == pytest.approx(5.0)
    assert res["p"] == pytest.approx(1 - 5 / math.sqrt(27))
    assert sr.verdict(res) == "confirmed"  # p = 0.038 < 0.05, in the claimed direction
    assert sr.verdict(sr.paired([2.0, 4.0, 5.0], [1.0, 2.0, 3.0])) == "opposite"
    assert sr.paired([1.0], [2.0])["p"] is None  # one pair: no test, never "confirmed"
    assert sr.verdict(sr.paired([1.0, 2.0], [2.0, 3.0])) == "not shown"  # no spread


def test_welch_against_the_formula() -> None:
    a, b = [1.0, 2.0, 3.0], [4.0, 6.0, 8.0]
    # means 2 and 6, variances 1 and 4: t = 4 / sqrt(1/3 + 4/3)
    res = sr.welch(a, b)
    assert res["diff"] == pytest.approx(4.0)
    assert res["t"] == pytest.approx(4 / math.sqrt(5 / 3))
    assert 0 < res["p"] < 0.1


def test_claims_pair_optimized_with_its_own_magnitude_mask_and_test_template_reuse() -> None:
    runs = [
        record("optimized", s, t, info={"magnitude": {"finetuned_test_top1": m}})
        for s, (m, t) in enumerate([(0.50, 0.51), (0.52, 0.54), (0.40, 0.42)])
    ]
    runs += [record("none", s, 0.70 + 0.01 * s) for s in range(3)]
    runs += [
        record("template_reuse", s, 0.69 + 0.01 * s, cfg={"templates_per_stage": 2},
               info={"param_reduction": 0.20})
        for s in range(3)
    ]  # fmt: skip
    rows = {row["claim"]: row for row in sr.claims(runs)}
    opt = rows["optimized"]
    assert opt["test"] == "paired t" and opt["diff"] == pytest.approx(0.05 / 3)
    assert opt["verdict"] == "confirmed"  # differences 1, 2, 2 points: p = 0.038
    reuse = rows["template_reuse"]
    assert reuse["variant"] == "template_reuse k=2" and reuse["reduction"] == pytest.approx(0.20)
    assert reuse["diff"] == pytest.approx(-0.01) and reuse["verdict"] == "confirmed"
    # outside the paper's 15-35% band the claim is not confirmed, whatever the accuracy
    for r in runs:
        if r["method"] == "template_reuse":
            r["info"]["param_reduction"] = 0.05
    assert sr.claims(runs)[-1]["verdict"] == "parameters outside 15–35%"


def test_page_lists_every_setup_and_claim() -> None:
    runs = [record("none", s, 0.7) for s in range(2)]
    runs += [
        record("dynamic_filter", s, 0.60 + 0.01 * s, cfg={"reg": "none"}) for s in range(2)
    ] + [record("dynamic_filter", s, 0.62 + 0.01 * s, cfg={"reg": "cov"}) for s in range(2)]
    text = sr.page(Path("study"), runs, {})
    assert "### resnet20 / cifar10" in text
    assert "| dynamic_filter + cov | 0.6 |" in text
    assert "Decorrelation regularisation adds +1.47%" in text


def test_plain_words_count_the_verdicts_of_each_claim() -> None:
    rows = [
        {"claim": "decorrelation", "verdict": "confirmed", "diff": 1.5, "unit": "top-1 (pp)"},
        {"claim": "decorrelation", "verdict": "not shown", "diff": -0.25, "unit": "top-1 (pp)"},
        {"claim": "decorrelation", "verdict": "not shown", "diff": 0.5, "unit": "top-1 (pp)"},
    ]
    lines = sr.in_plain_words(rows)
    decorrelation = next(line for line in lines if "+1.47%" in line)
    assert "not shown in 2, confirmed in 1 of 3 comparisons" in decorrelation
    assert "from -0.25 to +1.50 top-1 (pp)" in decorrelation
    assert all("not tested" in line for line in lines if line is not decorrelation)


def test_majority_rate_reads_the_run_s_test_split(tmp_path: Path) -> None:
    import numpy as np
    from fakedata import write_fer_csv

    # test split (PrivateTest): labels 3, 3, 3, 0 -> always answering 3 scores 75%
    rows = [(i % 7, np.zeros((48, 48), np.uint8), "Training") for i in range(4)]
    rows += [(e, np.zeros((48, 48), np.uint8), "PrivateTest") for e in (3, 3, 0, 3)]
    write_fer_csv(tmp_path / "fer2013.csv", rows)
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text(
        f"dataset:\n  name: fer2013\n  root: {tmp_path}\n  val_size: 0\n"
    )
    assert sr.majority_rate(str(run)) == pytest.approx(75.0)
    assert sr.majority_rate(str(tmp_path / "missing")) is None


def test_a_setup_whose_dense_model_is_at_chance_tests_nothing(monkeypatch) -> None:
    runs = []
    for s in range(2):
        for setup, dense in (("resnet20 / cifar10", 45.0), ("resnet20 / fer2013", 25.4)):
            for method, top1, ns in (("double_pruning", 40.0, 90.0), ("network_slimming", 41, 80)):
                r = record(method, s, top1 + s, netscore=ns + s * 1.5, dense={"top1": dense})
                r["setup"], r["path"] = setup, setup
                runs.append(r)
    monkeypatch.setattr(sr, "majority_rate", lambda path: 24.0)
    chance = sr.chance_setups(runs)
    assert chance == {"resnet20 / fer2013": 24.0}  # 25.4 is within 2 points of 24
    verdicts = {(r["setup"], r["claim"]): r["verdict"] for r in sr.claims(runs, chance)}
    assert verdicts[("resnet20 / fer2013", "double_vs_slim")] == "untestable: dense model at chance"
    assert verdicts[("resnet20 / cifar10", "double_vs_slim")] != "untestable: dense model at chance"
    page = sr.page(Path("study"), runs, {})
    assert page.count("**At chance:**") == 1 and "(24.00% of the test split)" in page


def test_each_setup_states_its_training_budget(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    stage = "epochs: {e}\n  batch_size: 64\n  optimizer: {o}\n  lr: {lr}\n  weight_decay: 0.05\n"
    stage += "  schedule: cosine\n  schedule_every: {every}\n  warmup_epochs: {w}\n"
    train = stage.format(e=6, o="adamw", lr=2e-3, every="step", w=1)
    finetune = stage.format(e=1, o="sgd", lr=0.01, every="epoch", w=0)
    (run / ".hydra" / "config.yaml").write_text(f"train:\n  {train}finetune:\n  {finetune}")
    assert sr.budget_of(str(run)) == (
        "dense training 6 epoch(s), AdamW lr 0.002, batch 64, weight decay 0.05, cosine per step "
        "after 1 warm-up epoch(s); fine-tuning 1 epoch(s), SGD lr 0.01, batch 64, weight decay "
        "0.05, cosine per epoch"
    )
    assert sr.budget_of(str(tmp_path / "missing")) is None
    runs = [record("none", s, 0.7) for s in range(2)]
    for r in runs:
        r["path"] = str(run)
    assert "Budget: dense training 6 epoch(s), AdamW" in sr.page(Path("study"), runs, {})


def test_a_comparison_whose_two_sides_learnt_nothing_tests_nothing(monkeypatch) -> None:
    runs = []
    for s in range(3):  # both DPF arms at the majority rate (23.57%) at 0.6; apart at 0.3
        for variant, top1 in (("dynamic_filter", 23.57), ("dynamic_filter + cov", 23.57 + s / 9)):
            for ratio, shift in ((0.3, 15.0), (0.6, 0.0)):
                value = top1 + shift + (s if ratio == 0.3 else 0)
                r = record("dynamic_filter", s, value, ratio=ratio)
                r["variant"], r["setup"], r["path"] = variant, "shufflenet / fer2013", "p"
                r["dense"] = {"top1": 41.8}
                runs.append(r)
    monkeypatch.setattr(sr, "majority_rate", lambda path: 23.57)
    rates = sr.majority_rates(runs)
    assert rates == {"shufflenet / fer2013": 23.57} and sr.chance_setups(runs, rates) == {}
    verdicts = {r["ratio"]: r["verdict"] for r in sr.claims(runs, (), rates)}
    assert verdicts == {0.3: "not shown", 0.6: "untestable: both sides at chance"}
    assert sr.claims(runs)[1]["verdict"] == "not shown"  # without the rates: tested as before
