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
