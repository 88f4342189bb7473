"""Rendering: rich tables for people, JSON for programs, Markdown for notes. Units appear only here."""
