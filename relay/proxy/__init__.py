"""The AI Gateway Proxy: an HTTPS_PROXY that decrypts the known LLM hosts and tunnels the rest.

``guard`` (where a tunnel may go) and ``head`` (the proxy request head) are
sans-io; ``server`` is the listener; ``service`` puts it beside the relay's
own services (``relay serve`` with ``PROXY_ENABLED``, or ``relay proxy``).
See docs/proxy.md.
"""
