"""flaskserve's own request hooks, run as one Flask hook of each kind.

Flask calls every registered hook through `ensure_sync`, which asks `inspect` whether it is a
coroutine function on every request; flaskserve's seven hooks cost more in that bookkeeping
than in their own work. The modules that add hooks (request ids and metrics, the browser
guard, the service gate and meter) register them here, in the order they would have
registered them on the app, and the chain runs them as one `before_request`, one
`after_request` and one `teardown_request` with Flask's own semantics: before-hooks in order
until one returns a response, after-hooks in reverse order, every teardown hook. A user's own
hooks, added to the app afterwards, run after flaskserve's, as they always did.
"""

from __future__ import annotations

from collections.abc import Callable

from flask import Flask, Response

BeforeHook = Callable[[], Response | None]
AfterHook = Callable[[Response], Response]
TeardownHook = Callable[[BaseException | None], None]


class HookChain:
    """Collects hooks with Flask's registration methods; `install` adds them to an app."""

    def __init__(self) -> None:
        self.before: list[BeforeHook] = []
        self.after: list[AfterHook] = []
        self.teardown: list[TeardownHook] = []

    def before_request(self, hook: BeforeHook) -> BeforeHook:
        self.before.append(hook)
        return hook

    def after_request(self, hook: AfterHook) -> AfterHook:
        self.after.append(hook)
        return hook

    def teardown_request(self, hook: TeardownHook) -> TeardownHook:
        self.teardown.append(hook)
        return hook

    def install(self, app: Flask) -> None:
        """Register the collected hooks on `app` as one hook of each kind."""
        befores = tuple(self.before)
        afters = tuple(reversed(self.after))  # Flask runs after-hooks last-registered first
        teardowns = tuple(reversed(self.teardown))

        def flaskserve_before() -> Response | None:
            for hook in befores:
                response = hook()
                if response is not None:
                    return response
            return None

        def flaskserve_after(response: Response) -> Response:
            for hook in afters:
                response = hook(response)
            return response

        def flaskserve_teardown(exc: BaseException | None) -> None:
            for hook in teardowns:
                hook(exc)

        if befores:
            app.before_request(flaskserve_before)
        if afters:
            app.after_request(flaskserve_after)
        if teardowns:
            app.teardown_request(flaskserve_teardown)
