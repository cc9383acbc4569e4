"""A live view of the search: a grid's trials carry their cell's values as real Optuna params (what optuna-dashboard
and Optuna's plots show), kept through an edit of the grid, and optuna-dashboard serves them from ablate's journal."""
import io
import json
from wsgiref.util import setup_testing_defaults

import optuna
import pytest
import yaml
from helpers import TINY_BASE, Toy, load
from optuna.distributions import CategoricalDistribution, FloatDistribution

from ablate.spec import load_study
from ablate.storage import JOURNAL, Attr
from ablate.study import run_study

MODULE = "model.attention.name"


def grid(path, modules):
    path.write_text(yaml.safe_dump({"study": {"name": "tiny", "seeds": [0], "price_steps": False}, "base": TINY_BASE,
                                    "space": {MODULE: modules, "train.lr": [0.05, 0.1]}}))
    return load_study(path)


def test_grid_trials_hold_their_cells_values_as_optuna_params(tmp_path):
    path = tmp_path / "tiny.yaml"
    run_study(grid(path, ["none", "se"]), trainer=Toy())
    run_study(grid(path, ["none", "se", "eca"]), trainer=Toy())  # edited: a module added, only its cells run
    trials = load().get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(trials) == 6
    for t in trials:
        assert t.params == {MODULE: t.user_attrs[Attr.PARAMS][MODULE], "train.lr": t.user_attrs[Attr.PARAMS][
            "train.lr"]}, (t.params, t.user_attrs)
        assert isinstance(t.distributions["train.lr"], FloatDistribution)
        modules = t.distributions[MODULE]
        assert isinstance(modules, CategoricalDistribution) and {"none", "se", "eca", "cbam"} <= set(modules.choices)
    assert sorted((t.params[MODULE], t.params["train.lr"]) for t in trials) == sorted(
        (m, lr) for m in ("none", "se", "eca") for lr in (0.05, 0.1))


def test_optuna_dashboard_serves_the_grids_params(tmp_path):
    dashboard = pytest.importorskip("optuna_dashboard")  # the `dashboard` extra
    run_study(grid(tmp_path / "tiny.yaml", ["none", "se"]), trainer=Toy())
    app = dashboard.wsgi(str(tmp_path / JOURNAL))  # the file path, as `optuna-dashboard mlruns/optuna.journal` takes

    def get(path: str) -> dict:
        environ = {"PATH_INFO": path, "REQUEST_METHOD": "GET", "wsgi.input": io.BytesIO()}
        setup_testing_defaults(environ)
        status = []
        body = b"".join(app(environ, lambda s, headers, *_: status.append(s)))
        assert status == ["200 OK"], body[:500]
        return json.loads(body)

    study_id = next(s["study_id"] for s in get("/api/studies")["study_summaries"] if s["study_name"] == "tiny")
    trials = get(f"/api/studies/{study_id}")["trials"]
    shown = sorted((p["name"], p["param_external_value"]) for t in trials for p in t["params"] if p["name"] == MODULE)
    assert shown == [(MODULE, "none"), (MODULE, "none"), (MODULE, "se"), (MODULE, "se")]
