"""Prompt templates (YAML + Jinja2) and their rendering into token ids with a completion-only loss mask."""
