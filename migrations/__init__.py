"""The numbered, forward-only SQL migrations, shipped as package data (`*.sql`).

A package only so that `importlib.resources` finds the files both in a checkout and in an
installed wheel; `ingest.store.admin.migrate` applies them.
"""
