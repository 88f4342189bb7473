"""Names people use for shipped profiles: each profile YAML's ``aliases`` (Hugging Face repo ids such
as ByteDance/Sa2VA-4B), matched case-insensitively, with or without the owner. Data, not code: a new
variant gets its alias in its YAML file."""

from __future__ import annotations

from functools import lru_cache

from memplan.spec.loading import _profile_files, read_document


@lru_cache(maxsize=1)
def profile_aliases() -> dict[str, str]:
    """{alias, lower case: profile name}: each shipped profile's name, its ``aliases`` (Hugging Face
    repo ids such as ByteDance/Sa2VA-4B) and each alias without its owner (Sa2VA-4B)."""
    table: dict[str, str] = {}
    for name, path in _profile_files().items():
        table[name.lower()] = name
        aliases = read_document(path).get("aliases") or []
        for alias in aliases if isinstance(aliases, list) else []:
            table.setdefault(str(alias).lower(), name)
            table.setdefault(str(alias).rsplit("/", 1)[-1].lower(), name)
    return table


def _last_part(model_path: str) -> str:
    """The last part of a path or repo id, lower case: './pretrained/InternVL2_5-4B/' -> 'internvl2_5-4b'."""
    parts = [part for part in model_path.replace("\\", "/").split("/") if part and part != "."]
    return parts[-1].lower() if parts else ""


def _base_name(model_path: str) -> str:
    """The checkpoint's name from a path or repo id: './pretrained/InternVL2_5-4B/' -> 'internvl2.5-4b'."""
    return _last_part(model_path).removesuffix("-instruct").replace("_", ".")


def sa2va_profile_for(model_path: str) -> str | None:
    """The shipped Sa2VA profile built on the MLLM at ``model_path`` (a Sa2VA config's mllm.model_path):
    ``sa2va-<name>`` where one exists (sa2va-internvl3-2b), else the Sa2VA profile with the same vision
    tower and LLM as the shipped profile of that MLLM (InternVL2_5-4B -> internvl2.5-4b -> sa2va-4b)."""
    files = _profile_files()
    base = _base_name(model_path)
    if not base:
        return None
    if f"sa2va-{base}" in files:
        return f"sa2va-{base}"
    aliases = profile_aliases()
    name = aliases.get(base) or aliases.get(_last_part(model_path))
    if name is None or name.startswith("sa2va-"):
        return name

    def key(document: dict) -> tuple:
        llm = document.get("llm") or {}
        return (document.get("vision"), llm.get("from") if isinstance(llm, dict) else llm)

    wanted = key(read_document(files[name]))
    matches = [other for other, path in sorted(files.items())
               if other.startswith("sa2va-") and read_document(path).get("sam2") and key(read_document(path)) == wanted]
    return matches[0] if len(matches) == 1 else None
