"""A backend seen through a counter: every denoiser call reports how many samples have been evaluated, so a
long measurement (DC scores: images x timesteps x candidates) shows progress and can be cancelled between
batches (the report callback may raise; nothing has been applied by then)."""
from __future__ import annotations

from typing import Callable


class CountingBackend:
    """Delegates everything to `backend`; report(done) runs after each predict_eps batch."""

    def __init__(self, backend, report: Callable[[int], None]):
        self._backend, self._report, self.done = backend, report, 0

    def __getattr__(self, name):
        return getattr(self._backend, name)

    def noise_and_predict_eps(self, x0, t, eps, context):
        return self.predict_eps(self._backend.add_noise(x0, t, eps), t, context)

    def predict_eps(self, x_t, t, context):
        out = self._backend.predict_eps(x_t, t, context)
        self.done += len(x_t)
        self._report(self.done)
        return out
