//! The admin side of the binary: `hearth user …` and `hearth registration-token …` on a
//! stopped server's data directory (and their refusal while it runs), `generate-config`,
//! `check-config`, and `serve` refusing a bad setting.

use std::process::Output;

use serde_json::json;

use crate::support::{TestServer, out_text, run_plain};

#[track_caller]
fn succeeded(out: &Output) -> String {
    let (stdout, stderr) = out_text(out);
    assert!(
        out.status.success(),
        "command failed: {:?}\nstdout: {stdout}\nstderr: {stderr}",
        out.status
    );
    stdout
}

#[track_caller]
fn failed(out: &Output) -> String {
    let (stdout, stderr) = out_text(out);
    assert!(
        !out.status.success(),
        "command unexpectedly succeeded\nstdout: {stdout}\nstderr: {stderr}"
    );
    stderr
}

#[test]
fn user_create_with_password_file() {
    let mut server = TestServer::unstarted(&[]);
    let pw_file = server.data_dir.with_file_name("pw.txt");
    std::fs::write(&pw_file, "file-secret\nignored second line\n").unwrap();
    let out = server.admin(
        &["user", "create", "carol", "--password-file", pw_file.to_str().unwrap()],
        None,
    );
    let stdout = succeeded(&out);
    assert!(stdout.contains("@carol:hearth.test"), "{stdout}");
    assert!(!stdout.contains("(admin)"), "{stdout}");
    assert!(!stdout.contains("file-secret"), "{stdout}");
    // The same name again fails.
    let out = server.admin(
        &["user", "create", "carol", "--password-file", pw_file.to_str().unwrap()],
        None,
    );
    let stderr = failed(&out);
    assert!(stderr.contains("M_USER_IN_USE") || stderr.contains("taken"), "{stderr}");
    // An invalid name fails.
    let out = server.admin(&["user", "create", "Bad Name", "--random-password"], None);
    failed(&out);
    // Password from standard input.
    let out = server.admin(&["user", "create", "dave"], Some("stdin-secret\n"));
    succeeded(&out);

    server.launch();
    let c = server.client();
    let r = c.login_with("carol", "file-secret", json!({}));
    assert_eq!(r.ok()["user_id"], "@carol:hearth.test");
    c.login_with("carol", "ignored second line", json!({}))
        .expect_err(403, "M_FORBIDDEN");
    c.login_with("dave", "stdin-secret", json!({})).ok();
    c.login_with("bad name", "x", json!({})).expect_err(403, "M_FORBIDDEN");
}

#[test]
fn user_create_with_random_password_and_admin_flag() {
    let mut server = TestServer::unstarted(&[]);
    let out = server.admin(
        &["user", "create", "@root:hearth.test", "--random-password", "--admin"],
        None,
    );
    let stdout = succeeded(&out);
    assert!(stdout.contains("@root:hearth.test (admin)"), "{stdout}");
    let password = stdout
        .lines()
        .find_map(|l| l.strip_prefix("password: "))
        .expect("the generated password is printed")
        .trim()
        .to_owned();
    assert!(password.len() >= 12, "{password}");
    let out = server.admin(&["user", "create", "second", "--random-password"], None);
    let stdout2 = succeeded(&out);
    assert!(!stdout2.contains(&password), "random passwords differ");

    server.launch();
    let c = server.client();
    assert_eq!(
        c.login_with("root", &password, json!({})).ok()["user_id"],
        "@root:hearth.test"
    );
    c.login_with("root", "guess", json!({})).expect_err(403, "M_FORBIDDEN");
}

#[test]
fn user_reset_password() {
    let mut server = TestServer::start();
    let alice = server.user("alice", "old-pw");
    let bob = server.user("bob", "bob-pw");
    server.stop();
    let pw_file = server.data_dir.with_file_name("new-pw.txt");
    std::fs::write(&pw_file, "new-pw\n").unwrap();
    let out = server.admin(
        &[
            "user",
            "reset-password",
            "alice",
            "--password-file",
            pw_file.to_str().unwrap(),
        ],
        None,
    );
    let stdout = succeeded(&out);
    assert!(stdout.contains("@alice:hearth.test"), "{stdout}");
    let out = server.admin(&["user", "reset-password", "nobody", "--random-password"], None);
    let stderr = failed(&out);
    assert!(stderr.contains("nobody"), "{stderr}");

    server.launch();
    let alice = alice.with_base(&server.base);
    let bob = bob.with_base(&server.base);
    alice.whoami().expect_err(401, "M_UNKNOWN_TOKEN");
    bob.whoami().ok();
    let c = server.client();
    c.login_with("alice", "old-pw", json!({}))
        .expect_err(403, "M_FORBIDDEN");
    c.login_with("alice", "new-pw", json!({})).ok();
}

#[test]
fn user_deactivate() {
    let mut server = TestServer::start();
    let alice = server.user("alice", "pw");
    server.stop();
    let out = server.admin(&["user", "deactivate", "@alice:hearth.test"], None);
    let stdout = succeeded(&out);
    assert!(stdout.contains("deactivated @alice:hearth.test"), "{stdout}");
    let stderr = failed(&server.admin(&["user", "deactivate", "ghost"], None));
    assert!(stderr.contains("ghost"), "{stderr}");

    server.launch();
    let alice = alice.with_base(&server.base);
    alice.whoami().expect_err(401, "M_UNKNOWN_TOKEN");
    let c = server.client();
    c.login_with("alice", "pw", json!({}))
        .expect_err(403, "M_USER_DEACTIVATED");
    c.get("/_matrix/client/v3/register/available?username=alice")
        .expect_err(400, "M_USER_IN_USE");
}

#[test]
fn registration_token_commands() {
    let mut server = TestServer::unstarted(&[("HEARTH_REGISTRATION__MODE", "token")]);
    let out = server.admin(
        &[
            "registration-token",
            "create",
            "--token",
            "team-2024",
            "--uses",
            "2",
            "--expires-in",
            "1h",
        ],
        None,
    );
    assert_eq!(succeeded(&out).trim(), "team-2024");
    let out = server.admin(
        &["registration-token", "create", "--uses", "2", "--expires-in", "1h"],
        None,
    );
    let random = succeeded(&out).trim().to_owned();
    assert_eq!(random.len(), 16, "{random}");
    // Bad input.
    failed(&server.admin(&["registration-token", "create", "--expires-in", "soon"], None));
    failed(&server.admin(&["registration-token", "create", "--token", "team-2024"], None));
    failed(&server.admin(&["registration-token", "create", "--token", "has space"], None));

    let list = succeeded(&server.admin(&["registration-token", "list"], None));
    let line = list
        .lines()
        .find(|l| l.starts_with("team-2024\t"))
        .unwrap_or_else(|| panic!("{list}"));
    assert!(line.contains("used 0/2"), "{line}");
    let secs: u64 = line
        .split("expires in ")
        .nth(1)
        .and_then(|s| s.trim_end_matches('s').parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    assert!((3500..=3600).contains(&secs), "{line}");
    assert!(list.lines().any(|l| l.starts_with(&format!("{random}\t"))), "{list}");

    let out = succeeded(&server.admin(&["registration-token", "delete", &random], None));
    assert!(out.contains(&random), "{out}");
    failed(&server.admin(&["registration-token", "delete", &random], None));
    let list = succeeded(&server.admin(&["registration-token", "list"], None));
    assert!(!list.contains(&random), "{list}");

    // The server honours what the commands wrote.
    server.launch();
    let c = server.client();
    let valid = |t: &str| {
        c.get(&format!(
            "/_matrix/client/v1/register/m.login.registration_token/validity?token={t}"
        ))
        .ok()["valid"]
            .clone()
    };
    assert_eq!(valid("team-2024"), true);
    assert_eq!(valid(&random), false);
    let body = json!({"username": "newbie", "password": "pw"});
    let first = c.uia_start("POST", "/_matrix/client/v3/register", body.clone());
    let mut done = body;
    done["auth"] = json!({"type": "m.login.registration_token", "token": "team-2024", "session": first["session"]});
    c.post("/_matrix/client/v3/register", done).ok();
    server.stop();
    let list = succeeded(&server.admin(&["registration-token", "list"], None));
    assert!(list.contains("team-2024\tused 1/2"), "{list}");
}

#[test]
fn admin_commands_refuse_while_the_server_runs() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let pw_file = server.data_dir.with_file_name("pw.txt");
    std::fs::write(&pw_file, "new-pw\n").unwrap();
    let pw = pw_file.to_str().unwrap();
    let commands: Vec<Vec<&str>> = vec![
        vec!["user", "create", "mallory", "--password-file", pw],
        vec!["user", "reset-password", "alice", "--password-file", pw],
        vec!["user", "deactivate", "alice"],
        vec!["registration-token", "create", "--token", "sneaky"],
        vec!["registration-token", "list"],
        vec!["registration-token", "delete", "sneaky"],
    ];
    for args in &commands {
        let out = server.admin(args, Some("new-pw\n"));
        let stderr = failed(&out);
        assert!(
            stderr.contains("running hearth server") && stderr.contains("stop it first"),
            "{args:?}: {stderr}"
        );
    }
    // Nothing changed.
    alice.whoami().ok();
    let c = server.client();
    c.login_with("alice", "pw", json!({})).ok();
    c.login_with("alice", "new-pw", json!({}))
        .expect_err(403, "M_FORBIDDEN");
    assert_eq!(
        c.get("/_matrix/client/v3/register/available?username=mallory").ok()["available"],
        true
    );
}

#[test]
fn generate_config_then_check_config() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("h.toml");
    let out = run_plain(
        &[
            "generate-config",
            "--server-name",
            "example.org",
            "--out",
            file.to_str().unwrap(),
        ],
        &[],
    );
    succeeded(&out);
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("server_name = \"example.org\""), "{text}");
    let key = dir.path().join("example.org.signing.key");
    assert!(key.is_file(), "signing key written next to the config");
    assert!(!std::fs::read_to_string(&key).unwrap().trim().is_empty());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "the signing key is private: {mode:o}");
    }

    let out = run_plain(&["check-config", file.to_str().unwrap()], &[]);
    let stdout = succeeded(&out);
    assert!(stdout.contains("example.org"), "{stdout}");

    // Never overwrites.
    let out = run_plain(
        &[
            "generate-config",
            "--server-name",
            "example.org",
            "--out",
            file.to_str().unwrap(),
        ],
        &[],
    );
    let stderr = failed(&out);
    assert!(stderr.contains("already exists"), "{stderr}");
    let out = run_plain(
        &[
            "generate-config",
            "--server-name",
            "not a name",
            "--out",
            dir.path().join("x.toml").to_str().unwrap(),
        ],
        &[],
    );
    failed(&out);
}

#[test]
fn check_config_names_the_bad_key() {
    let dir = tempfile::tempdir().unwrap();
    let check = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        run_plain(&["check-config", path.to_str().unwrap()], &[])
    };
    let stderr = failed(&check(
        "unknown.toml",
        "server_name = \"a.example\"\n[database]\npaht = \"/tmp/x\"\n",
    ));
    assert!(stderr.contains("paht"), "{stderr}");
    let stderr = failed(&check("top.toml", "sever_name = \"a.example\"\n"));
    assert!(stderr.contains("sever_name"), "{stderr}");
    let stderr = failed(&check("mode.toml", "[registration]\nmode = \"maybe\"\n"));
    assert!(stderr.contains("registration.mode"), "{stderr}");
    let stderr = failed(&check("type.toml", "max_request_size = \"big\"\n"));
    assert!(stderr.contains("max_request_size"), "{stderr}");
    let stderr = failed(&check("listen.toml", "listen = \"nowhere\"\n"));
    assert!(stderr.contains("listen"), "{stderr}");
    let stderr = failed(&check("syntax.toml", "server_name = \n"));
    assert!(stderr.contains("TOML"), "{stderr}");
    let missing = dir.path().join("missing.toml");
    failed(&run_plain(&["check-config", missing.to_str().unwrap()], &[]));
    succeeded(&check("ok.toml", "server_name = \"a.example\"\n"));
}

#[test]
fn serve_refuses_a_bad_environment_value() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = run_plain(
        &["serve", "--listen", "127.0.0.1:0", "--data-dir", data.to_str().unwrap()],
        &[("HEARTH_REGISTRATION__MODE", "maybe")],
    );
    let stderr = failed(&out);
    assert!(stderr.contains("registration.mode"), "{stderr}");
    assert!(stderr.contains("maybe"), "{stderr}");
    assert!(!data.join("signing.key").exists(), "nothing was created");
    let out = run_plain(
        &["serve", "--listen", "127.0.0.1:0", "--data-dir", data.to_str().unwrap()],
        &[("HEARTH_DATABASE__NOPE", "1")],
    );
    let stderr = failed(&out);
    assert!(stderr.contains("HEARTH_DATABASE__NOPE"), "{stderr}");
}
