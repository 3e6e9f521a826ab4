"""A local certificate authority for the stack's TLS listeners (made once, with openssl).

The CA signs one server certificate for loopback (``127.0.0.1``, ``::1`` and ``localhost``),
used by the broker's SASL_SSL and SSL listeners and by TLS Redis in tests, and one client
certificate for listeners that require client authentication. Clients trust ``ca.pem``.
Development material only: the keys are unencrypted and readable by the owner.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from devtools.stack.process import StackError

_DAYS = "3650"
_SERVER_NAMES = "subjectAltName=IP:127.0.0.1,IP:::1,DNS:localhost\nextendedKeyUsage=serverAuth\n"
_CLIENT_USAGE = "extendedKeyUsage=clientAuth\n"


@dataclass(frozen=True, slots=True)
class LocalTls:
    directory: Path

    @property
    def ca_file(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def server_cert_file(self) -> Path:
        return self.directory / "server.crt"

    @property
    def server_key_file(self) -> Path:
        return self.directory / "server.key"

    @property
    def server_keystore_file(self) -> Path:
        """The server key followed by its certificate: Kafka's PEM key store."""
        return self.directory / "server-keystore.pem"

    @property
    def client_cert_file(self) -> Path:
        return self.directory / "client.crt"

    @property
    def client_key_file(self) -> Path:
        return self.directory / "client.key"

    def ensure(self) -> LocalTls:
        """Make the CA and certificates unless a previous call finished making them."""
        marker = self.directory / ".complete"
        if marker.exists():
            return self
        openssl = shutil.which("openssl")
        if openssl is None:
            raise StackError("openssl is not on PATH; it makes the local stack's TLS certificates")
        staging = self.directory.with_name(self.directory.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True, mode=0o700)

        def run(*args: str) -> None:
            result = subprocess.run(
                [openssl, *args], cwd=staging, capture_output=True, text=True, check=False
            )
            if result.returncode != 0:
                raise StackError(f"openssl {args[0]} failed:\n{result.stderr[-2000:]}")

        key = ("-newkey", "rsa:2048", "-nodes")
        run(
            "req",
            "-x509",
            *key,
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            _DAYS,
            "-subj",
            "/CN=mkpi local CA",
        )
        for name, subject, extensions in (
            ("server", "/CN=localhost", _SERVER_NAMES),
            ("client", "/CN=mkpi-client", _CLIENT_USAGE),
        ):
            (staging / f"{name}.ext").write_text(extensions, encoding="ascii")
            run("req", *key, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject)
            run(
                "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", f"{name}.crt", "-days", _DAYS, "-extfile", f"{name}.ext",
            )  # fmt: skip
        keystore = (staging / "server.key").read_text() + (staging / "server.crt").read_text()
        (staging / self.server_keystore_file.name).write_text(keystore, encoding="ascii")
        shutil.rmtree(self.directory, ignore_errors=True)
        staging.rename(self.directory)
        marker.write_text("done\n", encoding="ascii")
        return self
