"""The web app: room button page, staff pages, JSON API, login (see app.py)."""
