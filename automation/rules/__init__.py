"""PURE: the rules file. No I/O beyond reading the file, no Flask, no database, no HTTP.

`yamlfile` reads YAML with line marks; `spec` says what a file may hold (pydantic);
`load` builds and cross-checks a `RuleSet` and reloads it; `conditions` and `hours`
compile `when:` and `active_hours:`; `ruleset` matches events to planned launches;
`schema` is the JSON Schema for editors; `cases` runs saved payloads through the rules.
"""
