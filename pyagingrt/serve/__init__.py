"""Serving pyagingrt engines on Triton Inference Server through PyTriton, with a web page next to the API.

Modules: libpython (can Triton's Python backend run under this interpreter), codec (encoded photos in and
out), batching (one Triton batch through an engine, errors per request), models (the crops and photos
models), server (binding, start-up, graceful stop), web (the page and the /v2 pass-through), loadgen (the
load test). PyTriton is imported only when a server starts: ``pip install 'pyagingrt[serve]'``.
See docs/serving.md.
"""
