"""The database: the ONLY package that builds SQL.

Everything else asks this package for rows through named functions (`intake.store`,
`outbox.claim_due`, `story.launch_story`, …) that return plain dataclasses, so the
queries, their locks and their indexes can be read in one place.
"""
