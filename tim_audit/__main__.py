"""``tim-audit`` (and ``python -m tim_audit``): every ``flask --app tim_audit``
command, plus ``serve``, which runs the two servers."""

from flask.cli import FlaskGroup

from . import create_app
from .serve import serve_command
from .witness import witness_command

# Flask's own run, shell and routes stay with ``flask --app tim_audit``: run
# is easily taken for serve, and is no way to run this service.
main = FlaskGroup(
    name="tim-audit", create_app=create_app, load_dotenv=False, add_default_commands=False
)
main.add_command(serve_command)
main.add_command(witness_command)

if __name__ == "__main__":
    main()
