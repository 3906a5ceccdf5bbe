"""Usage and feedback analytics: facts materialized from the pipeline's topics, and queries.

Modules, one job each: ``facts`` (pure mapping of AnswerRequest / AnswerResult / Feedback records
onto fact rows, with pseudonymized users), ``store`` (idempotent batched upserts, SQLite and
PostgreSQL), ``agent`` (the Faust agent of the ``analytics`` worker role), ``queries`` (the
dashboard figures per tenant and date range) and ``api`` (the admin API's JSON route).
See docs/analytics.md.
"""
