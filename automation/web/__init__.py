"""HTTP: the ONLY package that imports Flask.

The webhook endpoint, the read API and its OpenAPI document, `/healthz`, and the
gunicorn serving glue. Each view is thin: it parses the request and calls `store`,
`events` or `rules`.
"""
