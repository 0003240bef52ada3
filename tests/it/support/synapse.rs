//! A real Synapse (from the virtualenv at `$HEARTH_SYNAPSE_VENV`, by default
//! `~/.cache/hearth-bench/synapse-venv`, which `tests/run.sh` creates from PyPI) federating on a
//! loopback address: SQLite, named `ip:port`, its TLS federation listener on that address with a
//! certificate the test's [`TestCa`] issued, a plain client listener on another port, trusting
//! the CA for its outbound requests and allowed to reach loopback. Killed on drop; its log file
//! is printed when a test fails ([`Synapse::dump_log_on_panic`]).

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use base64::{Engine, engine::general_purpose::STANDARD_NO_PAD};

use super::{Client, federation::TestCa, federation::free_port};

/// The venv holding Synapse 1.163.2.
pub fn venv() -> PathBuf {
    match std::env::var_os("HEARTH_SYNAPSE_VENV") {
        Some(v) => PathBuf::from(v),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/hearth-bench/synapse-venv"),
    }
}

/// The venv's python if Synapse is importable there. `None` (with a printed note) when it is
/// missing, unless `HEARTH_TEST_REQUIRE_SYNAPSE=1`, which makes a missing Synapse a failure.
pub fn python() -> Option<PathBuf> {
    let python = venv().join("bin/python");
    let ok = Command::new(&python)
        .args(["-c", "import synapse"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        return Some(python);
    }
    if std::env::var("HEARTH_TEST_REQUIRE_SYNAPSE").as_deref() == Ok("1") {
        panic!(
            "HEARTH_TEST_REQUIRE_SYNAPSE=1 but no Synapse at {} (tests/run.sh installs it)",
            venv().display()
        );
    }
    eprintln!(
        "skipped: no Synapse venv at {} (set HEARTH_SYNAPSE_VENV, or run tests/run.sh which installs it)",
        venv().display()
    );
    None
}

/// A running Synapse.
pub struct Synapse {
    child: Option<Child>,
    /// `ip:port`, its server name and federation address.
    pub server_name: String,
    /// Base URL of its plain client listener.
    pub base: String,
    dir: tempfile::TempDir,
}

impl Synapse {
    /// Starts Synapse on `ip` with `python` (from [`python`]), trusting `ca`; waits (at most
    /// 120 s) until its client API answers.
    pub fn start(python: &std::path::Path, ca: &TestCa, ip: &str) -> Synapse {
        Self::start_with(python, ca, ip, false)
    }

    /// [`Synapse::start`], with presence on (Synapse's default; off in the other tests to
    /// keep their traffic small).
    pub fn start_with_presence(python: &std::path::Path, ca: &TestCa, ip: &str) -> Synapse {
        Self::start_with(python, ca, ip, true)
    }

    fn start_with(python: &std::path::Path, ca: &TestCa, ip: &str, presence: bool) -> Synapse {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let fed_port = free_port(ip);
        let client_port = free_port(ip);
        let server_name = format!("{ip}:{fed_port}");
        let (cert, key, _) = ca.issue(ip, &format!("synapse-{server_name}"));
        let seed: [u8; 32] = rand::random();
        std::fs::write(
            d.join("signing.key"),
            format!("ed25519 a_test {}\n", STANDARD_NO_PAD.encode(seed)),
        )
        .unwrap();
        let log = d.join("homeserver.log");
        std::fs::write(
            d.join("log.yaml"),
            format!(
                "version: 1
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
  synapse.access.http:
    level: INFO
root:
  level: INFO
  handlers: [file]
disable_existing_loggers: false
",
                log = log.display()
            ),
        )
        .unwrap();
        let rl = "{per_second: 1000000, burst_count: 1000000}";
        let config = format!(
            "server_name: '{server_name}'
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
# Synapse's default publishes no room in its directory.
room_list_publication_rules: [{{action: allow}}]
report_stats: false
enable_metrics: false
enable_registration: true
enable_registration_without_verification: true
bcrypt_rounds: 4
url_preview_enabled: false
presence:
  enabled: {presence}
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
",
            d = d.display(),
            cert = cert.display(),
            key = key.display(),
            ca = ca.ca_file.display(),
        );
        std::fs::write(d.join("homeserver.yaml"), config).unwrap();
        let stdout = std::fs::File::create(d.join("stdout.log")).unwrap();
        let child = Command::new(python)
            .args(["-m", "synapse.app.homeserver", "-c"])
            .arg(d.join("homeserver.yaml"))
            .current_dir(d)
            .stdin(Stdio::null())
            .stdout(stdout.try_clone().unwrap())
            .stderr(stdout)
            .spawn()
            .expect("spawn synapse");
        let mut synapse = Synapse {
            child: Some(child),
            server_name,
            base: format!("http://{ip}:{client_port}"),
            dir,
        };
        synapse.wait_ready();
        synapse
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(120);
        let client = Client::new(&self.base);
        loop {
            if let Ok(r) = client.try_req("GET", "/_matrix/client/versions", None)
                && r.status == 200
            {
                return;
            }
            let exited = self.child.as_mut().unwrap().try_wait().ok().flatten();
            if exited.is_some() || Instant::now() > deadline {
                self.print_log();
                panic!("synapse did not come up ({exited:?})");
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// A client for its client API.
    pub fn client(&self) -> Client {
        Client::new(&self.base)
    }

    /// Registers `name` and returns a logged-in client.
    pub fn user(&self, name: &str, password: &str) -> Client {
        let mut c = self.client();
        c.register(name, password);
        c
    }

    /// Prints its stdout, the warnings and errors of its log and the log's last 150 lines (on
    /// stderr).
    pub fn print_log(&self) {
        let stdout = std::fs::read_to_string(self.dir.path().join("stdout.log")).unwrap_or_default();
        eprintln!("===== synapse stdout =====\n{stdout}");
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        eprintln!("===== synapse {} WARNING/ERROR lines =====", self.server_name);
        for line in lines
            .iter()
            .filter(|l| l.contains(" - WARNING - ") || l.contains(" - ERROR - "))
        {
            eprintln!("{line}");
        }
        eprintln!("===== synapse log, last 150 lines =====");
        for line in &lines[lines.len().saturating_sub(150)..] {
            eprintln!("{line}");
        }
        eprintln!("===== end of synapse log =====");
    }

    /// The log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("homeserver.log")).unwrap_or_default()
    }
}

impl Drop for Synapse {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("HEARTH_TEST_LOG").is_some() {
            self.print_log();
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
