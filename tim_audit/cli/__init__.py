"""Operator commands: ``tim-audit <command>`` (or ``flask --app tim_audit <command>``),
in two modules by what they are for: ``operations`` runs the service, and
``trust`` makes and checks the keys, checkpoints and proofs auditors rely on."""

from . import operations, trust


def init_app(app):
    for command in (
        operations.init_db_command,
        trust.verify_command,
        operations.backup_command,
        operations.rebuild_index_command,
        operations.send_sample_command,
        operations.hash_password_command,
        trust.keygen_command,
        trust.rotate_key_command,
        trust.consistency_proof_command,
        trust.check_proof_command,
    ):
        app.cli.add_command(command)
