"""The operator's console in the browser (docs/console.md), served by the relay itself
under ``/api/v2/ai-gateway/admin/ui/``.

``app``: the dispatcher (sign-in, pages, static assets, the JSON API, CSRF, the
security headers); ``auth``: admin credentials and console sessions; ``http``:
the request and response types feature modules' handlers use; ``audit``: the
audit log of configuration changes.
"""
