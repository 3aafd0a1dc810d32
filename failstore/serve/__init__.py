"""``failstore serve`` and ``failstore report``: the store's images and analyses as web pages.

``create_app(store)`` (app.py) is a Starlette app: a JSON/CSV API over the same guarded,
read-only SQL as ``failstore sql`` (api.py), image bytes and cached thumbnails of the files the
store references (images.py), and server-rendered pages (pages.py, templates/). ``write_report``
(report.py) renders the same pages to static HTML with relative links. Never imports torch.
"""
