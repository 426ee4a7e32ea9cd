"""One HTTP request, as named steps: route → authenticate → admit → build upstream → dispatch.

Each step is a function of one ``Request`` (``relay.request.context``) that
reads what the steps before it established and adds its own result, or
raises ``Refused``; ``serve`` runs them in order and answers a refusal in
the provider's error shape. Everything admit takes is given back in the one
``finally`` below, in reverse order, whatever happens after it was taken.
See docs/architecture.md, "A request, step by step".
"""

from __future__ import annotations

from relay.asgi import ClientDisconnected, Receive, Scope, Send
from relay.observe.context import RequestIds, bind_ids, send_with_ids
from relay.record.events import new_id
from relay.request.admit import Admission, admit, limit_headers
from relay.request.authenticate import authenticate
from relay.request.context import Gateway, Refused, Request
from relay.request.dispatch import dispatch
from relay.request.route import answer_local, route
from relay.request.upstream import build_upstream


async def serve(gateway: Gateway, scope: Scope, receive: Receive, send: Send) -> None:
    """Serve one HTTP request of the ASGI app."""
    # The request id: in every response head, log line, record, dump and span.
    ids = RequestIds(str(new_id()))
    unbind = bind_ids(ids)
    req = Request.of(gateway, scope, receive, send_with_ids(send, ids))
    try:
        if await answer_local(req):
            return
        req.route = route(req)
        ids.provider = req.route.provider.name
        limit_headers(req)  # before authenticate reads a header
        req.caller = await authenticate(req)
        ids.user_id = req.caller.principal.user_id
        admission = Admission()
        try:
            await admit(req, admission)
            req.upstream = build_upstream(req, admission)
            await dispatch(req)
        except ClientDisconnected:
            return  # the client left while its body was read: no one to answer
        finally:
            admission.release()
    except Refused as refusal:
        await refusal.answer(req.send, req.style)
    finally:
        unbind()
