"""The baseline for bench/ingest.py: a bare Flask app answering a POST."""

from flask import Flask

app = Flask(__name__)


@app.post("/callback")
def hello():
    return "hello"
