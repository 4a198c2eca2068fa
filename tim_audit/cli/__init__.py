"""Operator commands: ``tim-audit <command>`` (or ``flask --app tim_audit <command>``)."""

from . import trust


def init_app(app):
    for command in (
        trust.init_db_command,
        trust.verify_command,
        trust.backup_command,
        trust.rebuild_index_command,
        trust.send_sample_command,
        trust.hash_password_command,
        trust.keygen_command,
        trust.rotate_key_command,
        trust.consistency_proof_command,
        trust.check_proof_command,
    ):
        app.cli.add_command(command)
