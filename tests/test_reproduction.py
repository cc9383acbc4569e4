"""Against the paper with both uncertainties: the replication prediction interval's coverage (replication.py), the
rule stats.reproduction applies, and params / GMAC matches at the paper's printed precision (reference.py,
report.verdicts, the dry run). Pure and fast: no training, no store."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.special import stdtrit

from ablate.errors import AblateError
from ablate.reference import (
    check_reference,
    half_unit,
    printed_decimals,
    published_top1,
    setup_gap,
    setup_note,
    setup_of,
    stated_setup,
)
from ablate.replication import ASSUMED_SD, Published, delta_sd, prediction_interval
from ablate.report import dry_run_table, verdicts
from ablate.spec import load_study, trial_config
from ablate.stats import CONTRADICTED, INCONCLUSIVE, REPRODUCED, reproduction

STUDIES = Path(__file__).resolve().parent.parent / "studies"


@pytest.mark.parametrize("n, sigma, paper_sd", [(3, 0.3, 0.28), (10, 0.3, 0.28), (3, 1.0, 0.1), (3, 0.05, 0.28)])
def test_a_true_replication_lands_inside_the_prediction_interval_95_percent_of_the_time(n, sigma, paper_sd):
    """One true effect; the paper's delta one draw at its sd, ours n paired seeds with stats' t interval: the paper's
    delta lies inside 95.3-97.7% of 20,000 simulated pairs (the quadrature of a t and a normal half-width is a
    little conservative at 3 seeds)."""
    rng = np.random.default_rng(n)
    d = rng.normal(0.5, sigma, (20_000, n))
    mean, half = d.mean(1), stdtrit(n - 1, 0.975) * d.std(1, ddof=1) / np.sqrt(n)
    paper = rng.normal(0.5, paper_sd, len(d))
    low, high = prediction_interval(mean - half, mean + half, paper_sd)
    assert 0.94 <= ((low <= paper) & (paper <= high)).mean() <= 0.985


def test_the_sign_rule_called_a_far_magnitude_reproduced_and_a_noisy_sign_contradicted():
    # the paper's +1.42 against our +0.05 [+0.01, +0.09]: same sign, 5 paper sds away
    assert reproduction(1.42, 0.01, 0.09) == CONTRADICTED
    # cbam_ablation's "channel: max", -0.06 against its baseline, our +0.5 [+0.3, +0.7]: the paper's sign is noise
    assert reproduction(-0.06, 0.3, 0.7) == INCONCLUSIVE
    assert reproduction(0.5, 0.3, 0.7) == REPRODUCED
    assert reproduction(0.5, -0.1, 0.9) == INCONCLUSIVE  # inside, but our interval holds 0
    assert reproduction(0.5, 0.3, 0.7, paper_sd=0.0) == REPRODUCED
    assert reproduction(1.0, 0.3, 0.7, paper_sd=0.0) == CONTRADICTED  # an exact paper: our interval alone
    assert reproduction(1.0, np.nan, np.nan) == INCONCLUSIVE  # one seed: no interval, no verdict
    assert reproduction(0.0, -0.2, 0.2) == INCONCLUSIVE


def test_a_reference_rows_sd_is_the_papers_noise_and_its_absence_the_assumed_one():
    reference = [{"match": {"name": "a"}, "top1_err": 24.56, "sd": 0.1}, {"match": {"name": "b"}, "top1_acc": 77.0}]
    a, b = published_top1(reference, {}, "a"), published_top1(reference, {}, "b")
    assert a == pytest.approx(75.44) and a.sd == 0.1 and b.sd is None
    assert delta_sd(a, b) == pytest.approx(np.hypot(0.1, ASSUMED_SD))
    assert delta_sd(Published(1.0, 0.0), Published(2.0, 0.0)) == 0.0
    assert delta_sd(float("nan"), float("nan")) == pytest.approx(ASSUMED_SD * 2 ** 0.5)
    check_reference(reference, None)
    defaults = [{"match": {"data.name": "cifar10"}, "sd": 0.16}, {"match": {}, "sd": 0.3},
                {"match": {"data.name": "cifar10"}, "top1_err": 6.43},
                {"match": {"data.name": "cifar100"}, "top1_err": 27.0}]
    assert published_top1(defaults, {"data.name": "cifar10"}, "x").sd == 0.16  # the dataset's default
    assert published_top1(defaults, {"data.name": "cifar100"}, "x").sd == 0.3  # the study's
    check_reference(defaults, None)
    for bad, key in (({"sd": -1}, "sd"), ({"sd": "0.1"}, "sd"), ({"decimals": {"gmacs": 3}}, "decimals"),
                     ({"gmacs": 3.86, "decimals": {"gmacs": 1.5}}, "decimals"), ({"decimals": 3}, "decimals")):
        with pytest.raises(AblateError, match=key):
            check_reference([{"match": {"name": "a"}, **bad}], None)


def test_a_rows_setup_is_compared_with_the_configurations_own():
    cbam = load_study(STUDIES / "cbam_vs_se.yaml")
    ours = setup_of(trial_config(cbam, {}, 0))
    assert ours == {"dataset": "cluttered-digits", "backbone": "resnet10_narrow", "image_size": 32, "epochs": 5,
                    "recipe": None}
    stated = stated_setup(cbam.cfg.reference[:2])  # the study's default row and the plain row: the default's setup
    assert stated == {"dataset": "ImageNet-1K", "backbone": "ResNet-50", "image_size": 224, "epochs": 90}
    assert setup_gap(stated, ours) == ["dataset", "backbone", "image_size", "epochs"]
    assert setup_gap(stated, {"dataset": "imagenet", "backbone": "resnet50", "image_size": 224, "epochs": 90}) == []
    assert setup_gap({}, ours) == [] and setup_note([{"match": {}}], ours) is None  # nothing stated: as before
    assert np.isnan(published_top1(cbam.cfg.reference, {"model.attention.name": "se"}, "attention=se", ours))
    imagenet = {"dataset": "ImageNet", "backbone": "resnet50", "image_size": 224, "epochs": 90}
    assert published_top1(cbam.cfg.reference, {"model.attention.name": "se"}, "attention=se", imagenet) == 100 - 23.14
    for bad, key in (({"image_size": "224px"}, "image_size"), ({"epochs": 0}, "epochs"), ({"backbone": 50}, "backbone"),
                     ({"dataset": ["imagenet"]}, "dataset")):
        with pytest.raises(AblateError, match=key):
            check_reference([{"match": {}, **bad}], None)


def test_the_printed_precision_is_the_numbers_text_in_the_study_file():
    text = "study: {name: x}\nreference:\n  - {match: {name: a}, params_m: 25.50, gmacs: 3.860, top1_err: 24}\n" \
           "  - match: {name: b}\n    gmacs: 1e-3\n"
    assert printed_decimals(text) == [{"params_m": 2, "gmacs": 3, "top1_err": 0}, {}]
    assert half_unit({"params_m": 25.5, "decimals": {"params_m": 2}}, "params_m") == pytest.approx(0.005)
    assert half_unit({"params_m": 1.7}, "params_m") == pytest.approx(0.05)  # no text: the float's own digits
    assert half_unit({"gmacs": 3.864}, "gmacs") == pytest.approx(0.0005)
    rows = load_study(STUDIES / "imagenet_cbam_table.yaml").cfg.reference
    assert rows[1]["decimals"]["gmacs"] == 3 and rows[4]["decimals"]["gmacs"] == 3  # 3.858; 7.570, read as 7.57


def _judged(ours_params, ours_gmacs, paper_params, paper_gmacs, tol_params, tol_gmacs):
    table = pd.DataFrame({"params (M)": ours_params, "GMACs": ours_gmacs, "paper params (M)": paper_params,
                          "paper GMACs": paper_gmacs, "tol params (M)": tol_params, "tol GMACs": tol_gmacs},
                         index=["none", "se"])
    return verdicts(table, {"none": "none", "se": "none"}, ladder=False)


def test_se_against_plain_on_gmacs_matches_only_with_a_delta_inside_the_papers_rounding():
    # CBAM's Table 4: ResNet-50 3.858, + SE 3.860 (three decimals): the paper's delta +0.002 ± 0.001 (+10%)
    nothing = _judged([25.56, 25.56], [4.089, 4.089], [25.56, 28.09], [3.858, 3.860], [0.005] * 2, [0.0005] * 2)
    assert not nothing.at["se", "GMACs Δ match"]  # a model with no module at all: no longer a match for SE
    assert not nothing.at["se", "params match"] and nothing.at["none", "params match"]
    se = _judged([25.557, 28.088], [4.089, 4.0915], [25.56, 28.09], [3.858, 3.860], [0.005] * 2, [0.0005] * 2)
    assert se.at["se", "GMACs Δ match"] and se["params match"].all()
    assert not [c for c in se if c.startswith("tol ")]
    # He et al.'s ResNet-110, 1.728M, printed "1.7": within half a unit of one decimal
    assert _judged([1.728, 1.75], [0.25, 0.25], [1.7, 1.7], [np.nan] * 2, [0.05] * 2, [np.nan] * 2)[
        "params match"].all()


def test_the_dry_run_judges_params_and_gmac_deltas_against_the_paper():
    """imagenet_cbam_table priced without building a model: SE and CBAM cost what the paper's rows add (ResNet-50:
    +0.002 / +0.006 GMACs), except for one backbone whose modules add nothing."""
    base = {"resnet50": (25.557, 4.0890), "resnet101": (44.549, 7.8010), "resnext50_32x4d": (25.029, 4.2300)}
    added = {"none": (0.0, 0.0), "se": (2.530, 0.0020), "cbam": (2.530, 0.0060)}

    def price(spec, params):
        (p, g), (dp, dg) = base[params["model.backbone"]], added[params["model.attention.name"]]
        if params["model.backbone"] == "resnet101":
            dp, dg = 0.0, 0.0  # the modules left out: params and GMACs of the plain model
        return {"params_m": p + dp, "gmacs": g + dg}

    table = dry_run_table(load_study(STUDIES / "imagenet_cbam_table.yaml"), price)
    assert len(table) == 9
    r50 = "backbone=resnet50, attention="
    assert table.at[r50 + "se", "GMACs Δ match"] and table.at[r50 + "cbam", "GMACs Δ match"]
    assert table.at[r50 + "se", "paper Δ GMACs"] == pytest.approx(0.002)
    assert pd.isna(table.at[r50 + "none", "GMACs Δ match"])  # a control: nothing to compare
    r101 = "backbone=resnet101, attention="
    assert not table.at[r101 + "se", "GMACs Δ match"] and not table.at[r101 + "se", "params match"]
    assert table.at[r101 + "none", "params match"]
