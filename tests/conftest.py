import pytest

MACHINE_RAM_GIB = 256.0  # what the CLI reads as this machine's RAM in tests (memplan.cli.host)


@pytest.fixture(autouse=True)
def fixed_machine_ram(monkeypatch):
    """The CLI takes host RAM from the machine when not given; tests must not depend on the machine."""
    monkeypatch.setattr("memplan.cli.host.machine_host_ram_gib", lambda: MACHINE_RAM_GIB)

from memplan.spec.plan import Plan
from memplan.spec.profile import LLMSpec, Profile


@pytest.fixture
def tiny_llm() -> Profile:
    """A hand-countable LLM: h=64, 2 layers, 4 heads of 16, 2 kv heads, FFN 128, vocab 1000, tied."""
    return Profile(name="tiny", source="hand", llm=LLMSpec(
        architecture="qwen2", num_layers=2, hidden_size=64, num_heads=4, num_kv_heads=2,
        intermediate_size=128, vocab_size=1000, tie_word_embeddings=True, attention_bias=True))


def make_plan(**sections) -> Plan:
    """A Plan from nested dicts, components defaulting to the recipe unless given."""
    return Plan.model_validate(sections)


@pytest.fixture
def plan_factory():
    return make_plan
