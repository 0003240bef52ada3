"""Federating servers on loopback for the Python harnesses (benches/federation.py and
tests/clients/nio_federation.py import it; standard library only, so any python3 runs it).

- `make_ca` / `issue`: a throwaway certificate authority (openssl) and leaf certificates for an
  IP address, valid two days.
- `Hearth`: a `hearth serve` named `IP:PORT`, its TLS federation listener on that address with a
  certificate of the CA, trusting the CA for its outbound requests and allowed to reach
  loopback; its client API on plain HTTP at 127.0.0.1; rate limits off, cheap passwords.
- `Synapse`: Synapse from a virtualenv (`$HEARTH_SYNAPSE_VENV`, default
  ~/.cache/hearth-bench/synapse-venv), configured as tests/it/support/synapse.rs does: SQLite,
  named `IP:PORT`, TLS federation listener with a certificate of the CA
  (`federation_custom_ca_list`), `ip_range_whitelist` 127.0.0.0/8 and loopback out of the
  blocklist, its own ed25519 signing key, no trusted key servers, every rate limit out of reach
  (`rc_message` and the others at a million per second, so one user can send as fast as
  Synapse takes it), open registration.
- `call` / `register`: small JSON-over-HTTP client helpers (urllib).

Every wait is bounded in time; every address is on 127.0.0.0/8 (`Hearth` and `Synapse` refuse
anything else).
"""

import base64
import ipaddress
import json
import os
import secrets
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request

READY_TIMEOUT_S = 120  # Synapse's first start (SQLite schema) takes a while on a busy machine


def _loopback(ip):
    if not ipaddress.ip_address(ip).is_loopback:
        raise ValueError(f"refusing non-loopback address {ip!r}")
    return ip


def free_port(ip):
    with socket.socket() as s:
        s.bind((_loopback(ip), 0))
        return s.getsockname()[1]


def openssl(*args):
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def make_ca(work):
    """Writes `work/ca.pem` (and its key); returns the CA file's path."""
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", f"{work}/ca.key", "-out", f"{work}/ca.pem", "-days", "2", "-subj", "/CN=hearth test CA")
    return f"{work}/ca.pem"


def issue(work, ip, stem):
    """A certificate for the IP address `ip` signed by the CA of `work`: (cert, key) paths."""
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", f"{work}/{stem}.key", "-out", f"{work}/{stem}.csr", "-subj", f"/CN={ip}")
    with open(f"{work}/{stem}.ext", "w") as f:
        f.write(f"subjectAltName=IP:{ip}\n")
    openssl("x509", "-req", "-in", f"{work}/{stem}.csr", "-CA", f"{work}/ca.pem", "-CAkey", f"{work}/ca.key",
            "-CAcreateserial", "-out", f"{work}/{stem}.crt", "-days", "2", "-extfile", f"{work}/{stem}.ext")
    return f"{work}/{stem}.crt", f"{work}/{stem}.key"


def call(base, method, path, body=None, token=None, timeout=60):
    """`method path` with a JSON body; the JSON answer (HTTPError on a non-2xx status)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=timeout) as answer:
        return json.loads(answer.read() or b"{}")


def register(base, name, password="fed-test-password"):
    """Registers `name` through the dummy stage (Hearth and Synapse both take it in one
    request); returns (user_id, access_token)."""
    body = {"username": name, "password": password, "auth": {"type": "m.login.dummy"}}
    answer = call(base, "POST", "/_matrix/client/v3/register", body)
    return answer["user_id"], answer["access_token"]


def _wait_ready(base, proc, what, log_path, limit_s):
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            with urllib.request.urlopen(f"{base}/_matrix/client/versions", timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        time.sleep(0.2)
    proc.kill()
    proc.wait(timeout=30)
    tail = ""
    try:
        with open(log_path, errors="replace") as f:
            tail = "".join(f.readlines()[-30:])
    except OSError:
        pass
    raise RuntimeError(f"{what} did not start (exit {proc.returncode}); log tail:\n{tail}")


class _Process:
    proc = None

    def stop(self):
        """SIGTERM, then SIGKILL after 20 s."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def rss_kib(self, field="VmRSS"):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1])
        return 0

    def cpu_s(self):
        """CPU seconds (user + system) the process used so far."""
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def log_tail(self, lines=30):
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    def log_problems(self, lines=40):
        """The log's last `lines` warnings and errors (Hearth's WARN/ERROR, Synapse's
        WARNING/ERROR lines)."""
        marks = (" WARN ", " ERROR ", " - WARNING - ", " - ERROR - ")
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join([line for line in f if any(m in line for m in marks)][-lines:])
        except OSError:
            return ""


class Hearth(_Process):
    """`hearth serve` named `ip:PORT` (see the module doc); `name`, `base` (client API)."""

    def __init__(self, binary, work, ip, extra_env=None, log_level="warn"):
        cert, key = issue(work, _loopback(ip), f"hearth-{ip}")
        self.fed_port, self.port = free_port(ip), free_port("127.0.0.1")
        self.name = f"{ip}:{self.fed_port}"
        self.base = f"http://127.0.0.1:{self.port}"
        # Hearth reads every HEARTH_* variable as configuration and refuses unknown keys: the
        # harness's own (HEARTH_BIN, HEARTH_SYNAPSE_VENV, ...) must not reach it.
        env = {k: v for k, v in os.environ.items() if not k.startswith("HEARTH_")}
        env.update(HEARTH_FEDERATION__ENABLED="true", HEARTH_FEDERATION__LISTEN=self.name,
                   HEARTH_FEDERATION__TLS_CERT_FILE=cert, HEARTH_FEDERATION__TLS_KEY_FILE=key,
                   HEARTH_FEDERATION__EXTRA_CA_FILE=f"{work}/ca.pem",
                   HEARTH_FEDERATION__ALLOW_PRIVATE_DESTINATIONS="true",
                   HEARTH_RATE_LIMITS__ENABLED="false", HEARTH_REGISTRATION__MODE="open",
                   HEARTH_PASSWORDS__ITERATIONS="1", HEARTH_PASSWORDS__MEMORY_KIB="64",
                   HEARTH_LOGGING__LEVEL=log_level)
        env.update(extra_env or {})
        self.log_path = f"{work}/hearth-{ip}.log"
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(
                [binary, "serve", "--listen", f"127.0.0.1:{self.port}", "--server-name", self.name,
                 "--data-dir", f"{work}/hearth-{ip}-data"],
                env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        _wait_ready(self.base, self.proc, f"hearth {self.name}", self.log_path, 30)


def synapse_venv():
    return os.environ.get("HEARTH_SYNAPSE_VENV") or os.path.expanduser("~/.cache/hearth-bench/synapse-venv")


def synapse_python():
    """The venv's python if Synapse imports there, else None."""
    python = os.path.join(synapse_venv(), "bin", "python")
    if not os.access(python, os.X_OK):
        return None
    try:
        ok = subprocess.run([python, "-c", "import synapse"], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    return python if ok else None


_RL = "{per_second: 1000000, burst_count: 1000000}"

_SYNAPSE_CONFIG = """server_name: '{name}'
pid_file: {d}/homeserver.pid
listeners:
  - port: {fed_port}
    bind_addresses: ['{ip}']
    type: http
    tls: true
    x_forwarded: false
    resources:
      - names: [federation]
        compress: false
  - port: {client_port}
    bind_addresses: ['{ip}']
    type: http
    tls: false
    x_forwarded: false
    resources:
      - names: [client]
        compress: false
tls_certificate_path: {cert}
tls_private_key_path: {key}
federation_custom_ca_list: ['{ca}']
federation_verify_certificates: true
ip_range_whitelist: ['127.0.0.0/8']
# Synapse blocks IP-literal server names in the blocklist whatever the allowlist says: loopback
# must be out of it.
ip_range_blacklist: ['10.0.0.0/8', '172.16.0.0/12', '192.168.0.0/16', '169.254.0.0/16']
database:
  name: sqlite3
  args:
    database: {d}/homeserver.db
log_config: {d}/log.yaml
media_store_path: {d}/media_store
signing_key_path: {d}/signing.key
macaroon_secret_key: 'test-macaroon-secret'
form_secret: 'test-form-secret'
registration_shared_secret: 'test-registration-secret'
trusted_key_servers: []
suppress_key_server_warning: true
allow_public_rooms_over_federation: true
room_list_publication_rules: [{{action: allow}}]
report_stats: false
enable_metrics: false
enable_registration: true
enable_registration_without_verification: true
bcrypt_rounds: 4
url_preview_enabled: false
presence:
  enabled: false
rc_message: {rl}
rc_registration: {rl}
rc_login:
  address: {rl}
  account: {rl}
  failed_attempts: {rl}
rc_admin_redaction: {rl}
rc_joins:
  local: {rl}
  remote: {rl}
rc_joins_per_room: {rl}
rc_invites:
  per_room: {rl}
  per_user: {rl}
  per_issuer: {rl}
rc_room_creation: {rl}
rc_federation:
  window_size: 1000
  sleep_limit: 1000000
  sleep_delay: 1
  reject_limit: 1000000
  concurrent: 1000000
"""

_SYNAPSE_LOG = """version: 1
formatters:
  precise:
    format: '%(asctime)s - %(name)s - %(lineno)d - %(levelname)s - %(request)s - %(message)s'
handlers:
  file:
    class: logging.FileHandler
    formatter: precise
    filename: {log}
loggers:
  synapse.storage.SQL:
    level: WARNING
root:
  level: {level}
  handlers: [file]
disable_existing_loggers: false
"""


class Synapse(_Process):
    """Synapse named `ip:PORT` (see the module doc); `name`, `base` (client API, plain HTTP on
    `ip`). `python` from `synapse_python()`."""

    def __init__(self, python, work, ip, log_level="INFO"):
        d = f"{work}/synapse-{_loopback(ip)}"
        os.makedirs(d, exist_ok=True)
        cert, key = issue(work, ip, f"synapse-{ip}")
        self.fed_port, self.client_port = free_port(ip), free_port(ip)
        self.name = f"{ip}:{self.fed_port}"
        self.base = f"http://{ip}:{self.client_port}"
        seed = base64.b64encode(secrets.token_bytes(32)).decode().rstrip("=")
        with open(f"{d}/signing.key", "w") as f:
            f.write(f"ed25519 a_test {seed}\n")
        self.log_path = f"{d}/homeserver.log"
        with open(f"{d}/log.yaml", "w") as f:
            f.write(_SYNAPSE_LOG.format(log=self.log_path, level=log_level))
        with open(f"{d}/homeserver.yaml", "w") as f:
            f.write(_SYNAPSE_CONFIG.format(name=self.name, d=d, ip=ip, fed_port=self.fed_port,
                                           client_port=self.client_port, cert=cert, key=key,
                                           ca=f"{work}/ca.pem", rl=_RL))
        stdout_path = f"{d}/stdout.log"
        with open(stdout_path, "w") as out:
            self.proc = subprocess.Popen([python, "-m", "synapse.app.homeserver", "-c", f"{d}/homeserver.yaml"],
                                         cwd=d, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
        try:
            _wait_ready(self.base, self.proc, f"synapse {self.name}", stdout_path, READY_TIMEOUT_S)
        except RuntimeError as e:
            raise RuntimeError(f"{e}\nhomeserver.log tail:\n{self.log_tail()}") from None


def remove(work):
    shutil.rmtree(work, ignore_errors=True)
