"""Serving: one loaded model behind a request API (service), the HTTP app and its page (genrec serve)."""
