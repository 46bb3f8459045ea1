"""PURE: amoCRM webhook bodies → typed events. No I/O, no Flask, no database, no HTTP.

`form` rebuilds PHP-style bracket keys into nested data (`jsonbody` reads JSON of the
same shape); `payloads` turns that data into the typed events the rules match, using
`families` (what amoCRM can send), `fields` (what each event carries), `values`
(strings → ints and bools), `entities` (which lead or contact an event is about) and
`changes` (which change it reports, for de-duplication).
"""
