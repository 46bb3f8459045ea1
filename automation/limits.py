"""What the database's columns can hold, known without importing SQLAlchemy.

Input is checked against these where it arrives (a webhook field, a rules file, a CLI
option, an API parameter), so that a value no column can store is an error naming
where it came from, never a driver's OverflowError or DataError at commit time.
`models.py` sizes its columns with the same numbers.
"""

from __future__ import annotations

#: A signed 64-bit integer: PostgreSQL's BIGINT, SQLite's INTEGER.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
#: The largest id any table or amoCRM entity can have here.
MAX_ID = INT64_MAX
#: `launches.rule`: a rule's name.
RULE_NAME_LENGTH = 200
#: `deliveries.account_subdomain`.
SUBDOMAIN_LENGTH = 100
