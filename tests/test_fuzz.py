"""Fuzz the plan and profile loaders (a short hypothesis version of scripts/fuzz_loaders.py): whatever
the bytes or the structure, nothing but memplan.spec.loading.InputError (with a one-line message) escapes
read_document, plan_from_document, profile_from_document, load_plan, load_profile or load_calibration."""

from __future__ import annotations

import random
import tempfile
import warnings
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fuzz_targets as ft

FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
DIRECTORY = Path(tempfile.mkdtemp(prefix="memplan-fuzz-"))
SEEDS = ft.seeds()
DOCUMENTS = [path.read_bytes() for path in ft.SEED_FILES]

leaves = (st.none() | st.booleans() | st.integers() | st.integers(-(2**80), 2**80)
          | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20)
          | st.sampled_from(["sa2va-4b", "qwen2.5-0.5b", "deepspeed", "pytorch", "lora", "llm", "from", "kind"]))
keys = st.sampled_from(["name", "source", "kind", "from", "llm", "vision", "projector", "sam2", "seg_head", "engine",
                        "hardware", "inputs", "components", "zero_stage", "num_gpus", "hidden_size", "schema"]) | st.text(max_size=10)
structures = st.recursive(leaves, lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=5),
                          max_leaves=25)


def no_failure(failure):
    assert failure is None, failure


@FUZZ
@given(st.binary(max_size=300), st.sampled_from([".yaml", ".json"]))
def test_arbitrary_bytes(data, suffix):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        no_failure(ft.check_bytes(data, DIRECTORY, suffix))


@FUZZ
@given(st.integers(0, 2**32), st.sampled_from([".yaml", ".json"]))
def test_corrupted_real_documents(seed, suffix):
    no_failure(ft.check_bytes(ft.random_bytes(random.Random(seed), DOCUMENTS), DIRECTORY, suffix))


@FUZZ
@given(st.dictionaries(keys, structures, max_size=6) | structures, st.sampled_from(["yaml", "json"]))
def test_arbitrary_structures(document, kind):
    no_failure(ft.check_structure(document, DIRECTORY, kind))


@FUZZ
@given(st.sampled_from(sorted(SEEDS)), st.integers(0, 2**32), st.sampled_from(["yaml", "json"]))
def test_mutated_real_documents(name, seed, kind):
    document = ft.mutate(SEEDS[name], random.Random(seed))
    no_failure(ft.check_structure(document, DIRECTORY, kind))
    no_failure(ft.check_estimate(document, name))


@FUZZ
@given(st.text(max_size=40))
def test_arbitrary_names(name):
    no_failure(ft.check_name(name))
