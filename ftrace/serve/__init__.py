"""`ftrace serve`: one process owns an index and answers traces over HTTP (app.py), the index held
by a single worker thread (service.py); the explorer page is static/."""
