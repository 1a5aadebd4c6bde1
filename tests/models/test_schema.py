"""Task schemas: the shipped tasks load, and malformed schemas fail with one clear sentence."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from medfed.models.schema import (
    SchemaError,
    TaskSchema,
    available_tasks,
    load_task,
    task_dir,
    task_from_dict,
)

MINIMAL: dict[str, Any] = {
    "name": "mini",
    "features": [
        {"name": "age", "type": "numeric", "unit": "years", "range": [18, 100]},
        {"name": "sex", "type": "categorical", "categories": ["female", "male"]},
        {"name": "smoker", "type": "binary"},
    ],
    "target": {"name": "event", "type": "binary"},
}


def _mutated(**changes: Any) -> dict[str, Any]:
    raw = copy.deepcopy(MINIMAL)
    raw.update(changes)
    return raw


def _with_feature(index: int, **changes: Any) -> dict[str, Any]:
    raw = copy.deepcopy(MINIMAL)
    raw["features"][index].update(changes)
    return raw


@pytest.mark.parametrize("name", ["diagnosis", "treatment", "pricing"])
def test_shipped_tasks_load(name: str) -> None:
    schema = load_task(name)
    assert isinstance(schema, TaskSchema)
    assert schema.name == name
    assert name in available_tasks()
    assert load_task(task_dir() / f"{name}.yaml") == schema


def test_diagnosis_schema() -> None:
    schema = load_task("diagnosis")
    assert schema.target.kind == "binary"
    assert schema.model.loss == "bce"
    assert {f.name for f in schema.features if not f.required} == {
        "st_slope",
        "major_vessels",
        "thal",
    }


def test_treatment_schema() -> None:
    schema = load_task("treatment")
    assert schema.target.name == "insulin"
    assert schema.target.classes == ("No", "Steady", "Up", "Down")
    assert schema.target.n_outputs == 4
    assert schema.feature("a1c_result").categories == ("none", "norm", ">7", ">8")
    assert schema.feature("max_glu_serum").categories == ("none", "norm", ">200", ">300")
    assert schema.feature("time_in_hospital").low == 1
    assert schema.feature("time_in_hospital").high == 14
    assert schema.model.family == "logreg" and schema.model.loss == "cross_entropy"
    assert schema.metrics == ("accuracy", "macro_f1", "top2_accuracy")
    assert set(schema.feature_names) == {
        "age_band",
        "sex",
        "admission_type",
        "admission_source",
        "time_in_hospital",
        "num_lab_procedures",
        "num_medications",
        "number_diagnoses",
        "a1c_result",
        "max_glu_serum",
        "prior_visits",
    }


def test_pricing_schema() -> None:
    schema = load_task("pricing")
    assert schema.target.kind == "continuous"
    assert (schema.target.low, schema.target.high, schema.target.unit) == (0.0, None, "USD")
    assert schema.model.loss == "tweedie" and schema.model.tweedie_power == 1.5
    assert schema.primary_metric == "rmse" and not schema.higher_is_better
    assert schema.feature("smoker").kind == "binary"
    assert schema.feature("region").categories == (
        "northeast",
        "northwest",
        "southeast",
        "southwest",
    )
    assert schema.extra["synthetic"]["outcome"]["link"] == "log"


@pytest.mark.parametrize("loss", ["mse_log", "tweedie"])
def test_pricing_accepts_glm_losses(loss: str) -> None:
    raw = yaml.safe_load((task_dir() / "pricing.yaml").read_text(encoding="utf-8"))
    raw["model"] = {"family": "glm", "loss": loss}
    assert task_from_dict(raw).model.family == "glm"


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (_mutated(colour="blue"), "unknown key(s) ['colour']"),
        (_with_feature(0, type="text"), "type must be numeric, binary or categorical"),
        (_with_feature(0, range=[100, 18]), "range low 100.0 is above high 18.0"),
        (_with_feature(0, range=[1, 2, 3]), "'range' must be a list [low, high]"),
        (_with_feature(0, colour=1), "feature 'age': unknown key(s)"),
        (_with_feature(1, categories=["female"]), "needs at least two 'categories'"),
        (_with_feature(2, categories=["a", "b"]), "only categorical features take"),
        (_mutated(model={"loss": "tweedie"}), "model.loss 'tweedie' does not fit a binary target"),
        (_mutated(model={"family": "glm"}), "glm is for continuous targets"),
        (_mutated(model={"family": "mlp", "hidden": [0]}), "positive integers"),
        (_mutated(training={"lr": 0.1, "lrr": 1}), "training: unknown key(s) ['lrr']"),
        (_mutated(training={"dpsgd": {"clip": 1}}), "training.dpsgd: unknown key(s) ['clip']"),
        (_mutated(training={"dpsgd": 3}), "'training' and 'training.dpsgd' must be mappings"),
        (
            _mutated(target={"name": "y", "type": "multiclass", "classes": ["a", "b"]}),
            "at least three 'classes'",
        ),
        (_mutated(target={"name": "age", "type": "binary"}), "also listed as a feature"),
        (
            _mutated(
                target={"name": "y", "type": "continuous"},
                model={"tweedie_power": 2.5, "loss": "tweedie"},
            ),
            "strictly between 1 and 2",
        ),
        (_mutated(metrics=["rmse"]), "do not apply to a binary target"),
        (_mutated(metrics=["accuracy"], primary_metric="auroc"), "is not in metrics"),
        (_mutated(features=[]), "non-empty list"),
        (_mutated(features=[MINIMAL["features"][0]] * 2), "duplicated feature name(s) ['age']"),
        ({k: v for k, v in MINIMAL.items() if k != "target"}, "missing required key 'target'"),
    ],
)
def test_bad_schema_raises_one_sentence(raw: dict[str, Any], fragment: str) -> None:
    with pytest.raises(SchemaError) as info:
        task_from_dict(raw, source="mini.yaml")
    message = str(info.value)
    assert fragment in message
    assert message.startswith("mini.yaml")
    assert "\n" not in message


def test_unknown_task_name_lists_the_shipped_ones() -> None:
    with pytest.raises(SchemaError, match=r"unknown task 'nosuchtask'.*diagnosis.*pricing"):
        load_task("nosuchtask")


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("name: broken\nfeatures: [\n  {name: a, type: numeric\n", encoding="utf-8")
    with pytest.raises(SchemaError, match=r"not valid YAML at line \d+"):
        load_task(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SchemaError, match="does not exist"):
        load_task(tmp_path / "absent.yaml")


def test_user_schema_from_file(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(MINIMAL), encoding="utf-8")
    schema = load_task(str(path))
    assert schema.feature_names == ("age", "sex", "smoker")
    assert schema.metrics == ("accuracy", "auroc", "sensitivity", "specificity")
    assert schema.extra == {"synthetic": {}}


_bound = st.one_of(st.none(), st.floats(-1e6, 1e6, allow_nan=False))


@settings(max_examples=60, deadline=None)
@given(low=_bound, high=_bound)
def test_ranges_are_kept_or_rejected(low: float | None, high: float | None) -> None:
    raw = _with_feature(0, range=[low, high])
    if low is not None and high is not None and low > high:
        with pytest.raises(SchemaError, match="is above high"):
            task_from_dict(raw)
    else:
        feature = task_from_dict(raw).feature("age")
        assert (feature.low, feature.high) == (low, high)
