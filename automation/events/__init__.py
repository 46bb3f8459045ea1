"""PURE: amoCRM webhook bodies → typed events. No I/O, no Flask, no database, no HTTP.

`form` rebuilds PHP-style bracket keys into nested data; `payloads` turns that data into
the typed events the rules match, with their entity ids and change keys.
"""
