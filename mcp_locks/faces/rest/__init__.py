"""The REST face: ``/v1`` routes and their OpenAPI document.

- :mod:`.operation` — what an operation is, what its handler gets, how it is served, and the error body.
- :mod:`.locks`, :mod:`.files`, :mod:`.observe`, :mod:`.admin` — each domain's operations.
- :mod:`.content` — file content in and out; :mod:`.event_stream` — the live event stream.
- :mod:`.openapi` — the document; :mod:`.routes` — :func:`~.routes.build_rest`, every domain in one order.
"""
