"""PURE: the rules file. No I/O beyond reading the file, no Flask, no database, no HTTP.

`yamlfile` reads YAML with line marks; `spec` says what a file may hold (pydantic);
`build` reads, cross-checks and compiles a `RuleSet`; `load` is the public face and
reloads a changed file; `conditions` and `hours` compile `when:` and `active_hours:`;
`ruleset` matches events to planned launches; `schema` is the JSON Schema for editors;
`cases` runs saved payloads through the rules.
"""
