"""Certificates for the TLS tests, made with the `openssl` CLI in a test's tmp dir: a
CA (EC P-256) and the server, client and expired server certificates it signs."""

import subprocess


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


class Pki:
    """A CA in `directory` and the certificates it signs there (EC P-256 keys)."""

    SERVER_EXT = "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n"

    def __init__(self, directory, name="ca"):
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.ca = self.dir / f"{name}.crt"
        self.ca_key = self.dir / f"{name}.key"
        openssl(
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", self.ca_key.name, "-out", self.ca.name, "-days", "2", "-subj", f"/CN=weir test {name}",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            cwd=self.dir,
        )
        (self.dir / "server.ext").write_text(self.SERVER_EXT)

    def _request(self, name):
        openssl(
            "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", "/CN=localhost",
            cwd=self.dir,
        )

    def server(self, name):
        """A server certificate for localhost and 127.0.0.1, valid now; returns
        (cert path, key path)."""
        self._request(name)
        openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", self.ca.name, "-CAkey", self.ca_key.name,
            "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", "-extfile", "server.ext",
            cwd=self.dir,
        )
        return self.dir / f"{name}.crt", self.dir / f"{name}.key"

    def client(self, name):
        """A client certificate (extendedKeyUsage clientAuth) signed by this CA;
        returns (cert path, key path)."""
        self._request(name)
        (self.dir / "client.ext").write_text("extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n")
        openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", self.ca.name, "-CAkey", self.ca_key.name,
            "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", "-extfile", "client.ext",
            cwd=self.dir,
        )
        return self.dir / f"{name}.crt", self.dir / f"{name}.key"

    def expired_server(self, name):
        """A server certificate that expired in 2020 (`openssl x509 -days` cannot go
        negative on OpenSSL 3.0; `openssl ca` takes explicit dates)."""
        self._request(name)
        (self.dir / "index.txt").write_text("")
        (self.dir / "ca.cnf").write_text(
            "[ca]\ndefault_ca = weir\n"
            "[weir]\ndatabase = index.txt\nnew_certs_dir = .\nserial = ca.serial\n"
            "default_md = sha256\npolicy = any\nunique_subject = no\n"
            "[any]\ncommonName = supplied\n"
            "[server]\n" + self.SERVER_EXT
        )
        (self.dir / "ca.serial").write_text("1000\n")
        openssl(
            "ca", "-batch", "-config", "ca.cnf", "-cert", self.ca.name, "-keyfile", self.ca_key.name,
            "-in", f"{name}.csr", "-out", f"{name}.crt", "-notext", "-extensions", "server",
            "-startdate", "20200101000000Z", "-enddate", "20200102000000Z",
            cwd=self.dir,
        )
        return self.dir / f"{name}.crt", self.dir / f"{name}.key"
