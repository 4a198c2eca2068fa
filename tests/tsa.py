"""A real RFC 3161 timestamp authority on loopback, for tests.

It is ``openssl ts -reply`` behind a tiny HTTP server, so tests exercise a
TSA that nobody in this project wrote, with no network and no fixed keys.
"""

import http.server
import pathlib
import subprocess
import tempfile
import threading

POLICY = "1.3.6.1.4.1.55555.1.1"
QUERY_TYPE = "application/timestamp-query"
REPLY_TYPE = "application/timestamp-reply"
MODES = ("ok", "http-error", "rejection", "stall", "wrong-ca")

CONFIG = """\
[tsa]
default_tsa = tsa_ok

[tsa_ok]
serial = {dir}/serial
crypto_device = builtin
signer_cert = {dir}/tsa.pem
signer_key = {dir}/tsa.key
signer_digest = sha256
default_policy = {policy}
digests = sha256, sha384, sha512
accuracy = secs:1
ordering = no
tsa_name = yes
ess_cert_id_chain = no
ess_cert_id_alg = sha256

[tsa_reject]
# The same TSA accepting only MD5 imprints, so openssl itself answers a
# SHA-2 query with a real TimeStampResp of status rejection (badAlg).
serial = {dir}/serial
signer_cert = {dir}/tsa.pem
signer_key = {dir}/tsa.key
signer_digest = sha256
default_policy = {policy}
digests = md5

[tsa_ext]
extendedKeyUsage = critical, timeStamping
keyUsage = critical, digitalSignature
basicConstraints = critical, CA:false
"""


def _openssl(*args):
    return subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_tsa_ca(directory, name="Test"):
    """Make a throwaway root CA, a TSA certificate it signs and an ``openssl ts``
    config in ``directory``; return ``(ca_pem, tsa_pem, tsa_key, config)``.

    Keys are P-256 so that making one costs milliseconds, not seconds.
    """
    d = pathlib.Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    ca, ca_key, tsa, tsa_key = d / "ca.pem", d / "ca.key", d / "tsa.pem", d / "tsa.key"
    config = d / "tsa.cnf"
    config.write_text(CONFIG.format(dir=d.resolve(), policy=POLICY))
    (d / "serial").write_text("01\n")
    key = "-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout".split()
    root = ["-subj", f"/CN={name} Timestamp Root", "-addext", "basicConstraints=critical,CA:true"]
    root += ["-addext", "keyUsage=critical,keyCertSign,cRLSign"]
    _openssl("req", "-x509", "-days", "2", *key, ca_key, "-out", ca, *root)
    csr = d / "tsa.csr"
    _openssl("req", "-new", *key, tsa_key, "-out", csr, "-subj", f"/CN={name} TSA")
    sign = ["-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-days", "2"]
    ext = ["-extfile", config, "-extensions", "tsa_ext"]
    _openssl("x509", "-req", "-in", csr, *sign, *ext, "-out", tsa)
    return ca, tsa, tsa_key, config


def openssl_verify(data_path, tsr_path, ca_path, token=False):
    """Verify a stored response (or, with ``token=True``, a bare TimeStampToken)
    over a file, as an auditor with only openssl would; return the CompletedProcess.

    No ``-untrusted``: the TSA puts its certificate in the token when asked.
    """
    args = ["openssl", "ts", "-verify", "-data", data_path, "-in", tsr_path, "-CAfile", ca_path]
    return subprocess.run(args + ["-token_in"] * token, capture_output=True, text=True)


class TSA:
    """A TSA on 127.0.0.1 that answers with ``openssl ts -reply``.

    ``mode`` (changeable at any time) is one of ``MODES``: "stall" waits ``stall``
    seconds (less if the TSA is closed meanwhile) and then answers as "ok";
    "wrong-ca" signs with a TSA of another root. ``requests`` counts the POSTs
    received; ``ca`` is the root that an "ok" token chains to. A query with
    certReq gets the TSA certificate in its token (openssl does that itself).
    """

    def __init__(self, directory=None, mode="ok", stall=5.0):
        self._tmp = None if directory else tempfile.TemporaryDirectory(prefix="tsa-")
        directory = directory or self._tmp.name
        self.directory = pathlib.Path(directory)
        self.ca, self.tsa_cert, self.tsa_key, self.config = make_tsa_ca(self.directory / "good")
        self.wrong = make_tsa_ca(self.directory / "wrong", name="Other")
        self.mode, self.stall, self.requests = mode, stall, 0
        self._lock, self._stop = threading.Lock(), threading.Event()
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True  # a stalled answer never blocks close()
        self._thread = None
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/"

    def __enter__(self):
        # A short poll interval keeps shutdown() (and so every test's teardown) quick.
        serve = self._server.serve_forever
        self._thread = threading.Thread(target=serve, args=(0.05,), daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()  # wakes stalled handlers
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
        if self._tmp is not None:
            self._tmp.cleanup()

    def reply(self, query):
        """The DER answer ``openssl ts -reply`` gives to ``query`` in the current mode."""
        config, section = self.config, "tsa_ok"
        if self.mode == "wrong-ca":
            config = self.wrong[3]
        elif self.mode == "rejection":
            section = "tsa_reject"
        with tempfile.NamedTemporaryFile(dir=self.directory, suffix=".tsq") as tsq:
            tsq.write(query)
            tsq.flush()
            # The lock also keeps concurrent replies from racing on the serial file.
            with self._lock:
                args = ["-config", config, "-section", section, "-queryfile", tsq.name]
                return _openssl("ts", "-reply", *args).stdout

    def _handler(self):
        tsa = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with tsa._lock:
                    tsa.requests += 1
                if tsa.mode == "stall" and tsa._stop.wait(tsa.stall):
                    return  # shutting down: drop the connection unanswered
                ok = self.headers.get("Content-Type") == QUERY_TYPE
                if tsa.mode == "http-error" or not ok:
                    self.send_error(500 if ok else 415)
                    return
                try:
                    answer = tsa.reply(body)
                except (subprocess.CalledProcessError, OSError):
                    self.send_error(400, "openssl ts -reply failed (a malformed query?)")
                    return
                self.send_response(200)
                self.send_header("Content-Type", REPLY_TYPE)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                try:
                    self.wfile.write(answer)
                except ConnectionError:
                    pass  # the client timed out first, as stall tests intend

            def log_message(self, *args):
                pass  # keep pytest output clean

        return Handler
