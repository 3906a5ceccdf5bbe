"""The admin API (and, later, the admin web UI): ``onyx-wa admin``.

Modules, one job each: ``auth`` (bearer tokens and roles), ``schemas`` (request and response
models), ``api`` (the ``/api/v1`` route table and handlers), ``audit`` (the audit log, written
in the same transaction as each change), ``openapi`` (the OpenAPI 3.1 document), ``errors`` (one
JSON error shape) and ``app`` (the aiohttp application and serving).
"""
