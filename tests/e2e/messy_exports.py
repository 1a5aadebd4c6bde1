"""Messy multi-centre exports for the treatment task, written as files plus dataset cards.

Test data, not shipped: four hospitals whose exports look like real ones do. Each differs in
column names, codes, units and delimiters; ``north`` has admission and discharge dates (the stay is
a derived feature), its prior visits in three columns (a derived sum) and 40 columns the task does
not use plus a free-text column it drops; ``south`` writes 0 for "not measured" in two columns
where 0 is valid elsewhere, and its stay in weeks; ``east``'s training file holds a single class
(it is an evaluation-only site); ``west`` codes its categories as numbers and leaves prior visits
empty where there were none (``fill: 0``). The rows come from the built-in generator, so every
site has learnable signal.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from medfed.models.ingest.synthetic import SkewConfig, generate_site
from medfed.models.schema import load_task

CLASSES = ["No", "Steady", "Up", "Down"]
SITES = ("north", "south", "east", "west")


@dataclass
class Export:
    """What was written for one site and what a study should find."""

    name: str
    card: Path
    rows: int
    zeros_as_missing: dict[str, int] = field(default_factory=dict)  # feature -> rows with 0


def _rows(index: int, n: int, seed: int) -> pd.DataFrame:
    site = generate_site(
        load_task("treatment"), index, 4, n_rows=n, test_fraction=0.3, skew=SkewConfig(), seed=seed
    )
    return pd.concat([site.train, site.test], ignore_index=True)


def _north(rows: pd.DataFrame, rng: np.random.Generator, out: Path) -> Export:
    admitted = pd.Timestamp("2021-01-01") + pd.to_timedelta(rng.integers(0, 365, len(rows)), "D")
    visits = rows["prior_visits"].to_numpy(dtype=int)
    emergency = rng.binomial(visits, 0.3)
    inpatient = rng.binomial(visits - emergency, 0.5)
    frame = pd.DataFrame(
        {
            "AgeGroup": rows["age_band"],
            "Sex": rows["sex"].str[0].str.upper(),
            "AdmType": rows["admission_type"],
            "AdmSource": rows["admission_source"],
            "admission_date": admitted.strftime("%Y-%m-%d"),
            "discharge_date": (
                admitted + pd.to_timedelta(rows["time_in_hospital"].to_numpy(), "D")
            ).strftime("%Y-%m-%d"),
            "labs": rows["num_lab_procedures"],
            "meds": rows["num_medications"],
            "diagnoses": rows["number_diagnoses"],
            "A1C": rows["a1c_result"],
            "glucose": rows["max_glu_serum"],
            "number_outpatient": visits - emergency - inpatient,
            "number_emergency": emergency,
            "number_inpatient": inpatient,
            "insulin": [CLASSES[c] for c in rows["insulin"]],
            "notes": "seen by ward staff",
        }
    )
    for k in range(40):
        frame[f"extra_{k:02d}"] = rng.integers(0, 9, len(rows))
    frame.to_csv(out / "north.csv", index=False)
    card = """name: north
task: treatment
train: north.csv
split: {test_fraction: 0.3, seed: 1}
rename: {AgeGroup: age_band, Sex: sex, AdmType: admission_type, AdmSource: admission_source,
         labs: num_lab_procedures, meds: num_medications, diagnoses: number_diagnoses,
         A1C: a1c_result, glucose: max_glu_serum}
values: {sex: {F: female, M: male}}
derive:
  time_in_hospital: "days(discharge_date - admission_date)"
  prior_visits: "number_outpatient + number_emergency + number_inpatient"
drop: [notes]
"""
    return _card(out, "north", card, len(frame))


def _south(rows: pd.DataFrame, rng: np.random.Generator, out: Path) -> Export:
    labs = rows["num_lab_procedures"].fillna(0)
    labs[rng.random(len(rows)) < 0.08] = 0  # 0 = "not measured" here, a valid count elsewhere
    diagnoses = rows["number_diagnoses"].copy()
    unmeasured = rng.random(len(rows)) < 0.1
    diagnoses[unmeasured] = 0
    frame = pd.DataFrame(
        {
            "age": rows["age_band"],
            "gender": rows["sex"].map({"female": 2, "male": 1}),
            "admission": rows["admission_type"],
            "source": rows["admission_source"].fillna("NA"),
            "stay_weeks": rows["time_in_hospital"] / 7,
            "lab_tests": labs,
            "medications": rows["num_medications"],
            "n_diag": diagnoses,
            "a1c": rows["a1c_result"],
            "max_glu": rows["max_glu_serum"],
            "prior": rows["prior_visits"],
            "ins": [CLASSES[c].lower() for c in rows["insulin"]],
        }
    )
    frame.to_csv(out / "south.csv", index=False, sep=";")
    card = """name: south
task: treatment
train: south.csv
split: {test_fraction: 0.3, seed: 2}
csv: {delimiter: ";", missing: ["NA"]}
rename: {age: age_band, gender: sex, admission: admission_type, source: admission_source,
         stay_weeks: time_in_hospital, lab_tests: num_lab_procedures,
         medications: num_medications, n_diag: number_diagnoses, a1c: a1c_result,
         max_glu: max_glu_serum, prior: prior_visits}
values: {sex: {1: male, 2: female}}
units: {stay_weeks: weeks}
column_missing: {lab_tests: [0], n_diag: [0]}
target: {column: ins, map: {no: 0, steady: 1, up: 2, down: 3}}
"""
    export = _card(out, "south", card, len(frame))
    export.zeros_as_missing = {
        "num_lab_procedures": int((labs == 0).sum()),
        "number_diagnoses": int(unmeasured.sum()),
    }
    return export


def _east(rows: pd.DataFrame, out: Path) -> Export:
    frame = rows.assign(insulin=[CLASSES[c] for c in rows["insulin"]])
    train = frame[frame["insulin"] == "No"].iloc[:40]
    test = frame.drop(train.index)
    train.to_csv(out / "east_train.csv", index=False)
    test.to_csv(out / "east_test.csv", index=False)
    card = """name: east
task: treatment
train: east_train.csv
test: east_test.csv
role: evaluate
"""
    return _card(out, "east", card, len(train) + len(test))


def _west(rows: pd.DataFrame, out: Path) -> Export:
    codes = {"emergency": 1, "urgent": 2, "elective": 3, "other": 4}
    visits = rows["prior_visits"].where(rows["prior_visits"] > 0)
    frame = rows.drop(columns=["prior_visits"]).assign(
        admission_type=rows["admission_type"].map(codes),
        visits_last_year=visits,
        insulin=[CLASSES[c] for c in rows["insulin"]],
    )
    frame.to_csv(out / "west.csv", index=False)
    card = """name: west
task: treatment
train: west.csv
split: {test_fraction: 0.3, seed: 4}
values: {admission_type: {1: emergency, 2: urgent, 3: elective, 4: other}}
derive:
  prior_visits: {expr: "visits_last_year", fill: 0}
"""
    return _card(out, "west", card, len(frame))


def _card(out: Path, name: str, text: str, rows: int) -> Export:
    path = out / f"{name}.yaml"
    path.write_text(text)
    return Export(name, path, rows)


def write_messy_exports(out: Path, seed: int = 0, rows: int = 160) -> list[Export]:
    """Write the four sites' files and cards into ``out``; return what was written."""
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    frames = [_rows(i, rows, seed) for i in range(4)]
    return [
        _north(frames[0], rng, out),
        _south(frames[1], rng, out),
        _east(frames[2], out),
        _west(frames[3], out),
    ]
