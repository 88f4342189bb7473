"""Fuzz targets for the plan and profile loaders, shared by tests/test_fuzz.py (hypothesis, short)
and scripts/fuzz_loaders.py (seeded random, >= 10,000 inputs).

Contract: memplan.spec.loading.read_document / plan_from_document / profile_from_document / load_plan /
load_profile / load_calibration raise nothing but memplan.spec.loading.InputError, whatever the bytes or the
structure. ``run`` returns None when the contract holds, else a one-line description of the failure.
"""

from __future__ import annotations

import copy
import math
import random
import traceback
from pathlib import Path
from typing import Any, Callable

import yaml

from memplan.spec import loading
from memplan.spec.loading import InputError

ROOT = Path(__file__).resolve().parents[1]
SEED_FILES = [
    ROOT / "memplan" / "plans" / "sa2va-official.yaml",
    ROOT / "memplan" / "profiles" / "sa2va-1b.yaml",
    ROOT / "memplan" / "profiles" / "sa2va-qwen3-vl-4b.yaml",
    ROOT / "memplan" / "profiles" / "components" / "qwen2.5-0.5b.yaml",
    ROOT / "memplan" / "profiles" / "components" / "internvit-300m.yaml",
    ROOT / "memplan" / "profiles" / "components" / "sam2-hiera-large.yaml",
    ROOT / "tests" / "fixtures" / "profiles" / "tiny-sa2va.yaml",
]
PLAN_SEED, PROFILE_SEEDS = SEED_FILES[0], SEED_FILES[1:]
CALIBRATION_SEED = {"schema": "memplan.calibration/1", "allocated_constant_bytes": 0, "reserved_ratio": 0.05,
                    "reserved_constant_bytes": 2097152, "context_bytes": 536870912, "nccl_bytes": 0,
                    "host_base_bytes": 3221225472, "fitted_on": [], "card": None, "versions": {}, "median_error": {}}


def seeds() -> dict[str, dict[str, Any]]:
    """The real documents mutations start from (name -> parsed mapping)."""
    out = {path.stem: yaml.safe_load(path.read_text()) for path in SEED_FILES}
    out["calibration"] = dict(CALIBRATION_SEED)
    return out


# --------------------------------------------------------------------------- running one input


def _call(fn: Callable[[], Any]) -> str | None:
    try:
        fn()
    except InputError as error:
        message = str(error)
        if "\n" in message or not message:
            return f"InputError message is not one non-empty line: {message[:200]!r}"
    except BaseException as error:  # noqa: BLE001 - anything else breaks the contract
        if isinstance(error, (KeyboardInterrupt, SystemExit)):
            raise
        frame = traceback.extract_tb(error.__traceback__)[-1]
        return f"{type(error).__name__}: {str(error)[:160]} (at {Path(frame.filename).name}:{frame.lineno})"
    return None


def check_bytes(data: bytes, directory: Path, suffix: str = ".yaml") -> str | None:
    """Bytes in a file, through every file loader."""
    path = directory / f"fuzz{suffix}"
    path.write_bytes(data)
    loading.load_profile.cache_clear()
    for fn in (lambda: loading.read_document(path), lambda: loading.load_plan(path),
               lambda: loading.load_profile(str(path)), lambda: loading.load_calibration(path)):
        failure = _call(fn)
        if failure:
            return failure
    return None


def check_structure(document: Any, directory: Path, kind: str = "any") -> str | None:
    """A structure given to the document loaders directly, and as a YAML file to the file loaders."""
    targets = [lambda: loading.plan_from_document(copy.deepcopy(document), "fuzz"),
               lambda: loading.profile_from_document(copy.deepcopy(document), "fuzz")]
    for fn in targets:
        failure = _call(fn)
        if failure:
            return failure
    try:
        if kind == "json":
            import json

            text, suffix = json.dumps(document), ".json"
        else:
            text, suffix = yaml.safe_dump(document, allow_unicode=True), ".yaml"
    except (yaml.YAMLError, RecursionError, ValueError, TypeError):
        return None  # not representable in that format: nothing a user could write
    return check_bytes(text.encode("utf-8", "surrogatepass"), directory, suffix)


def check_name(name: str) -> str | None:
    """A profile or plan given by name or path (``--model``, ``--plan``)."""
    loading.load_profile.cache_clear()
    return _call(lambda: loading.load_profile(name)) or _call(lambda: loading.load_plan(name))


# --------------------------------------------------------------------------- mutations

SCALARS: list[Any] = [None, True, False, 0, -1, 1, -(2**63), 2**63, 10**30, -(10**30), 0.5, -0.5, 1e308, -1e308,
                      float("nan"), float("inf"), float("-inf"), "", "x", "  ", "sa2va-4b", "qwen2.5-0.5b",
                      "deepspeed", "pytorch", "lora", "full", "frozen", "llm", "vision", "1e3", "0x10", "é" * 50,
                      "\x00", "a" * 5000, [], {}, [1, 2], {"a": 1}, [[[[]]]], {"from": "qwen2.5-0.5b"}]


def scalar(rng: random.Random) -> Any:
    return copy.deepcopy(rng.choice(SCALARS))  # a fresh copy: edits never reach the shared list


def _paths(node: Any, at: tuple = ()) -> list[tuple]:
    out = [at]
    if isinstance(node, dict):
        for key, value in node.items():
            out += _paths(value, (*at, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += _paths(value, (*at, i))
    return out


def _get(node: Any, path: tuple) -> Any:
    for part in path:
        node = node[part]
    return node


def _set(root: Any, path: tuple, value: Any) -> Any:
    if not path:
        return value
    _get(root, path[:-1])[path[-1]] = value
    return root


def _delete(root: Any, path: tuple) -> Any:
    if not path:
        return {}
    parent = _get(root, path[:-1])
    del parent[path[-1]]
    return root


def mutate(document: Any, rng: random.Random, count: int | None = None) -> Any:
    """1-4 random edits of a real document: drop a key, change a type, huge or negative numbers,
    NaN/inf, long or odd strings, an unknown key, nesting, a scaled number."""
    out = copy.deepcopy(document)
    for _ in range(count or rng.randint(1, 4)):
        paths = _paths(out)
        path = rng.choice(paths)
        current = _get(out, path) if path else out
        action = rng.randrange(8)
        if action == 0 and path:
            out = _delete(out, path)
        elif action == 1:
            out = _set(out, path, scalar(rng))
        elif action == 2 and isinstance(current, (int, float)) and not isinstance(current, bool):
            out = _set(out, path, rng.choice([-current, current * 10**rng.randint(1, 40), current + 1, 0,
                                              float(current), math.nan, math.inf]))
        elif action == 3 and isinstance(current, dict):
            current[rng.choice(["bogus", "from", "kind", "name", "source", "llm", "engine", "schema", 7])] = scalar(rng)
        elif action == 4:
            out = _set(out, path, [current] if rng.random() < 0.5 else {"x": current})
        elif action == 5 and isinstance(current, str):
            out = _set(out, path, rng.choice([current.upper(), current[::-1], current + "x", current * 3, ""]))
        elif action == 6 and isinstance(current, list) and current:
            current.reverse() if rng.random() < 0.5 else current.pop()
        else:
            out = _set(out, path, scalar(rng))
    return out


def random_structure(rng: random.Random, depth: int = 0) -> Any:
    """Recursive dicts/lists of text, ints, floats, None and bools."""
    roll = rng.random()
    if depth > 4 or roll < 0.45:
        return rng.choice([None, rng.random() < 0.5, rng.randint(-(2**70), 2**70), rng.randint(-5, 5),
                           rng.uniform(-1e6, 1e6), rng.choice([math.nan, math.inf, -math.inf]), random_text(rng),
                           scalar(rng)])
    if roll < 0.65:
        return [random_structure(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    keys = ["name", "source", "kind", "from", "llm", "vision", "projector", "sam2", "seg_head", "engine",
            "hardware", "inputs", "components", "zero_stage", "num_gpus", "hidden_size", "schema"]
    return {rng.choice(keys) if rng.random() < 0.6 else random_text(rng): random_structure(rng, depth + 1)
            for _ in range(rng.randint(0, 5))}


def random_text(rng: random.Random) -> str:
    alphabet = "abcxyz019 _-.:/{}[]#&*!|>'\"\n\t\\é\u2028\x00"
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))


def random_bytes(rng: random.Random, documents: list[bytes]) -> bytes:
    """Arbitrary bytes, or a real document's bytes flipped, cut or spliced."""
    roll = rng.random()
    if roll < 0.3:
        return bytes(rng.randrange(256) for _ in range(rng.randint(0, 200)))
    data = bytearray(rng.choice(documents))
    if roll < 0.55:
        for _ in range(rng.randint(1, 8)):
            if data:
                data[rng.randrange(len(data))] = rng.randrange(256)
    elif roll < 0.75:
        data = data[: rng.randint(0, len(data))]
    elif roll < 0.9:
        other = rng.choice(documents)
        data = data[: rng.randint(0, len(data))] + other[rng.randint(0, len(other)):]
    else:
        data = bytearray(rng.choice([b"[" * 5000, b"{a: " * 3000, b"&a [*a, *a]", b"a: &x [*x]\n",
                                     b"- &a [a, a, a]\n- &b [*a, *a, *a]\n- &c [*b, *b, *b]\n- [*c, *c, *c]\n",
                                     b"\xef\xbb\xbfname: bom\n", b"!!python/object:os.system {}\n",
                                     b"? [1, 2]\n: x\n", b"x: !!int 0xZZ\n", b"d: 2001-13-45\n",
                                     b"n: " + b"9" * 5000 + b"\n", b"%YAML 9.9\n---\na: 1\n",
                                     b"a: 1\n---\nb: 2\n", b"<<: 1\n"]))
    return bytes(data)


def check_estimate(document: Any, seed_name: str, seconds: int = 5) -> str | None:
    """A mutated plan or profile the loaders accepted must also estimate (with the official plan or
    sa2va-1b beside it) without an exception and within ``seconds`` (Unix: SIGALRM)."""
    import signal

    from memplan.estimate.peak import estimate

    try:
        if seed_name == PLAN_SEED.stem:
            plan, profile = loading.plan_from_document(copy.deepcopy(document), "fuzz"), loading.load_profile("sa2va-1b")
        elif seed_name in {path.stem for path in PROFILE_SEEDS}:
            plan = loading.load_plan(PLAN_SEED)
            profile = loading.profile_from_document(copy.deepcopy(document), "fuzz")
        else:
            return None
    except InputError:
        return None

    def timeout(*_):
        raise TimeoutError(f"estimate took more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(seconds)
    try:
        return _call(lambda: estimate(profile, plan).to_dict())
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
